"""APIs end to end on a real shard: APIResourceSchema/APIExport/APIBinding, bound resources served in consumer
workspaces under their export's identity, the ``bind`` permission, unbinding and rebinding, the wildcard
``<resource>:<identity>`` view, with the Python client, kubectl and plain HTTPS as real token users."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import requests
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from server.shard import ShardConfig
from server.testing import running_shard, start_shard

GROUP, VERSION = "apis.kcp.dev", "v1alpha1"
RBAC = "rbac.authorization.k8s.io"
TOKENS = {"bob": "bob-token", "carol": "carol-token"}

WIDGET_SCHEMA = {"type": "object", "properties": {
    "spec": {"type": "object", "required": ["size"], "properties": {
        "size": {"type": "integer", "minimum": 1, "maximum": 100, "description": "How big the widget is."},
        "color": {"type": "string", "enum": ["red", "blue"], "default": "red"}}},
    "status": {"type": "object", "properties": {"observed": {"type": "boolean"}}}}}


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.csv"
    tokens.write_text("bob-token,bob,2\ncarol-token,carol,3\n")
    with running_shard(ShardConfig(token_auth_file=str(tokens))) as running:
        yield running


def unique(prefix: str) -> str:
    return f"root:{prefix}-{uuid.uuid4().hex[:6]}"


def workspace(shard, prefix: str) -> str:
    cluster = unique(prefix)
    shard.run(shard.shard.registry.ensure_logical_cluster, cluster)
    return cluster


def api(shard, cluster: str) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(shard.cluster_client(cluster))


def resource_schema(prefix="v1", group="example.io", plural="widgets", kind="Widget") -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "APIResourceSchema",
            "metadata": {"name": f"{prefix}.{plural}.{group}"},
            "spec": {"group": group, "scope": "Namespaced",
                     "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": f"{kind}List"},
                     "versions": [{"name": "v1", "served": True, "storage": True, "schema": WIDGET_SCHEMA,
                                   "subresources": {"status": {}},
                                   "additionalPrinterColumns": [
                                       {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                                       {"name": "Color", "type": "string", "jsonPath": ".spec.color"}]}]}}


def provide(shard, cluster: str, export="widgets", schemas=None) -> dict:
    """APIResourceSchemas and an APIExport of them in ``cluster``; returns the export once it has its identity."""
    objects = api(shard, cluster)
    schemas = schemas or [resource_schema()]
    for schema in schemas:
        objects.create_cluster_custom_object(GROUP, VERSION, "apiresourceschemas", schema)
    objects.create_cluster_custom_object(GROUP, VERSION, "apiexports", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "APIExport", "metadata": {"name": export},
        "spec": {"latestResourceSchemas": [s["metadata"]["name"] for s in schemas]}})
    return wait_for(lambda: objects.get_cluster_custom_object(GROUP, VERSION, "apiexports", export),
                    lambda e: (e.get("status") or {}).get("identityHash"))


def bind(shard, cluster: str, provider: str, export="widgets", name=None, api_client=None) -> dict:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "APIBinding", "metadata": {"name": name or export},
            "spec": {"reference": {"workspace": {"path": provider, "exportName": export}}}}
    objects = client.CustomObjectsApi(api_client) if api_client is not None else api(shard, cluster)
    return objects.create_cluster_custom_object(GROUP, VERSION, "apibindings", body)


def binding(shard, cluster: str, name="widgets") -> dict:
    return api(shard, cluster).get_cluster_custom_object(GROUP, VERSION, "apibindings", name)


def wait_for(get, ok, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = get()
        if ok(value):
            return value
        time.sleep(0.02)
    raise AssertionError(f"condition not met: {json.dumps(value, indent=1, default=str)[:3000]}")


def wait_bound(shard, cluster: str, name="widgets") -> dict:
    return wait_for(lambda: binding(shard, cluster, name), lambda b: (b.get("status") or {}).get("phase") == "Bound")


def condition(obj: dict, type_: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or () if c["type"] == type_), {})


def widget(name: str, size: int = 1) -> dict:
    return {"apiVersion": "example.io/v1", "kind": "Widget", "metadata": {"name": name}, "spec": {"size": size}}


def widgets(shard, cluster: str, resource: str = "widgets") -> list[str]:
    items = api(shard, cluster).list_cluster_custom_object("example.io", "v1", resource)["items"]
    return sorted(f'{i["metadata"]["annotations"]["kcp.dev/cluster"]}/{i["metadata"]["name"]}' for i in items)


def status_of(call) -> int:
    try:
        call()
    except ApiException as exc:
        return exc.status
    return 200


# ---------------------------------------------------------------------------------------------- lifecycle

def test_bind_serves_the_export_like_a_crd(shard):
    provider, consumer = workspace(shard, "provider"), workspace(shard, "consumer")
    export = provide(shard, provider)
    identity = export["status"]["identityHash"]
    assert len(identity) == 64
    assert export["status"]["virtualWorkspaces"] == [{"url": f"{shard.url}/services/apiexport/{provider}/widgets"}]
    assert condition(export, "IdentityValid")["status"] == "True"
    # the identity secret the shard keeps in the provider workspace
    secret = client.CoreV1Api(shard.cluster_client(provider)).read_namespaced_secret("widgets", "kcp-system")
    assert set(secret.data) == {"key"}

    bind(shard, consumer, provider)
    bound = wait_bound(shard, consumer)
    status = bound["status"]
    assert status["apiExportClusterName"] == provider
    assert status["boundResources"] == [{"group": "example.io", "resource": "widgets", "storageVersions": ["v1"],
                                         "schema": {"name": "v1.widgets.example.io", "identityHash": identity,
                                                    "UID": status["boundResources"][0]["schema"]["UID"]}}]
    for type_ in ("Ready", "APIExportValid", "InitialBindingCompleted", "BindingUpToDate"):
        assert condition(bound, type_)["status"] == "True", type_
    assert bound["metadata"]["labels"]["internal.apis.kcp.dev/export"]

    objects = api(shard, consumer)
    created = objects.create_namespaced_custom_object("example.io", "v1", "default", "widgets", widget("w1", 3))
    assert created["spec"] == {"size": 3, "color": "red"}                 # defaulted from the schema
    assert status_of(lambda: objects.create_namespaced_custom_object(
        "example.io", "v1", "default", "widgets", widget("w2", 1000))) == 422  # validated by it
    # the status subresource, as declared by the schema
    created["status"] = {"observed": True}
    objects.replace_namespaced_custom_object_status("example.io", "v1", "default", "widgets", "w1", created)
    assert objects.get_namespaced_custom_object("example.io", "v1", "default", "widgets", "w1")["status"] == {
        "observed": True}
    # discovery and OpenAPI of the consumer, not of the provider
    resources = json.loads(shard.kubectl("get", "--raw", f"/clusters/{consumer}/apis/example.io/v1").stdout)
    assert {r["name"] for r in resources["resources"]} == {"widgets", "widgets/status"}
    assert status_of(lambda: api(shard, provider).list_cluster_custom_object("example.io", "v1", "widgets")) == 404
    openapi = shard.kubectl("get", "--raw", f"/clusters/{consumer}/openapi/v3/apis/example.io/v1").stdout
    assert "How big the widget is." in openapi
    # the identity-qualified name is the same resource
    assert widgets(shard, consumer, f"widgets:{identity}") == [f"{consumer}/w1"]


def test_kubectl_in_the_consumer_workspace(shard):
    provider, consumer = workspace(shard, "provider"), workspace(shard, "consumer")
    provide(shard, provider)
    bind(shard, consumer, provider)
    wait_bound(shard, consumer)
    server = f"{shard.url}/clusters/{consumer}"
    manifest = json.dumps(widget("applied", 5))
    assert "widget.example.io/applied created" in shard.kubectl("apply", "-f", "-", input=manifest,
                                                                server=server).stdout
    out = shard.kubectl("get", "widgets", server=server).stdout.splitlines()
    assert out[0].split() == ["NAME", "SIZE", "COLOR"] and out[1].split() == ["applied", "5", "red"]
    changed = json.dumps({**widget("applied", 6), "spec": {"size": 6, "color": "blue"}})
    assert "configured" in shard.kubectl("apply", "-f", "-", input=changed, server=server).stdout
    assert shard.kubectl("get", "widget", "applied", "-o", "jsonpath={.spec.color}", server=server).stdout == "blue"
    refused = shard.kubectl("apply", "-f", "-", input=json.dumps(widget("bad", 0)), server=server, check=False)
    assert refused.returncode != 0 and "spec.size" in refused.stderr
    assert "How big the widget is." in shard.kubectl("explain", "widgets.spec.size", server=server).stdout
    listed = shard.kubectl("get", "apibindings", server=server).stdout.splitlines()
    assert listed[0].split()[:3] == ["NAME", "EXPORT", "PHASE"]
    assert listed[1].split()[:3] == ["widgets", f"{provider}:widgets", "Bound"]


def test_export_missing_then_created(shard):
    provider, consumer = workspace(shard, "provider"), workspace(shard, "consumer")
    bind(shard, consumer, provider)
    pending = wait_for(lambda: binding(shard, consumer),
                       lambda b: condition(b, "APIExportValid").get("reason") == "APIExportNotFound")
    assert pending["status"]["phase"] == "Binding"
    assert condition(pending, "APIExportValid")["message"] == f"APIExport {provider}:widgets not found"
    for type_ in ("Ready", "InitialBindingCompleted"):
        assert condition(pending, type_)["status"] == "False"
    assert status_of(lambda: api(shard, consumer).list_cluster_custom_object("example.io", "v1", "widgets")) == 404
    provide(shard, provider)
    bound = wait_bound(shard, consumer)
    assert condition(bound, "Ready")["status"] == "True"
    assert widgets(shard, consumer) == []


def test_schema_missing_is_explained(shard):
    provider, consumer = workspace(shard, "provider"), workspace(shard, "consumer")
    api(shard, provider).create_cluster_custom_object(GROUP, VERSION, "apiexports", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "APIExport", "metadata": {"name": "widgets"},
        "spec": {"latestResourceSchemas": ["v1.widgets.example.io"]}})
    bind(shard, consumer, provider)
    pending = wait_for(lambda: binding(shard, consumer),
                       lambda b: condition(b, "BindingUpToDate").get("reason") == "APIResourceSchemaNotFound")
    assert pending["status"]["phase"] == "Binding"
    assert condition(pending, "APIExportValid")["status"] == "True"
    api(shard, provider).create_cluster_custom_object(GROUP, VERSION, "apiresourceschemas", resource_schema())
    wait_bound(shard, consumer)


def test_naming_conflict_with_a_crd(shard):
    provider, consumer = workspace(shard, "provider"), workspace(shard, "consumer")
    provide(shard, provider)
    schema = resource_schema()["spec"]
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "widgets.example.io"},
           "spec": {"group": "example.io", "scope": "Namespaced", "names": schema["names"],
                    "versions": [{"name": "v1", "served": True, "storage": True,
                                  "schema": {"openAPIV3Schema": {"type": "object",
                                                                 "x-kubernetes-preserve-unknown-fields": True}}}]}}
    extensions = client.ApiextensionsV1Api(shard.cluster_client(consumer))
    extensions.create_custom_resource_definition(crd)
    api(shard, consumer).create_namespaced_custom_object("example.io", "v1", "default", "widgets",
                                                         {**widget("of-the-crd"), "spec": {"any": "thing"}})
    bind(shard, consumer, provider)
    conflicted = wait_for(lambda: binding(shard, consumer),
                          lambda b: condition(b, "BindingUpToDate").get("reason") == "NamingConflicts")
    assert conflicted["status"]["phase"] == "Binding" and "boundResources" not in conflicted["status"]
    assert 'CustomResourceDefinition "widgets.example.io"' in condition(conflicted, "Ready")["message"]
    assert widgets(shard, consumer) == [f"{consumer}/of-the-crd"]      # the CRD is what is served
    extensions.delete_custom_resource_definition("widgets.example.io")
    wait_bound(shard, consumer)
    assert widgets(shard, consumer) == []                               # the bound resource, stored apart


def test_two_bindings_of_one_resource(shard):
    provider_a, provider_b = workspace(shard, "provider-a"), workspace(shard, "provider-b")
    consumer = workspace(shard, "consumer")
    provide(shard, provider_a)
    provide(shard, provider_b)
    bind(shard, consumer, provider_a, name="first")
    wait_bound(shard, consumer, "first")
    bind(shard, consumer, provider_b, name="second")
    second = wait_for(lambda: binding(shard, consumer, "second"),
                      lambda b: condition(b, "BindingUpToDate").get("reason") == "NamingConflicts")
    assert 'APIBinding "first"' in condition(second, "BindingUpToDate")["message"]
    api(shard, consumer).delete_cluster_custom_object(GROUP, VERSION, "apibindings", "first")
    assert wait_bound(shard, consumer, "second")["status"]["apiExportClusterName"] == provider_b


# ---------------------------------------------------------------------------------------------- identity

def test_two_exports_of_one_resource_never_mix(shard):
    provider_a, provider_b = workspace(shard, "provider-a"), workspace(shard, "provider-b")
    consumer_a, consumer_b = workspace(shard, "consumer-a"), workspace(shard, "consumer-b")
    identity_a = provide(shard, provider_a)["status"]["identityHash"]
    identity_b = provide(shard, provider_b)["status"]["identityHash"]
    assert identity_a != identity_b
    bind(shard, consumer_a, provider_a)
    bind(shard, consumer_b, provider_b)
    wait_bound(shard, consumer_a)
    wait_bound(shard, consumer_b)
    for consumer, names in ((consumer_a, ("a1", "same")), (consumer_b, ("b1", "same"))):
        for name in names:
            api(shard, consumer).create_namespaced_custom_object("example.io", "v1", "default", "widgets",
                                                                 widget(name))
    assert widgets(shard, consumer_a) == [f"{consumer_a}/a1", f"{consumer_a}/same"]
    assert widgets(shard, consumer_b) == [f"{consumer_b}/b1", f"{consumer_b}/same"]
    # the wildcard view of one identity holds exactly the clusters bound to that export
    assert widgets(shard, "*", f"widgets:{identity_a}") == [f"{consumer_a}/a1", f"{consumer_a}/same"]
    assert widgets(shard, "*", f"widgets:{identity_b}") == [f"{consumer_b}/b1", f"{consumer_b}/same"]
    # the other export's identity is not served in a consumer
    assert status_of(lambda: widgets(shard, consumer_a, f"widgets:{identity_b}")) == 404
    # the plain name is not served across clusters (which export would it be?)
    assert status_of(lambda: widgets(shard, "*")) == 404


def test_wildcard_before_any_binding_is_empty_not_404(shard):
    provider = workspace(shard, "provider")
    identity = provide(shard, provider)["status"]["identityHash"]
    listed = api(shard, "*").list_cluster_custom_object("example.io", "v1", f"widgets:{identity}")
    assert listed["items"] == [] and int(listed["metadata"]["resourceVersion"]) > 0
    assert status_of(lambda: widgets(shard, "*", "widgets:" + "0" * 64)) == 404


def test_wildcard_watch_follows_bindings(shard):
    provider, consumer = workspace(shard, "provider"), workspace(shard, "consumer")
    identity = provide(shard, provider)["status"]["identityHash"]
    resource = f"widgets:{identity}"
    start = api(shard, "*").list_cluster_custom_object("example.io", "v1", resource)["metadata"]["resourceVersion"]
    bind(shard, consumer, provider)
    wait_bound(shard, consumer)
    api(shard, consumer).create_namespaced_custom_object("example.io", "v1", "default", "widgets", widget("w"))
    api(shard, consumer).delete_cluster_custom_object(GROUP, VERSION, "apibindings", "widgets")
    wait_for(lambda: widgets(shard, "*", resource), lambda names: names == [])
    events = [(e["type"], e["object"]["metadata"]["name"]) for e in watch.Watch().stream(
        api(shard, "*").list_cluster_custom_object, "example.io", "v1", resource, resource_version=start,
        timeout_seconds=1)]
    assert events == [("ADDED", "w"), ("DELETED", "w")]


# ---------------------------------------------------------------------------------------------- unbind, rebind

def test_unbind_stops_serving_and_rebind_serves_the_old_objects(shard):
    provider, consumer = workspace(shard, "provider"), workspace(shard, "consumer")
    identity = provide(shard, provider)["status"]["identityHash"]
    bind(shard, consumer, provider)
    wait_bound(shard, consumer)
    objects = api(shard, consumer)
    kept = objects.create_namespaced_custom_object("example.io", "v1", "default", "widgets", widget("kept", 7))
    objects.delete_cluster_custom_object(GROUP, VERSION, "apibindings", "widgets")
    wait_for(lambda: status_of(lambda: widgets(shard, consumer)), lambda code: code == 404)
    assert status_of(lambda: objects.get_namespaced_custom_object("example.io", "v1", "default", "widgets",
                                                                  "kept")) == 404
    groups = shard.kubectl("api-resources", "-o", "name", server=f"{shard.url}/clusters/{consumer}").stdout
    assert "widgets.example.io" not in groups
    assert widgets(shard, "*", f"widgets:{identity}") == []
    # rebinding (another name, same export) brings the very same objects back
    bind(shard, consumer, provider, name="again")
    wait_bound(shard, consumer, "again")
    back = objects.get_namespaced_custom_object("example.io", "v1", "default", "widgets", "kept")
    assert back["metadata"]["uid"] == kept["metadata"]["uid"] and back["spec"] == kept["spec"]
    assert widgets(shard, "*", f"widgets:{identity}") == [f"{consumer}/kept"]


def test_deleting_the_workspace_deletes_bound_objects(shard):
    provider, consumer = workspace(shard, "provider"), workspace(shard, "consumer")
    identity = provide(shard, provider)["status"]["identityHash"]
    bind(shard, consumer, provider)
    wait_bound(shard, consumer)
    for name in ("live", "parked"):
        api(shard, consumer).create_namespaced_custom_object("example.io", "v1", "default", "widgets", widget(name))
    api(shard, consumer).delete_cluster_custom_object(GROUP, VERSION, "apibindings", "widgets")
    wait_for(lambda: widgets(shard, "*", f"widgets:{identity}"), lambda names: names == [])
    shard.run(shard.shard.registry.delete_logical_cluster, consumer)
    store = shard.shard.store

    def leftovers():
        return sum(len(store.list(resource, consumer)[0]) for resource in store.counts() if ":" in resource)
    wait_for(leftovers, lambda n: n == 0)


# ---------------------------------------------------------------------------------------------- permissions

def token_client(shard, who: str, cluster: str) -> client.ApiClient:
    configuration = client.Configuration()
    configuration.host = f"{shard.url}/clusters/{cluster}"
    configuration.ssl_ca_cert = shard.ca_file
    configuration.api_key = {"authorization": f"Bearer {TOKENS[who]}"}
    return client.ApiClient(configuration)


def grant(shard, cluster: str, name: str, rules: list[dict], user: str) -> None:
    rbac = client.RbacAuthorizationV1Api(shard.cluster_client(cluster))
    rbac.create_cluster_role({"metadata": {"name": name}, "rules": rules})
    rbac.create_cluster_role_binding({"metadata": {"name": name},
                                      "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": name},
                                      "subjects": [{"kind": "User", "apiGroup": RBAC, "name": user}]})


def test_binding_needs_bind_on_the_export(shard):
    provider, consumer = workspace(shard, "provider"), workspace(shard, "consumer")
    provide(shard, provider)
    # bob administers the consumer workspace (access in its parent, cluster-admin inside) and nothing else
    grant(shard, "root", f"access-{consumer.partition(':')[2]}",
          [{"apiGroups": ["tenancy.kcp.dev"], "resources": ["clusterworkspaces/content"], "verbs": ["access"],
            "resourceNames": [consumer.partition(":")[2]]}], "bob")
    grant(shard, consumer, "bob-admin", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}], "bob")
    bob = token_client(shard, "bob", consumer)
    with pytest.raises(ApiException) as denied:
        bind(shard, consumer, provider, api_client=bob)
    assert denied.value.status == 403
    body = json.loads(denied.value.body)
    assert body["reason"] == "Forbidden" and body["message"] == (
        f'apibindings.apis.kcp.dev "widgets" is forbidden: unable to create APIBinding: no permission to bind to '
        f"export {provider}:widgets")
    # bind on another export grants nothing; bind on this one (a ClusterRole in the provider workspace) does,
    # without any access to the provider workspace itself
    grant(shard, provider, "bind-other", [{"apiGroups": [GROUP], "resources": ["apiexports"], "verbs": ["bind"],
                                           "resourceNames": ["other"]}], "bob")
    assert status_of(lambda: bind(shard, consumer, provider, api_client=bob)) == 403
    grant(shard, provider, "bind-widgets", [{"apiGroups": [GROUP], "resources": ["apiexports"], "verbs": ["bind"],
                                             "resourceNames": ["widgets"]}], "bob")
    bind(shard, consumer, provider, api_client=bob)
    wait_bound(shard, consumer)
    assert client.CustomObjectsApi(bob).list_namespaced_custom_object("example.io", "v1", "default",
                                                                      "widgets")["items"] == []
    provider_get = requests.get(f"{shard.url}/clusters/{provider}/apis/{GROUP}/{VERSION}/apiexports",
                                headers={"Authorization": f"Bearer {TOKENS['bob']}"}, verify=shard.ca_file)
    assert provider_get.status_code == 403                                  # bind is not access
    # the identity-qualified name is authorized as the plain resource: bob's RBAC on widgets applies
    identity = binding(shard, consumer)["status"]["boundResources"][0]["schema"]["identityHash"]
    qualified = f"{shard.url}/clusters/{consumer}/apis/example.io/v1/namespaces/default/widgets:{identity}"
    for who, code in (("bob", 200), ("carol", 403)):
        response = requests.get(qualified, headers={"Authorization": f"Bearer {TOKENS[who]}"}, verify=shard.ca_file)
        assert response.status_code == code, (who, response.text)
    # the reference cannot be re-pointed afterwards, nor the wildcard view reached
    current = binding(shard, consumer)
    current["spec"]["reference"]["workspace"]["exportName"] = "other"
    assert status_of(lambda: client.CustomObjectsApi(bob).replace_cluster_custom_object(
        GROUP, VERSION, "apibindings", "widgets", current)) == 422
    wildcard = requests.get(f"{shard.url}/clusters/*/apis/example.io/v1/widgets:"
                            f"{current['status']['boundResources'][0]['schema']['identityHash']}",
                            headers={"Authorization": f"Bearer {TOKENS['bob']}"}, verify=shard.ca_file)
    assert wildcard.status_code == 403


# ---------------------------------------------------------------------------------------------- the API objects

def test_schemas_are_validated_and_immutable(shard):
    provider = workspace(shard, "provider")
    objects = api(shard, provider)
    bad_name = resource_schema()
    bad_name["metadata"]["name"] = "widgets.example.io"
    with pytest.raises(ApiException) as invalid:
        objects.create_cluster_custom_object(GROUP, VERSION, "apiresourceschemas", bad_name)
    assert invalid.value.status == 422 and "must end in .widgets.example.io" in invalid.value.body
    bad_schema = resource_schema()
    bad_schema["spec"]["versions"][0]["schema"] = {"type": "object", "properties": {"spec": {}}}
    with pytest.raises(ApiException) as invalid:
        objects.create_cluster_custom_object(GROUP, VERSION, "apiresourceschemas", bad_schema)
    assert invalid.value.status == 422 and "spec.versions[0].schema.properties[spec].type" in invalid.value.body
    created = objects.create_cluster_custom_object(GROUP, VERSION, "apiresourceschemas", resource_schema())
    created["spec"]["scope"] = "Cluster"
    with pytest.raises(ApiException) as immutable:
        objects.replace_cluster_custom_object(GROUP, VERSION, "apiresourceschemas", created["metadata"]["name"],
                                              created)
    assert immutable.value.status == 422 and "immutable" in immutable.value.body
    # the CRD form (schema.openAPIV3Schema) is accepted too
    crd_form = resource_schema(prefix="crdform")
    crd_form["spec"]["versions"][0]["schema"] = {"openAPIV3Schema": WIDGET_SCHEMA}
    objects.create_cluster_custom_object(GROUP, VERSION, "apiresourceschemas", crd_form)


def test_identity_never_changes(shard):
    provider = workspace(shard, "provider")
    export = provide(shard, provider)
    identity = export["status"]["identityHash"]
    export["status"]["identityHash"] = "f" * 64
    assert status_of(lambda: api(shard, provider).replace_cluster_custom_object_status(
        GROUP, VERSION, "apiexports", "widgets", export)) == 422
    core = client.CoreV1Api(shard.cluster_client(provider))
    core.patch_namespaced_secret("widgets", "kcp-system", {"data": {"key": "YW5vdGhlcg=="}})
    changed = wait_for(lambda: api(shard, provider).get_cluster_custom_object(GROUP, VERSION, "apiexports", "widgets"),
                       lambda e: condition(e, "IdentityValid").get("status") == "False", timeout=3)
    assert changed["status"]["identityHash"] == identity
    assert condition(changed, "IdentityValid")["reason"] == "IdentityVerificationFailed"


def test_one_virtual_workspace_url_per_shard(shard):
    provider = workspace(shard, "provider")
    provide(shard, provider)
    shards = client.CustomObjectsApi(shard.cluster_client("root"))
    shards.create_cluster_custom_object("tenancy.kcp.dev", "v1alpha1", "shards", {
        "apiVersion": "tenancy.kcp.dev/v1alpha1", "kind": "Shard", "metadata": {"name": "second"},
        "spec": {"baseURL": "https://second.example:6443", "virtualWorkspaceURL": "https://vw.example:6444"}})
    try:
        export = wait_for(lambda: api(shard, provider).get_cluster_custom_object(GROUP, VERSION, "apiexports",
                                                                                  "widgets"),
                          lambda e: len(e["status"]["virtualWorkspaces"]) == 2)
        assert export["status"]["virtualWorkspaces"] == [
            {"url": f"{shard.url}/services/apiexport/{provider}/widgets"},
            {"url": f"https://vw.example:6444/services/apiexport/{provider}/widgets"}]
    finally:
        shards.delete_cluster_custom_object("tenancy.kcp.dev", "v1alpha1", "shards", "second")
    wait_for(lambda: api(shard, provider).get_cluster_custom_object(GROUP, VERSION, "apiexports", "widgets"),
             lambda e: len(e["status"]["virtualWorkspaces"]) == 1)


# ---------------------------------------------------------------------------------------------- for virtual workspaces

def test_what_a_virtual_workspace_reaches_through_the_shard_client(shard):
    """The apiexport virtual workspace's three questions, asked through the in-process ShardClient."""
    from kcp_virtual.framework.shardclient import GroupVersionResource as GVR, ListQuery
    from server.apis.apis_kcp import EXPORT_LABEL, export_label_value

    provider, consumer, other = workspace(shard, "provider"), workspace(shard, "consumer"), workspace(shard, "other")
    provide(shard, provider)
    bind(shard, consumer, provider)
    wait_bound(shard, consumer)
    api(shard, consumer).create_namespaced_custom_object("example.io", "v1", "default", "widgets", widget("seen"))
    other_provider = workspace(shard, "provider")
    provide(shard, other_provider)
    bind(shard, other, other_provider)
    wait_bound(shard, other)
    shard_client = shard.shard.shard_client

    def ask():
        export = shard_client.get(GVR(GROUP, VERSION, "apiexports"), provider, "", "widgets")
        schemas = [shard_client.get(GVR(GROUP, VERSION, "apiresourceschemas"), provider, "", name)
                   for name in export["spec"]["latestResourceSchemas"]]
        selector = f"{EXPORT_LABEL}={export_label_value(provider, 'widgets')}"
        bindings = shard_client.list(GVR(GROUP, VERSION, "apibindings"), "*", "", ListQuery(label_selector=selector))
        identity = export["status"]["identityHash"]
        objects = shard_client.list(GVR("example.io", "v1", "widgets", identity), "*", "", ListQuery())
        in_consumer = shard_client.get(GVR("example.io", "v1", "widgets", identity), consumer, "default", "seen")
        return schemas, bindings, objects, in_consumer

    schemas, bindings, objects, in_consumer = shard.run(ask)
    assert [s["spec"]["names"]["plural"] for s in schemas] == ["widgets"]
    assert [(b["metadata"]["annotations"]["kcp.dev/cluster"], b["status"]["phase"]) for b in bindings["items"]] == [
        (consumer, "Bound")]
    assert [o["metadata"]["annotations"]["kcp.dev/cluster"] for o in objects["items"]] == [consumer]
    assert in_consumer["metadata"]["name"] == "seen"


def test_bindings_and_parked_objects_survive_a_restart(tmp_path):
    first = start_shard(workdir=tmp_path)
    try:
        provider, consumer = workspace(first, "provider"), workspace(first, "consumer")
        identity = provide(first, provider)["status"]["identityHash"]
        bind(first, consumer, provider)
        wait_bound(first, consumer)
        api(first, consumer).create_namespaced_custom_object("example.io", "v1", "default", "widgets", widget("w"))
        parked_consumer = workspace(first, "parked")
        bind(first, parked_consumer, provider)
        wait_bound(first, parked_consumer)
        api(first, parked_consumer).create_namespaced_custom_object("example.io", "v1", "default", "widgets",
                                                                    widget("p"))
        api(first, parked_consumer).delete_cluster_custom_object(GROUP, VERSION, "apibindings", "widgets")
        wait_for(lambda: widgets(first, "*", f"widgets:{identity}"), lambda names: names == [f"{consumer}/w"])
    finally:
        first.stop()
    second = start_shard(workdir=tmp_path)
    try:
        assert widgets(second, consumer) == [f"{consumer}/w"]
        assert widgets(second, "*", f"widgets:{identity}") == [f"{consumer}/w"]
        export = api(second, provider).get_cluster_custom_object(GROUP, VERSION, "apiexports", "widgets")
        assert export["status"]["identityHash"] == identity
        assert export["status"]["virtualWorkspaces"] == [{"url": f"{second.url}/services/apiexport/{provider}/widgets"}]
        bind(second, parked_consumer, provider)
        wait_bound(second, parked_consumer)
        assert widgets(second, parked_consumer) == [f"{parked_consumer}/p"]
    finally:
        second.stop()
