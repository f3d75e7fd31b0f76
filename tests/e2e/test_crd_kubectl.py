"""CustomResourceDefinitions per logical cluster, driven by kubectl 1.32: apply, printer columns, client-side
apply, validation, explain, edit, dry-run, diff, status/scale subresources, selectable fields, name conflicts,
deletion, several versions and ``fieldValidation`` on built-ins."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import yaml

GROUP = "example.com"


def crd(plural="widgets", kind="Widget", group=GROUP, versions=None, short_names=("wd",)) -> dict:
    schema = {"type": "object", "properties": {
        "spec": {"type": "object", "description": "The desired widget.", "required": ["size"], "properties": {
            "size": {"type": "integer", "minimum": 1, "maximum": 100, "description": "How big the widget is."},
            "color": {"type": "string", "enum": ["red", "blue", "green"], "default": "red"},
            "parts": {"type": "array", "maxItems": 3, "items": {"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 10, "description": "Name of the part."}}}},
            "template": {"type": "object", "x-kubernetes-embedded-resource": True,
                         "x-kubernetes-preserve-unknown-fields": True},
            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}},
        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}
    version = {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema},
               "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.size",
                                                        "statusReplicasPath": ".status.size"}},
               "selectableFields": [{"jsonPath": ".spec.color"}],
               "additionalPrinterColumns": [
                   {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                   {"name": "Color", "type": "string", "jsonPath": ".spec.color"},
                   {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {"group": group, "scope": "Namespaced",
                     "names": {"plural": plural, "singular": kind.lower(), "kind": kind,
                               "shortNames": list(short_names), "categories": ["all"]},
                     "versions": versions or [version]}}


def widget(name="w1", **spec) -> dict:
    return {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": name},
            "spec": spec or {"size": 1}}


class Cluster:
    """kubectl against one fresh logical cluster of the shared shard (CRDs are per cluster)."""

    def __init__(self, shard):
        self.shard = shard
        self.name = f"root:crd-{uuid.uuid4().hex[:8]}"
        shard.run(shard.shard.registry.ensure_logical_cluster, self.name)
        self.server = f"{shard.url}/clusters/{self.name}"

    def kubectl(self, *args, check=True, input=None):
        return self.shard.kubectl(*args, check=check, input=input, server=self.server)

    def apply(self, obj, *args, check=True):
        return self.kubectl("apply", "-f", "-", *args, check=check, input=json.dumps(obj))

    def raw(self, path: str) -> str:
        """``kubectl get --raw`` takes an absolute path: it ignores the path of ``--server``."""
        return self.kubectl("get", "--raw", f"/clusters/{self.name}{path}").stdout

    def get(self, *args) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def with_crd(self, obj=None) -> "Cluster":
        self.apply(obj or crd())
        return self


@pytest.fixture(scope="module")
def shard(kcp_shard_module):
    return kcp_shard_module


@pytest.fixture
def cluster(shard) -> Cluster:
    return Cluster(shard).with_crd()


def wait_for(fn, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def condition(obj, type_):
    return next((c for c in (obj.get("status") or {}).get("conditions") or () if c["type"] == type_), None)


def test_crd_is_established_and_served_with_printer_columns(cluster):
    cluster.kubectl("wait", "--for=condition=Established", f"crd/widgets.{GROUP}", "--timeout=10s")
    established = condition(cluster.get("crd", f"widgets.{GROUP}"), "Established")
    assert established["status"] == "True" and established["reason"] == "InitialNamesAccepted"
    stored = cluster.get("crd", f"widgets.{GROUP}")
    assert condition(stored, "NamesAccepted")["status"] == "True"
    assert stored["status"]["acceptedNames"]["shortNames"] == ["wd"]
    assert stored["metadata"]["finalizers"] == ["customresourcecleanup.apiextensions.k8s.io"]
    cluster.apply(widget("w1", size=3, color="blue"))
    out = cluster.kubectl("get", "widgets").stdout.splitlines()
    assert out[0].split() == ["NAME", "SIZE", "COLOR", "AGE"]
    assert out[1].split()[:3] == ["w1", "3", "blue"]
    assert cluster.kubectl("get", "wd", "w1", "-o", "name").stdout.strip() == f"widget.{GROUP}/w1"
    assert f"widget.{GROUP}/w1" in cluster.kubectl("get", "all", "-o", "name").stdout   # categories
    resources = cluster.kubectl("api-resources", f"--api-group={GROUP}").stdout.splitlines()
    assert resources[1].split() == ["widgets", "wd", f"{GROUP}/v1", "true", "Widget"]


def test_defaults_and_pruning(cluster):
    cluster.apply(widget("w1", size=2, unknown="x", extra={"free": {"form": 1}}), "--validate=false")
    spec = cluster.get("widget", "w1")["spec"]
    assert spec == {"size": 2, "color": "red", "extra": {"free": {"form": 1}}}


def test_apply_twice_with_a_removed_field(cluster):
    cluster.apply(widget("w1", size=1, color="blue", parts=[{"name": "a"}]))
    cluster.apply(widget("w1", size=1, color="blue"))
    obj = cluster.get("widget", "w1")
    assert obj["spec"] == {"size": 1, "color": "blue"}
    assert "kubectl.kubernetes.io/last-applied-configuration" in obj["metadata"]["annotations"]


def test_invalid_widget_is_422_with_field_paths(cluster):
    result = cluster.kubectl("create", "-f", "-", check=False,
                             input=json.dumps(widget("bad", size=0, color="pink", parts=[{"name": "x" * 11}])))
    assert result.returncode == 1
    err = result.stderr
    assert 'The Widget "bad" is invalid' in err
    assert "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1" in err
    assert 'spec.color: Unsupported value: "pink": supported values: "red", "blue", "green"' in err
    assert "spec.parts[0].name: Too long: may not be more than 10 bytes" in err
    missing = cluster.kubectl("create", "-f", "-", check=False, input=json.dumps(widget("bad", color="red")))
    assert "spec.size: Required value" in missing.stderr


def test_embedded_resource_needs_kind_and_api_version(cluster):
    result = cluster.kubectl("create", "-f", "-", check=False,
                             input=json.dumps(widget("emb", size=1, template={"metadata": {"name": "x"}})))
    assert "spec.template.apiVersion: Required value" in result.stderr
    assert "spec.template.kind: Required value" in result.stderr


def test_unknown_fields_strict_warn_ignore(cluster):
    strict = cluster.kubectl("create", "-f", "-", check=False, input=json.dumps(widget("s", size=1, foo=1, bar=2)))
    assert strict.returncode == 1
    assert 'strict decoding error: unknown field "spec.bar", unknown field "spec.foo"' in strict.stderr
    warned = cluster.kubectl("create", "--validate=warn", "-f", "-", input=json.dumps(widget("s", size=1, foo=1)))
    assert 'Warning: unknown field "spec.foo"' in warned.stderr
    assert "foo" not in cluster.get("widget", "s")["spec"]


def test_builtin_field_validation(cluster):
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "bogus": 1}, "data": {"a": "1"},
          "extra": True}
    strict = cluster.kubectl("create", "-f", "-", check=False, input=json.dumps(cm))
    assert 'strict decoding error: unknown field "extra", unknown field "metadata.bogus"' in strict.stderr
    cluster.kubectl("create", "--validate=false", "-f", "-", input=json.dumps(cm))
    stored = cluster.get("configmap", "cm")
    assert "extra" not in stored and "bogus" not in stored["metadata"]
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {
        "selector": {"matchLabels": {"app": "d"}}, "template": {"metadata": {"labels": {"app": "d"}}, "spec": {
            "containers": [{"name": "c", "image": "nginx", "imagePullPolicy": "Always", "colour": "x"}]}}}}
    strict = cluster.kubectl("apply", "-f", "-", check=False, input=json.dumps(deployment))
    assert 'unknown field "spec.template.spec.containers[0].colour"' in strict.stderr


def test_explain_nested_fields(cluster):
    out = cluster.kubectl("explain", "widgets.spec").stdout
    assert "The desired widget." in out and "size\t<integer> -required-" in out
    assert "How big the widget is." in out
    assert "Name of the part." in cluster.kubectl("explain", "widgets.spec.parts.name").stdout
    template = cluster.kubectl("explain", "deployment.spec.template").stdout
    assert "FIELD: template <PodTemplateSpec>" in template and "spec\t<PodSpec>" in template
    assert "containers\t<[]Container> -required-" in cluster.kubectl("explain", "deployment.spec.template.spec").stdout
    assert "Data contains the configuration data" in cluster.kubectl("explain", "configmap.data").stdout


def test_edit_with_editor_script(cluster, monkeypatch):
    cluster.apply(widget("w1", size=1))
    monkeypatch.setenv("EDITOR", "sed -i s/size:\\ 1/size:\\ 7/")
    out = cluster.kubectl("edit", "widget", "w1").stdout
    assert f"widget.{GROUP}/w1 edited" in out
    assert cluster.get("widget", "w1")["spec"]["size"] == 7


def test_dry_run_and_diff(cluster):
    out = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(widget("dry", size=2))).stdout
    assert "created (server dry run)" in out
    assert cluster.kubectl("get", "widgets", "-o", "name").stdout.strip() == ""
    cluster.apply(widget("w1", size=2))
    same = cluster.kubectl("diff", "-f", "-", check=False, input=json.dumps(widget("w1", size=2)))
    assert same.returncode == 0, same.stderr
    changed = cluster.kubectl("diff", "-f", "-", check=False, input=json.dumps(widget("w1", size=5)))
    assert changed.returncode == 1 and "+  size: 5" in changed.stdout
    assert cluster.get("widget", "w1")["spec"]["size"] == 2


def test_status_subresource_and_generation(cluster):
    cluster.apply({**widget("w1", size=2), "status": {"ignored": True}})
    obj = cluster.get("widget", "w1")
    assert "status" not in obj and obj["metadata"]["generation"] == 1
    cluster.kubectl("patch", "widget", "w1", "--subresource=status", "--type=merge",
                    "-p", json.dumps({"spec": {"size": 9}, "status": {"size": 4}}))
    obj = cluster.get("widget", "w1")
    assert obj["status"] == {"size": 4} and obj["spec"]["size"] == 2 and obj["metadata"]["generation"] == 1
    cluster.kubectl("patch", "widget", "w1", "--type=merge", "-p", json.dumps({"spec": {"size": 3},
                                                                              "status": {"size": 0}}))
    obj = cluster.get("widget", "w1")
    assert obj["status"] == {"size": 4} and obj["spec"]["size"] == 3 and obj["metadata"]["generation"] == 2


def test_scale_subresource(cluster):
    cluster.apply(widget("w1", size=2))
    assert f"widget.{GROUP}/w1 scaled" in cluster.kubectl("scale", "widget", "w1", "--replicas=6").stdout
    assert cluster.get("widget", "w1")["spec"]["size"] == 6


def test_strategic_merge_patch_is_415(cluster):
    cluster.apply(widget("w1", size=2))
    result = cluster.kubectl("patch", "widget", "w1", "-p", '{"spec":{"size":3}}', check=False)
    assert result.returncode == 1
    assert ("the body of the request was in an unknown format - accepted media types include: "
            "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml") in result.stderr
    cluster.kubectl("patch", "widget", "w1", "--type=merge", "-p", '{"spec":{"size":3}}')
    assert cluster.get("widget", "w1")["spec"]["size"] == 3


def test_selectable_fields(cluster):
    for name, color in (("a", "red"), ("b", "blue"), ("c", "blue")):
        cluster.apply(widget(name, size=1, color=color))
    names = cluster.kubectl("get", "widgets", "--field-selector", "spec.color=blue", "-o", "name").stdout.split()
    assert names == [f"widget.{GROUP}/b", f"widget.{GROUP}/c"]
    bad = cluster.kubectl("get", "widgets", "--field-selector", "spec.size=1", check=False)
    assert bad.returncode == 1 and "spec.size" in bad.stderr


def test_name_conflicts_are_reported_and_not_served(shard):
    cluster = Cluster(shard).with_crd()
    gadget = crd(plural="gadgets", kind="Widget", short_names=())
    gadget["spec"]["names"]["singular"] = "gadget"
    cluster.apply(gadget)
    gadgets = wait_for(lambda: condition(cluster.get("crd", f"gadgets.{GROUP}"), "NamesAccepted"))
    assert gadgets["status"] == "False" and gadgets["reason"] == "KindConflict"
    assert gadgets["message"] == '"Widget" is already in use'
    assert condition(cluster.get("crd", f"gadgets.{GROUP}"), "Established")["status"] == "False"
    assert cluster.kubectl("get", "gadgets", check=False).returncode == 1
    cluster.apply(crd(plural="leases", kind="MyLease", group="coordination.k8s.io", short_names=()))
    leases = wait_for(lambda: condition(cluster.get("crd", "leases.coordination.k8s.io"), "NamesAccepted"))
    assert leases["reason"] == "PluralConflict" and leases["status"] == "False"   # a built-in has it
    # The winner goes away: the refused CRD gets its names.
    cluster.kubectl("delete", "crd", f"widgets.{GROUP}")
    accepted = wait_for(lambda: (condition(cluster.get("crd", f"gadgets.{GROUP}"), "NamesAccepted") or {}).get(
        "status") == "True")
    assert accepted
    assert cluster.kubectl("get", "gadgets", "-o", "name").stdout == ""   # refreshes kubectl's discovery cache
    cluster.apply(widget("g1"))   # kind Widget now maps to gadgets
    assert cluster.kubectl("get", "gadgets", "-o", "name").stdout.strip() == f"widget.{GROUP}/g1"


def test_crds_are_per_logical_cluster(shard):
    one, two = Cluster(shard).with_crd(), Cluster(shard)
    one.apply(widget("w1"))
    assert two.kubectl("get", "widgets", check=False).returncode == 1
    two.with_crd()
    assert two.kubectl("get", "widgets", "-o", "name").stdout.strip() == ""
    assert one.kubectl("get", "widgets", "-o", "name").stdout.strip() == f"widget.{GROUP}/w1"


def test_deleting_a_crd_deletes_its_objects(shard):
    cluster = Cluster(shard).with_crd()
    cluster.apply(widget("w1"))
    cluster.kubectl("create", "namespace", "other")
    cluster.kubectl("apply", "-n", "other", "-f", "-", input=json.dumps(widget("w2")))
    cluster.kubectl("delete", "crd", f"widgets.{GROUP}")
    assert wait_for(lambda: not cluster.get("crd")["items"])
    store = shard.shard.store
    assert shard.run(lambda: store.list(f"{GROUP}/widgets", cluster.name)[0]) == []
    cluster.with_crd()
    assert cluster.kubectl("get", "widgets", "-A", "-o", "name").stdout.strip() == ""


def test_several_versions(shard):
    cluster = Cluster(shard)
    v1 = crd()["spec"]["versions"][0]
    beta = {**v1, "name": "v1beta1", "storage": False, "additionalPrinterColumns": [
        {"name": "Beta-Size", "type": "integer", "jsonPath": ".spec.size"}]}
    old = {**v1, "name": "v1alpha1", "served": False, "storage": False}
    cluster.with_crd(crd(versions=[beta, old, v1]))
    cluster.kubectl("create", "-f", "-", input=json.dumps({**widget("w1", size=4), "apiVersion": f"{GROUP}/v1beta1"}))
    assert cluster.get("widget", "w1")["apiVersion"] == f"{GROUP}/v1"          # preferred version
    assert cluster.get(f"widgets.v1beta1.{GROUP}", "w1")["apiVersion"] == f"{GROUP}/v1beta1"
    stored = shard.run(lambda: shard.shard.store.list(f"{GROUP}/widgets", cluster.name)[0])
    assert [o["apiVersion"] for o in stored] == [f"{GROUP}/v1"]                   # storage version
    header = cluster.kubectl("get", f"widgets.v1beta1.{GROUP}").stdout.splitlines()[0].split()
    assert header == ["NAME", "BETA-SIZE"]
    cluster.kubectl("patch", f"widgets.v1beta1.{GROUP}", "w1", "--type=merge", "-p", '{"spec":{"size":5}}')
    assert cluster.get("widget", "w1")["spec"]["size"] == 5
    assert cluster.kubectl("get", f"widgets.v1alpha1.{GROUP}", check=False).returncode == 1
    group = json.loads(cluster.raw(f"/apis/{GROUP}"))
    assert group["preferredVersion"]["version"] == "v1"
    assert [v["version"] for v in group["versions"]] == ["v1", "v1beta1"]


def test_invalid_crd_is_422(shard):
    cluster = Cluster(shard)
    bad = crd()
    bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["loose"] = {
        "description": "no type"}
    bad["spec"]["versions"][0]["storage"] = False
    result = cluster.apply(bad, check=False)
    assert result.returncode == 1
    assert ("spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[loose].type: Required value"
            in result.stderr)
    assert "must have exactly one version marked as storage version" in result.stderr


def test_openapi_follows_crd_changes(shard):
    cluster = Cluster(shard).with_crd()
    root = json.loads(cluster.raw("/openapi/v3"))["paths"]
    before = root[f"apis/{GROUP}/v1"]["serverRelativeURL"]
    changed = crd()
    changed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["weight"] = {
        "type": "number", "description": "Weight in grams."}
    cluster.apply(changed)
    after = json.loads(cluster.raw("/openapi/v3"))["paths"][f"apis/{GROUP}/v1"]
    assert after["serverRelativeURL"] != before
    doc = json.loads(cluster.kubectl("get", "--raw", after["serverRelativeURL"]).stdout)
    schema = doc["components"]["schemas"]["com.example.v1.Widget"]
    assert schema["properties"]["spec"]["properties"]["weight"]["description"] == "Weight in grams."
    assert yaml.safe_load(cluster.kubectl("explain", "widgets.spec.weight").stdout.split("DESCRIPTION:")[1]
                          .strip()) == "Weight in grams."
