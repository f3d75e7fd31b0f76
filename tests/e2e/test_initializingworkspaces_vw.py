"""The initializingworkspaces virtual workspace through real clients, in every topology (embedded, external, forwarded).

A WorkspaceType ``db`` in ``root:org-*`` has an initializer (``root:org-*:db``) and ``initializerPermissions``
for namespaces and configmaps; a service account of that workspace holds ``initialize`` on it and does all the
initializing with its own token. Another user, ``evil``, owns a WorkspaceType of the same name in another
workspace. Workspaces are created by the admin in ``root`` and in a second parent.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml
from kubernetes import client, watch

from examples.initializer_controller import CONFIGMAP, NAMESPACE, InitializerController
from server.shard import ShardConfig
from tests.topologies import TOPOLOGIES, running_topology

GROUP, VERSION = "tenancy.kcp.dev", "v1alpha1"
RBAC = "rbac.authorization.k8s.io"
CWS = "clusterworkspaces"
SERVICES = "/services/initializingworkspaces"
HISTORY = 300  # watch events the shard remembers per resource (the 410 test pushes a version out of it)
PERMISSIONS = [{"apiGroups": [""], "resources": ["namespaces", "configmaps"], "verbs": ["get", "list", "create"]}]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module", params=TOPOLOGIES)
def topology(request, tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.csv"
    tokens.write_text('evil-token,evil,7\nstranger-token,stranger,8\nadmin-token,admin,9,"system:masters"\n')
    config = ShardConfig(token_auth_file=str(tokens), bookmark_interval=1.0, watch_history_events=HISTORY)
    with running_topology(request.param, config) as (vw, shard, _):
        yield vw, shard


class World:
    """The shard, where its virtual workspaces are, and the admin's hands on it."""

    def __init__(self, vw, shard):
        self.vw, self.shard = vw, shard
        self.org, self.evil_org, self.parent = unique("root:org"), unique("root:evil"), unique("root:parent")
        for cluster in (self.org, self.evil_org, self.parent):
            shard.run(shard.shard.registry.ensure_logical_cluster, cluster)
        self.initializer = f"{self.org}:db"
        self.evil_initializer = f"{self.evil_org}:db"
        self.workspace_type(self.org, "db", initializer=True, initializerPermissions=PERMISSIONS)
        self.workspace_type(self.evil_org, "db", initializer=True, initializerPermissions=PERMISSIONS)
        self.sa_token = self.service_account(self.org, "initializer", ["db"])
        evil = {"kind": "User", "apiGroup": RBAC, "name": "evil"}   # owns its workspace, as its creator would
        self.grant("root", unique("evil-enters"), [{"apiGroups": [GROUP], "resources": ["clusterworkspaces/content"],
                                                    "verbs": ["admin"], "resourceNames": [own_name(self.evil_org)]}],
                   evil)
        self.grant(self.evil_org, "evil-admin", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}], evil)

    # -- the admin

    def objects(self, cluster: str) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.shard.cluster_client(cluster))

    def workspace_type(self, cluster: str, name: str, **spec) -> dict:
        return self.objects(cluster).create_cluster_custom_object(GROUP, VERSION, "workspacetypes",
                                                                  {"metadata": {"name": name}, "spec": spec})

    def grant(self, cluster: str, name: str, rules: list[dict], subject: dict) -> None:
        rbac = client.RbacAuthorizationV1Api(self.shard.cluster_client(cluster))
        rbac.create_cluster_role({"metadata": {"name": name}, "rules": rules})
        rbac.create_cluster_role_binding({"metadata": {"name": name},
                                          "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": name},
                                          "subjects": [subject]})

    def service_account(self, cluster: str, name: str, types: list[str]) -> str:
        """A service account of ``cluster`` with ``initialize`` on ``types`` there; its token."""
        core = client.CoreV1Api(self.shard.cluster_client(cluster))
        core.create_namespaced_service_account("default", {"metadata": {"name": name}})
        token = core.create_namespaced_service_account_token(name, "default", {"spec": {"audiences": []}}).status.token
        if types:
            self.grant(cluster, f"{name}-initialize", [
                {"apiGroups": [GROUP], "resources": ["workspacetypes"], "verbs": ["initialize"], "resourceNames": types},
                {"apiGroups": [GROUP], "resources": ["workspacetypes"], "verbs": ["get", "list", "watch"]}],
                {"kind": "ServiceAccount", "name": name, "namespace": "default"})
        return token

    def workspace(self, type_cluster: str | None = None, type_name: str = "db", parent: str = "root",
                  phase: str | None = "Initializing") -> str:
        """A new ClusterWorkspace of that type in ``parent``, once in ``phase`` (None: at once); its logical cluster."""
        name = unique("ws")
        type_ref = {"name": type_name, "path": type_cluster or self.org}
        self.objects(parent).create_cluster_custom_object(GROUP, VERSION, CWS, {"metadata": {"name": name},
                                                                                "spec": {"type": type_ref}})
        if phase is not None:
            self.wait_phase(f"{parent}:{name}", phase)
        return f"{parent}:{name}"

    def stored(self, cluster: str) -> dict:
        parent, _, name = cluster.rpartition(":")
        return self.objects(parent).get_cluster_custom_object(GROUP, VERSION, CWS, name)

    def wait_phase(self, cluster: str, phase: str, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            obj = self.stored(cluster)
            if (obj.get("status") or {}).get("phase") == phase:
                return obj
            assert time.monotonic() < deadline, f"{cluster} never reached {phase}: {obj.get('status')}"
            time.sleep(0.05)

    # -- clients of the virtual workspace

    def url(self, cluster: str = "*", initializer: str | None = None) -> str:
        return f"{self.vw.base_url}{SERVICES}/{initializer or self.initializer}/clusters/{cluster}"

    def api(self, cluster: str = "*", token: str | None = None, initializer: str | None = None) -> client.ApiClient:
        configuration = client.Configuration()
        configuration.host = self.url(cluster, initializer)
        configuration.ssl_ca_cert = self.shard.ca_file
        configuration.api_key = {"authorization": f"Bearer {token or self.sa_token}"}
        return client.ApiClient(configuration)

    def view(self, cluster: str = "*", **kwargs) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api(cluster, **kwargs))

    def http(self, method: str, url: str, token: str | None = None, body=None, content_type="application/json",
             **params) -> requests.Response:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body)
        return requests.request(method, url, data=data, params=params or None, verify=self.shard.ca_file,
                                headers={"Authorization": f"Bearer {token or self.sa_token}",
                                         "Content-Type": content_type}, timeout=30)

    def kubeconfig(self, cluster: str, token: str | None = None) -> str:
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "vw",
                  "clusters": [{"name": "vw", "cluster": {"server": self.url(cluster),
                                                          "certificate-authority": self.shard.ca_file}}],
                  "users": [{"name": "vw", "user": {"token": token or self.sa_token}}],
                  "contexts": [{"name": "vw", "context": {"cluster": "vw", "user": "vw"}}]}
        path = Path(self.vw.workdir) / f"{unique('init')}.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        return str(path)

    def kubectl_command(self, cluster: str, *args: str) -> list[str]:
        home = Path(self.vw.workdir) / "kubectl-home"
        return ["kubectl", f"--cache-dir={home / 'cache'}", f"--kubeconfig={self.kubeconfig(cluster)}", *args]

    def kubectl(self, cluster: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(self.kubectl_command(cluster, *args), env=self.vw.kubectl_env(), capture_output=True,
                              text=True, check=check, timeout=60)


@pytest.fixture(scope="module")
def world(topology) -> World:
    return World(*topology)


def names(listing: dict) -> set[str]:
    return {item["metadata"]["name"] for item in listing["items"]}


def own_name(cluster: str) -> str:
    return cluster.rpartition(":")[2]


def release(world: World, cluster: str, initializer: str | None = None) -> dict:
    """Remove ``initializer`` from the workspace through the view (a merge patch)."""
    initializer = initializer or world.initializer
    current = world.stored(cluster)
    remaining = [i for i in current["status"]["initializers"] if i != initializer]
    return world.view(cluster, initializer=initializer).patch_cluster_custom_object_status(GROUP, VERSION, CWS,
                                                                                         own_name(cluster),
                                                                  {"status": {"initializers": remaining}})


# ---------------------------------------------------------------------- publication


def test_the_url_is_published_per_shard(world):
    def urls():
        obj = world.objects(world.org).get_cluster_custom_object(GROUP, VERSION, "workspacetypes", "db")
        return [vw["url"] for vw in (obj.get("status") or {}).get("virtualWorkspaces") or ()]

    shard_spec = world.objects("root").get_cluster_custom_object(GROUP, VERSION, "shards", "root")["spec"]
    expected = f"{shard_spec['virtualWorkspaceURL']}{SERVICES}/{world.initializer}"
    wait_until(lambda: urls() == [expected])
    if world.vw.name != "forwarded":   # forwarded: the shard publishes the external process, which clients may use
        assert expected.startswith(world.vw.base_url)
    shards = world.objects("root")
    shards.create_cluster_custom_object(GROUP, VERSION, "shards", {"metadata": {"name": "other"},
                                                                   "spec": {"baseURL": "https://other.example:6443"}})
    try:
        wait_until(lambda: sorted(urls()) == sorted(
            [expected, f"https://other.example:6443{SERVICES}/{world.initializer}"]))
        shards.patch_cluster_custom_object(GROUP, VERSION, "shards", "other",
                                           {"spec": {"virtualWorkspaceURL": "https://other.example:7443"}})
        wait_until(lambda: sorted(urls()) == sorted(
            [expected, f"https://other.example:7443{SERVICES}/{world.initializer}"]))
    finally:
        shards.delete_cluster_custom_object(GROUP, VERSION, "shards", "other")
    wait_until(lambda: urls() == [expected])


def wait_until(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# ---------------------------------------------------------------------- the wildcard view


def test_the_view_holds_exactly_the_workspaces_waiting_for_this_initializer(world):
    mine = [world.workspace(), world.workspace(parent=world.parent)]
    evil = world.workspace(world.evil_org)
    ready = world.workspace(type_cluster="root", type_name="universal", phase="Ready")
    listing = world.view().list_cluster_custom_object(GROUP, VERSION, CWS)
    assert {own_name(c) for c in mine} <= names(listing)
    assert own_name(evil) not in names(listing) and own_name(ready) not in names(listing)
    for item in listing["items"]:
        assert item["status"]["phase"] == "Initializing" and world.initializer in item["status"]["initializers"]
    clusters = {f'{i["metadata"]["annotations"]["kcp.dev/cluster"]}:{i["metadata"]["name"]}' for i in listing["items"]}
    assert set(mine) <= clusters   # the workspace's own cluster: <kcp.dev/cluster>:<name>
    evil_listing = world.view(token="evil-token", initializer=world.evil_initializer).list_cluster_custom_object(
        GROUP, VERSION, CWS)
    assert own_name(evil) in names(evil_listing) and not {own_name(c) for c in mine} & names(evil_listing)
    # released: out of the view, and Ready once it was the last initializer
    release(world, mine[0])
    world.wait_phase(mine[0], "Ready")
    assert own_name(mine[0]) not in names(world.view().list_cluster_custom_object(GROUP, VERSION, CWS))


def test_watch_added_then_deleted_when_released_with_bookmarks(world):
    view = world.view()
    start = view.list_cluster_custom_object(GROUP, VERSION, CWS)["metadata"]["resourceVersion"]
    events: list[tuple[str, str]] = []
    done = threading.Event()
    cluster_box: list[str] = []

    def run():
        for event in watch.Watch().stream(view.list_cluster_custom_object, GROUP, VERSION, CWS,
                                          resource_version=start, allow_watch_bookmarks=True, timeout_seconds=20):
            events.append((event["type"], event["object"]["metadata"].get("name", "")))
            if cluster_box and ("DELETED", own_name(cluster_box[0])) in events and any(
                    kind == "BOOKMARK" for kind, _ in events):
                done.set()
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    cluster = world.workspace()
    cluster_box.append(cluster)
    wait_until(lambda: ("ADDED", own_name(cluster)) in events)
    release(world, cluster)
    assert done.wait(20), events
    mine = [kind for kind, name in events if name == own_name(cluster)]
    assert mine[0] == "ADDED" and mine[-1] == "DELETED"


def test_too_old_resource_version_is_a_410_error_event(world):
    cluster = world.workspace()
    start = world.view().list_cluster_custom_object(GROUP, VERSION, CWS)["metadata"]["resourceVersion"]
    shard = world.shard

    def churn():  # push ``start`` out of the shard's window for clusterworkspaces with writes outside the view
        registry = shard.shard.registry
        rt = registry.catalog.lookup("root", GROUP, VERSION, CWS)
        for i in range(2 * HISTORY):
            obj = registry.get(rt, "root", "", own_name(world.churned))
            registry.update(rt, "root", "", own_name(world.churned),
                            {**obj, "metadata": {**obj["metadata"], "labels": {"churn": str(i)}}})

    world.churned = world.workspace(type_cluster="root", type_name="universal", phase="Ready")
    shard.run(churn)
    response = world.http("GET", f"{world.url()}/apis/{GROUP}/{VERSION}/{CWS}", watch="true", resourceVersion=start,
                          timeoutSeconds="2")
    lines = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0]["type"] == "ERROR", lines
    assert (lines[0]["object"]["code"], lines[0]["object"]["reason"]) == (410, "Expired")
    release(world, cluster)


def test_kubectl_get_and_watch_through_the_url(world):
    cluster = world.workspace(parent=world.parent)
    rows = [line.split() for line in world.kubectl("*", "get", CWS).stdout.splitlines()]
    assert rows[0] == ["NAME", "WORKSPACE", "TYPE", "PHASE", "URL", "AGE"]
    assert [own_name(cluster), world.parent, "db", "Initializing"] in [row[:4] for row in rows[1:]]
    assert world.kubectl("*", "api-resources", "-o", "name").stdout.split() == [f"{CWS}.{GROUP}"]
    explained = world.kubectl("*", "explain", f"{CWS}.status.initializers").stdout
    assert "FIELD: initializers <[]string>" in explained and "removes only" in explained
    process = subprocess.Popen(world.kubectl_command("*", "get", CWS, "-w", "--output-watch-events",
                                                     "--request-timeout=0"),
                               env=world.vw.kubectl_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()

    def seen(event: str, name: str) -> bool:
        return any(line.split()[:2] == [event, name] for line in list(lines))

    try:
        time.sleep(1.0)   # the watch is open by then
        later = world.workspace()
        wait_until(lambda: seen("ADDED", own_name(later)), timeout=20)
        release(world, later)
        wait_until(lambda: seen("DELETED", own_name(later)), timeout=20)
    finally:
        process.kill()
        process.wait()
    assert lines[0].split()[:3] == ["EVENT", "NAME", "WORKSPACE"]
    release(world, cluster)


def test_discovery_and_openapi_show_exactly_the_view(world):
    api = world.api()
    groups = world.http("GET", f"{world.url()}/apis").json()
    assert [g["name"] for g in groups["groups"]] == [GROUP]
    resources = world.http("GET", f"{world.url()}/apis/{GROUP}/{VERSION}").json()["resources"]
    assert [(r["name"], sorted(r["verbs"])) for r in resources] == [(CWS, ["list", "watch"])]
    assert world.http("GET", f"{world.url()}/api/v1").json()["resources"] == []
    root = world.http("GET", f"{world.url()}/openapi/v3").json()["paths"]
    assert list(root) == [f"apis/{GROUP}/{VERSION}"]
    document = world.http("GET", world.vw.base_url + root[f"apis/{GROUP}/{VERSION}"]["serverRelativeURL"]).json()
    assert set(document["paths"]) == {f"/apis/{GROUP}/{VERSION}/{CWS}"}
    assert client.ApisApi(api).get_api_versions().groups[0].name == GROUP


# ---------------------------------------------------------------------- the workspace's own object


@pytest.fixture
def pair(world):
    """A workspace waiting for two initializers: ``db``'s and ``pair``'s (a type listing db's initializer too)."""
    name = unique("pair")
    world.workspace_type(world.org, name, initializer=True, initializers=[world.initializer])
    cluster = world.workspace(type_name=name)
    assert world.stored(cluster)["status"]["initializers"] == [world.initializer, f"{world.org}:{name}"]
    return cluster, f"{world.org}:{name}"


def test_status_may_only_remove_this_initializer(world, pair):
    cluster, other = pair
    name = own_name(cluster)
    url = f"{world.url(cluster)}/apis/{GROUP}/{VERSION}/{CWS}/{name}"
    current = world.http("GET", url).json()
    assert current["metadata"]["name"] == name and current["status"]["phase"] == "Initializing"

    def refused(method, body, content_type=None, path="/status", code=422) -> str:
        content_type = content_type or ("application/json" if method == "PUT" else "application/merge-patch+json")
        response = world.http(method, url + path, body=body, content_type=content_type)
        assert response.status_code == code, response.text
        return response.json()["message"]

    only = f'only removing the "{world.initializer}" initializer is supported'
    assert only in refused("PATCH", {"status": {"initializers": [world.initializer]}})       # removed the other
    assert only in refused("PATCH", {"status": {"initializers": []}})                         # removed both
    assert only in refused("PATCH", {"status": {"initializers": [other, world.initializer, "x:y"]}})  # added
    assert "status.phase" in refused("PATCH", {"status": {"phase": "Ready"}})
    assert "metadata.labels" in refused("PATCH", {"metadata": {"labels": {"a": "b"}}})
    assert "spec" in refused("PUT", {**current, "spec": {"type": {"name": "other", "path": "root"}}})
    assert "status" in refused("PUT", {k: v for k, v in current.items() if k != "status"})
    assert only in refused("PATCH", [{"op": "remove", "path": "/status/initializers/1"}],
                           content_type="application/json-patch+json")
    for method, path in (("PUT", ""), ("PATCH", ""), ("DELETE", "")):
        assert "may get the ClusterWorkspace" in refused(method, {"metadata": {"labels": {"a": "b"}}}, path=path,
                                                         code=403)
    # the other initializer is still there, ours too
    assert world.stored(cluster)["status"]["initializers"] == [world.initializer, other]
    # JSON patch of our own entry: allowed; it leaves the view, stays Initializing (the other remains)
    done = world.http("PATCH", url + "/status", body=[{"op": "remove", "path": "/status/initializers/0"}],
                      content_type="application/json-patch+json")
    assert done.status_code == 200 and done.json()["status"]["initializers"] == [other], done.text
    assert world.http("GET", url).status_code == 404
    assert world.stored(cluster)["status"]["phase"] == "Initializing"
    # the other type's initializer, through its own URL (the admin), is the last: Ready
    rest = world.http("PATCH", f"{world.url(cluster, other)}/apis/{GROUP}/{VERSION}/{CWS}/{name}/status",
                      token=admin_token(world), body={"status": {"initializers": []}},
                      content_type="application/merge-patch+json")
    assert rest.status_code == 200, rest.text
    world.wait_phase(cluster, "Ready")


def admin_token(world: World) -> str:
    """A bearer token of ``system:masters`` (from the token file), for plain HTTP clients."""
    return "admin-token"


def test_concurrent_status_updates_conflict_and_retry(world, pair):
    """Two initializers remove themselves at once from the same resourceVersion: one wins, the other gets 409 and
    succeeds on retry; neither ever undoes the other."""
    cluster, other = pair
    name = own_name(cluster)
    other_token = world.service_account(world.org, unique("pair-sa"), [other.rpartition(":")[2]])
    base = world.stored(cluster)
    barrier = threading.Barrier(2)
    codes: dict[str, int] = {}

    def remove(initializer: str, token: str):
        body = {**base, "status": {**base["status"],
                                   "initializers": [i for i in base["status"]["initializers"] if i != initializer]}}
        barrier.wait()
        response = world.http("PUT", f"{world.url(cluster, initializer)}/apis/{GROUP}/{VERSION}/{CWS}/{name}/status",
                              token=token, body=body)
        codes[initializer] = response.status_code

    threads = [threading.Thread(target=remove, args=(world.initializer, world.sa_token)),
               threading.Thread(target=remove, args=(other, other_token))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(codes.values()) == [200, 409], codes
    loser = next(i for i, code in codes.items() if code == 409)
    token = world.sa_token if loser == world.initializer else other_token
    url = f"{world.url(cluster, loser)}/apis/{GROUP}/{VERSION}/{CWS}/{name}"
    for _ in range(10):  # as a client does: read again, retry (the workspace controller writes status too)
        current = world.http("GET", url, token=token).json()
        current["status"]["initializers"] = [i for i in current["status"]["initializers"] if i != loser]
        retried = world.http("PUT", url + "/status", token=token, body=current)
        if retried.status_code != 409:
            break
    assert retried.status_code == 200, retried.text
    world.wait_phase(cluster, "Ready")


# ---------------------------------------------------------------------- the content proxy


def test_content_proxy_while_initializing_then_403(world):
    cluster = world.workspace()
    core = client.CoreV1Api(world.api(cluster))
    core.create_namespace({"metadata": {"name": "seeded"}})
    core.create_namespaced_config_map("seeded", {"metadata": {"name": "settings"}, "data": {"a": "b"}})
    assert "configmap/settings" in world.kubectl(cluster, "get", "configmaps", "-n", "seeded", "-o", "name").stdout
    # outside initializerPermissions: the shard's 403
    with pytest.raises(client.ApiException) as denied:
        core.list_namespaced_secret("seeded")
    assert denied.value.status == 403
    # the grant is materialized in the workspace while it initializes ...
    admin = client.RbacAuthorizationV1Api(world.shard.cluster_client(cluster))
    role = admin.read_cluster_role(f"system:kcp:initializer:{world.initializer}")
    assert role.rules[0].resources == ["namespaces", "configmaps"]
    # ... and the workspace content is the workspace's (the admin sees what the initializer made)
    assert client.CoreV1Api(world.shard.cluster_client(cluster)).read_namespaced_config_map(
        "settings", "seeded").data == {"a": "b"}
    release(world, cluster)
    world.wait_phase(cluster, "Ready")
    with pytest.raises(client.ApiException) as after:
        core.list_namespace()
    assert after.value.status == 403 and "cannot access workspace" in after.value.body
    wait_until(lambda: f"system:kcp:initializer:{world.initializer}" not in
               {r.metadata.name for r in admin.list_cluster_role().items})


def test_service_account_needs_the_initialize_grant(world):
    cluster = world.workspace()
    ungranted = world.service_account(world.org, unique("plain"), [])
    for url in (f"{world.url()}/apis/{GROUP}/{VERSION}/{CWS}", f"{world.url()}/apis",
                f"{world.url(cluster)}/api/v1/namespaces",
                f"{world.url(cluster)}/apis/{GROUP}/{VERSION}/{CWS}/{own_name(cluster)}"):
        response = world.http("GET", url, token=ungranted)
        assert response.status_code == 403, (url, response.text)
        assert f'initialize workspacetypes "db" in workspace "{world.org}"' in response.json()["message"]
    # a user of another workspace with a grant there is nobody here
    assert world.http("GET", f"{world.url()}/apis/{GROUP}/{VERSION}/{CWS}", token="stranger-token").status_code == 403
    release(world, cluster)


# ---------------------------------------------------------------------- kcp's two holes, kept closed


def test_no_other_workspace_is_reachable(world):
    """kcp#2308: the view used to read and update any workspace's status. Not Initializing, or not waiting for
    this initializer: 404 for the object, 403 for the content, for the type owner and for the admin alike."""
    ready = world.workspace(type_cluster="root", type_name="universal", phase="Ready")
    evil = world.workspace(world.evil_org)
    for cluster in (ready, evil, "root", world.org):
        obj = f"{world.url(cluster)}/apis/{GROUP}/{VERSION}/{CWS}/{own_name(cluster)}"
        for token in (world.sa_token, admin_token(world)):
            assert world.http("GET", obj, token=token).status_code == 404, cluster
            patched = world.http("PATCH", obj + "/status", token=token, body={"status": {"initializers": []}},
                                 content_type="application/merge-patch+json")
            assert patched.status_code == 404, (cluster, patched.text)
            content = world.http("GET", f"{world.url(cluster)}/api/v1/namespaces", token=token)
            assert content.status_code == 403, (cluster, content.text)
    assert world.stored(evil)["status"]["initializers"] == [world.evil_initializer]
    # another name than the workspace's own, in a workspace that is in the view
    mine = world.workspace()
    assert world.http("GET", f"{world.url(mine)}/apis/{GROUP}/{VERSION}/{CWS}/{own_name(evil)}").status_code == 404
    release(world, mine)


def test_an_initializer_cannot_be_spoofed_by_name(world):
    """kcp#1169: initializers are named with their type's workspace. ``evil`` owns a type ``db`` too; that gives it
    nothing of ``db``'s workspaces here -- not through our URL, not through its own, not by claiming the group."""
    mine = world.workspace()
    ours = f"{world.url()}/apis/{GROUP}/{VERSION}/{CWS}"
    assert world.http("GET", ours, token="evil-token").status_code == 403
    assert world.http("GET", f"{world.url(mine)}/api/v1/namespaces", token="evil-token").status_code == 403
    evil_view = world.url(mine, world.evil_initializer)
    assert world.http("GET", f"{evil_view}/apis/{GROUP}/{VERSION}/{CWS}/{own_name(mine)}",
                      token="evil-token").status_code == 404
    assert world.http("PATCH", f"{evil_view}/apis/{GROUP}/{VERSION}/{CWS}/{own_name(mine)}/status", token="evil-token",
                      body={"status": {"initializers": []}},
                      content_type="application/merge-patch+json").status_code == 404
    assert world.http("GET", f"{evil_view}/api/v1/namespaces", token="evil-token").status_code == 403
    # claiming the group: by impersonation at the shard (denied here already: evil may impersonate nobody in that
    # workspace; tests/unit/test_initializingworkspaces.py shows the group dropped where it may) ...
    group = f"system:kcp:initializer:{world.initializer}"
    impersonated = requests.get(f"{world.shard.url}/clusters/{mine}/api/v1/namespaces", verify=world.shard.ca_file,
                                headers={"Authorization": "Bearer evil-token", "Impersonate-User": "evil",
                                         "Impersonate-Group": group}, timeout=30)
    assert impersonated.status_code == 403, impersonated.text
    # ... or through the requestheader of a trusted front proxy (the shard's proxy certificate)
    pki = world.shard.shard.pki
    asserted = requests.get(f"{world.shard.url}/clusters/{mine}/api/v1/namespaces", verify=world.shard.ca_file,
                            cert=(str(pki.shard_proxy_cert_path), str(pki.shard_proxy_key_path)),
                            headers={"X-Remote-User": "evil", "X-Remote-Group": group}, timeout=30)
    assert asserted.status_code == 403, asserted.text
    assert 'User "evil"' in asserted.json()["message"]
    assert world.stored(mine)["status"]["initializers"] == [world.initializer]
    release(world, mine)


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize("segment", ["nocolon", "root:", ":db", "root:Org:db", "root:org:Bad_Name", "root::db",
                                     "root:org:" + "x" * 64, "root:org:" + "y" * 300])
def test_malformed_initializer_is_400(world, segment):
    for token in (world.sa_token, admin_token(world)):
        response = world.http("GET", f"{world.url(initializer=segment)}/apis/{GROUP}/{VERSION}/{CWS}", token=token)
        assert response.status_code == 400, response.text
        assert "invalid initializer" in response.json()["message"]


def test_unknown_initializer_is_404_for_who_may_initialize_it(world):
    world.grant(world.org, unique("all-types"), [{"apiGroups": [GROUP], "resources": ["workspacetypes"],
                                                   "verbs": ["initialize"]}],
                {"kind": "ServiceAccount", "name": "initializer", "namespace": "default"})
    response = world.http("GET", f"{world.url(initializer=world.org + ':nope')}/apis/{GROUP}/{VERSION}/{CWS}")
    assert response.status_code == 404 and "is unknown" in response.json()["message"], response.text
    # without the grant: 403, which tells nothing about whether the type exists
    assert world.http("GET", f"{world.url(initializer=world.org + ':nope')}/apis", token="evil-token").status_code == 403
    assert world.http("GET", f"{world.url(initializer='root:nowhere:db')}/apis").status_code == 403


def test_a_removed_type_initializes_nothing_until_it_is_back(world):
    name = unique("temp")
    world.workspace_type(world.org, name, initializer=True, initializerPermissions=PERMISSIONS)
    world.grant(world.org, unique("temp"), [{"apiGroups": [GROUP], "resources": ["workspacetypes"],
                                             "verbs": ["initialize"], "resourceNames": [name]}],
                {"kind": "ServiceAccount", "name": "initializer", "namespace": "default"})
    initializer = f"{world.org}:{name}"
    cluster = world.workspace(type_name=name)
    listing = f"{world.url(initializer=initializer)}/apis/{GROUP}/{VERSION}/{CWS}"
    assert own_name(cluster) in {i["metadata"]["name"] for i in world.http("GET", listing).json()["items"]}
    world.objects(world.org).delete_cluster_custom_object(GROUP, VERSION, "workspacetypes", name)
    for method, url, body in (
            ("GET", listing, None),
            ("PATCH", f"{world.url(cluster, initializer)}/apis/{GROUP}/{VERSION}/{CWS}/{own_name(cluster)}/status",
             {"status": {"initializers": []}}),
            ("GET", f"{world.url(cluster, initializer)}/api/v1/namespaces", None)):
        wait_until(lambda: world.http(method, url, body=body,
                                      content_type="application/merge-patch+json").status_code == 404)
        assert "is unknown" in world.http(method, url, body=body, content_type="application/merge-patch+json").text
    assert world.stored(cluster)["status"]["phase"] == "Initializing"
    world.workspace_type(world.org, name, initializer=True)
    wait_until(lambda: world.http("GET", listing).status_code == 200)
    release(world, cluster, initializer)
    world.wait_phase(cluster, "Ready")


def test_bad_bodies_and_verbs(world):
    cluster = world.workspace()
    obj = f"{world.url(cluster)}/apis/{GROUP}/{VERSION}/{CWS}/{own_name(cluster)}"
    assert world.http("PUT", obj + "/status", body=b"{not json").status_code == 400
    assert world.http("PATCH", obj + "/status", body=b"[1, 2]",
                      content_type="application/merge-patch+json").status_code in (400, 422)
    assert world.http("PATCH", obj + "/status", body={"status": {}},
                      content_type="application/apply-patch+yaml").status_code == 415
    big = world.http("PUT", obj + "/status", body=b'{"status": {"x": "' + b"a" * (4 * 1024 * 1024) + b'"}}')
    assert big.status_code == 413, big.status_code
    wildcard = f"{world.url()}/apis/{GROUP}/{VERSION}/{CWS}"
    assert world.http("POST", wildcard, body={"metadata": {"name": "x"}}).status_code == 405
    assert world.http("GET", f"{wildcard}/{own_name(cluster)}").status_code == 405
    assert world.http("GET", f"{obj}/content").status_code == 404
    assert world.stored(cluster)["status"]["initializers"] == [world.initializer]
    release(world, cluster)


# ---------------------------------------------------------------------- the example controller


def test_the_example_controller_initializes_every_new_workspace(world):
    configuration = client.Configuration()
    configuration.host = f"{world.shard.url}/clusters/{world.org}"
    configuration.ssl_ca_cert = world.shard.ca_file
    configuration.api_key = {"authorization": f"Bearer {world.sa_token}"}
    initialized: list[str] = []
    controller = InitializerController(configuration, world.org, "db", workers=4,
                                       on_initialized=lambda url, cluster: initialized.append(cluster)).start()
    try:
        clusters = [world.workspace(phase=None, parent="root" if i % 2 else world.parent) for i in range(6)]
        for cluster in clusters:
            world.wait_phase(cluster, "Ready", timeout=30)
        published = world.objects(world.org).get_cluster_custom_object(GROUP, VERSION, "workspacetypes", "db")
        assert list(controller.workers) == [vw["url"] for vw in published["status"]["virtualWorkspaces"]]
    finally:
        controller.stop()
        controller.join(10)
    for cluster in clusters:
        seeded = client.CoreV1Api(world.shard.cluster_client(cluster)).read_namespaced_config_map(CONFIGMAP, NAMESPACE)
        assert seeded.data == {"initializer": world.initializer, "workspace": cluster}
    assert set(clusters) <= set(initialized)
