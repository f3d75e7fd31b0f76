"""A new workspace's default content, as clients see it, whether it is stored per workspace or shared (a template on
SQLite, rows on etcd): each object its own uid and resourceVersion, writable, deletable, watchable, kept across a
restart."""

from __future__ import annotations

import json
import time

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from server.apis.tenancy import GROUP, OWNER_ANNOTATION as OWNER, VERSION
from server.controllers.workspaces import OWNER_GRANTS
from server.shard import ShardConfig
from server.testing import etcd_prefix_for, session_etcd, start_shard
from tests.e2e.test_workspaces import create_workspace, status_of, unique, user_client, wait_workspace, workspaces

DEFAULT_ROLES = {"cluster-admin", "admin", "edit", "view", "system:basic-user", "system:discovery",
                 "system:public-info-viewer"}


def content(shard, cluster: str) -> dict:
    """(kind, namespace, name) -> (uid, resourceVersion, creationTimestamp) of the default content."""
    rbac = client.RbacAuthorizationV1Api(shard.cluster_client(cluster))
    core = client.CoreV1Api(shard.cluster_client(cluster))
    out = {}
    for kind, items in (("ClusterRole", rbac.list_cluster_role().items),
                        ("ClusterRoleBinding", rbac.list_cluster_role_binding().items),
                        ("Namespace", core.list_namespace().items),
                        ("ServiceAccount", core.list_service_account_for_all_namespaces().items)):
        for item in items:
            md = item.metadata
            out[(kind, md.namespace or "", md.name)] = (md.uid, md.resource_version, md.creation_timestamp)
    return out


def test_default_content_is_each_workspaces_own_and_survives_writes_and_a_restart(tmp_path):
    first = start_shard(workdir=tmp_path)
    try:
        a, b = unique("a"), unique("b")
        create_workspace(first, a)
        create_workspace(first, b)
        wait_workspace(first, a)
        wait_workspace(first, b)
        seen_a, seen_b = content(first, f"root:{a}"), content(first, f"root:{b}")
        assert {n for k, _, n in seen_a if k == "ClusterRole"} >= DEFAULT_ROLES
        assert ("Namespace", "", "default") in seen_a and ("ServiceAccount", "default", "default") in seen_a
        uids = [uid for uid, _, _ in seen_a.values()] + [uid for uid, _, _ in seen_b.values()]
        assert len(set(uids)) == len(uids), "every object its own uid"
        rvs = [int(rv) for _, rv, _ in seen_a.values()]
        assert len(set(rvs)) == len(rvs), "every object its own resourceVersion"
        rbac = client.RbacAuthorizationV1Api(first.cluster_client(f"root:{a}"))
        core = client.CoreV1Api(first.cluster_client(f"root:{a}"))
        view = rbac.read_cluster_role("view")
        assert view.metadata.annotations["kcp.dev/cluster"] == f"root:{a}"
        raw = first.kubectl("get", "--raw", f"/clusters/root:{a}/api/v1/namespaces/default/serviceaccounts/default").stdout
        assert "managedFields" not in json.loads(raw)["metadata"], "no empty managedFields list: kube omits it"

        # A watch from before the workspace's content existed replays it; a write is a MODIFIED at a new version.
        rv_before = client.RbacAuthorizationV1Api(first.cluster_client("root")).list_cluster_role(
        ).metadata.resource_version
        c = unique("c")
        create_workspace(first, c)
        wait_workspace(first, c)
        events = []
        for event in watch.Watch().stream(client.RbacAuthorizationV1Api(first.cluster_client("*")).list_cluster_role,
                                          resource_version=rv_before, timeout_seconds=2):
            if event["object"].metadata.annotations.get("kcp.dev/cluster") == f"root:{c}":
                events.append((event["type"], event["object"].metadata.name))
        assert {n for t, n in events if t == "ADDED"} >= DEFAULT_ROLES

        # Stale writes conflict; a current one changes only this workspace's copy.
        stale = json.loads(json.dumps(client.ApiClient().sanitize_for_serialization(view)))
        view.metadata.labels = {**(view.metadata.labels or {}), "mine": "yes"}
        updated = rbac.replace_cluster_role("view", view)
        assert updated.metadata.uid == view.metadata.uid
        assert int(updated.metadata.resource_version) > int(view.metadata.resource_version)
        stale["metadata"]["labels"] = {"stale": "yes"}
        assert status_of(lambda: rbac.replace_cluster_role("view", stale)) == 409
        other = client.RbacAuthorizationV1Api(first.cluster_client(f"root:{b}")).read_cluster_role("view")
        assert "mine" not in (other.metadata.labels or {})

        # A deleted default ServiceAccount comes back (the controller), as a new object; a deleted role stays gone.
        old_sa = core.read_namespaced_service_account("default", "default")
        core.delete_namespaced_service_account("default", "default")
        deadline = time.monotonic() + 10
        while True:
            try:
                new_sa = core.read_namespaced_service_account("default", "default")
                break
            except ApiException as exc:
                assert exc.status == 404 and time.monotonic() < deadline
                time.sleep(0.05)
        assert new_sa.metadata.uid != old_sa.metadata.uid
        rbac.delete_cluster_role("edit")
        assert status_of(lambda: rbac.read_cluster_role("edit")) == 404
        assert status_of(lambda: core.delete_namespace("default")) in (403, 405, 422)
        out = first.kubectl("--server", f"{first.url}/clusters/root:{a}", "get", "clusterroles", "-o", "name").stdout
        assert "clusterrole.rbac.authorization.k8s.io/view" in out and "/edit\n" not in out
        after_writes_a, seen_b = content(first, f"root:{a}"), content(first, f"root:{b}")
    finally:
        first.stop()

    second = start_shard(workdir=tmp_path)
    try:
        assert content(second, f"root:{a}") == after_writes_a
        assert content(second, f"root:{b}") == seen_b
        rbac = client.RbacAuthorizationV1Api(second.cluster_client(f"root:{a}"))
        assert rbac.read_cluster_role("view").metadata.labels["mine"] == "yes"
        assert status_of(lambda: rbac.read_cluster_role("edit")) == 404
        # Deleting the workspace deletes its content; a new one of the same name starts afresh.
        client.CustomObjectsApi(second.cluster_client("root")).delete_cluster_custom_object(
            "tenancy.kcp.dev", "v1alpha1", "clusterworkspaces", a)
        wait_workspace(second, a, gone=True)
        create_workspace(second, a)
        wait_workspace(second, a)
        fresh = content(second, f"root:{a}")
        assert ("ClusterRole", "", "edit") in fresh
        assert "mine" not in (rbac.read_cluster_role("view").metadata.labels or {})
        assert not {uid for uid, _, _ in fresh.values()} & {uid for uid, _, _ in after_writes_a.values()}
    finally:
        second.stop()


@pytest.mark.parametrize("backend", ["sqlite", "etcd"])
def test_owner_grants_in_the_parent_are_each_workspaces_own(tmp_path, backend):
    """The owner's ClusterRole and ClusterRoleBinding ``workspace-owner:<name>`` in the parent (one named template
    instance per workspace on SQLite, two rows on etcd): distinct objects, they grant what they say, a tenant may edit
    or delete one, a watch replays them, a restart keeps everything and deleting the workspace removes them."""
    config = ShardConfig(storage=str(tmp_path / "kcp.db")) if backend == "sqlite" else ShardConfig(  # also in CI's
        etcd_servers=session_etcd().servers, etcd_prefix=etcd_prefix_for(tmp_path))                 # etcd pass
    first = start_shard(config, workdir=tmp_path)
    a, b = unique("a"), unique("b")
    grant_a, grant_b = f"workspace-owner:{a}", f"workspace-owner:{b}"
    try:
        rbac = client.RbacAuthorizationV1Api(first.cluster_client("root"))
        rv_before = rbac.list_cluster_role_binding().metadata.resource_version
        for name, owner in ((a, "carol"), (b, 'dave "d" \\ x')):
            workspaces(first).create_cluster_custom_object(GROUP, VERSION, "clusterworkspaces", {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterWorkspace",
                "metadata": {"name": name, "annotations": {OWNER: json.dumps({"username": owner, "groups": []})}}})
        wait_workspace(first, a)
        wait_workspace(first, b)
        role_a, role_b = rbac.read_cluster_role(grant_a), rbac.read_cluster_role(grant_b)
        binding_a, binding_b = rbac.read_cluster_role_binding(grant_a), rbac.read_cluster_role_binding(grant_b)
        assert [r.resource_names for r in role_a.rules] == [[a], [a]] and role_b.rules[0].resource_names == [b]
        assert binding_a.role_ref.name == grant_a and [s.name for s in binding_a.subjects] == ["carol"]
        assert [s.name for s in binding_b.subjects] == ['dave "d" \\ x']
        objects = (role_a, role_b, binding_a, binding_b)
        assert len({o.metadata.uid for o in objects}) == 4
        assert len({o.metadata.resource_version for o in objects}) == 4
        assert all(o.metadata.annotations["kcp.dev/cluster"] == "root" for o in objects)
        assert role_a.metadata.managed_fields and role_a.metadata.creation_timestamp
        assert first.run(first.shard.registry.store.has_instance, "root", OWNER_GRANTS, a) == (backend == "sqlite")

        # They grant: carol may get her workspace and enter it, not b's.
        carol = client.CustomObjectsApi(user_client(first, f"{first.url}/clusters/root", "carol"))
        assert carol.get_cluster_custom_object(GROUP, VERSION, "clusterworkspaces", a)["metadata"]["name"] == a
        assert status_of(lambda: carol.get_cluster_custom_object(GROUP, VERSION, "clusterworkspaces", b)) == 403

        # A watch from before them replays both, each as its own object.
        events = {}
        for event in watch.Watch().stream(rbac.list_cluster_role_binding, resource_version=rv_before,
                                          timeout_seconds=2):
            events[event["object"].metadata.name] = (event["type"], event["object"].metadata.uid)
        assert events[grant_a] == ("ADDED", binding_a.metadata.uid)
        assert events[grant_b] == ("ADDED", binding_b.metadata.uid)

        # A tenant's edits (kubectl) are its own copy: a label, an owner changed by hand, a deleted binding.
        first.kubectl("--server", f"{first.url}/clusters/root", "label", "clusterrole", grant_a, "mine=yes")
        binding_a.subjects[0].name = "erin"
        rbac.replace_cluster_role_binding(grant_a, binding_a)
        first.kubectl("--server", f"{first.url}/clusters/root", "delete", "clusterrolebinding", grant_b)
        assert status_of(lambda: rbac.read_cluster_role_binding(grant_b)) == 404
        assert rbac.read_cluster_role(grant_b).metadata.labels is None
        erin = client.CustomObjectsApi(user_client(first, f"{first.url}/clusters/root", "erin"))
        assert erin.get_cluster_custom_object(GROUP, VERSION, "clusterworkspaces", a)["metadata"]["name"] == a
        assert status_of(lambda: carol.get_cluster_custom_object(GROUP, VERSION, "clusterworkspaces", a)) == 403
        out = first.kubectl("--server", f"{first.url}/clusters/root", "get", "clusterrolebindings", "-o", "name").stdout
        assert f"/{grant_a}\n" in out and f"/{grant_b}\n" not in out
        kept = {n: (o.metadata.uid, o.metadata.resource_version, o.metadata.labels)
                for n, o in ((grant_a, rbac.read_cluster_role(grant_a)), (grant_b, rbac.read_cluster_role(grant_b)))}
    finally:
        first.stop()

    second = start_shard(config, workdir=tmp_path)
    try:
        rbac = client.RbacAuthorizationV1Api(second.cluster_client("root"))
        assert {n: (o.metadata.uid, o.metadata.resource_version, o.metadata.labels)
                for n, o in ((grant_a, rbac.read_cluster_role(grant_a)),
                             (grant_b, rbac.read_cluster_role(grant_b)))} == kept
        assert [s.name for s in rbac.read_cluster_role_binding(grant_a).subjects] == ["erin"]
        assert status_of(lambda: rbac.read_cluster_role_binding(grant_b)) == 404
        # Deleting a workspace removes its grants, edited or not; a new one of that name gets new ones.
        for name in (a, b):
            workspaces(second).delete_cluster_custom_object(GROUP, VERSION, "clusterworkspaces", name)
            wait_workspace(second, name, gone=True)
        for grant in (grant_a, grant_b):
            assert status_of(lambda: rbac.read_cluster_role(grant)) == 404
            assert status_of(lambda: rbac.read_cluster_role_binding(grant)) == 404
        create_workspace(second, a)
        wait_workspace(second, a)
        fresh = rbac.read_cluster_role(grant_a)
        assert fresh.metadata.uid != kept[grant_a][0] and fresh.metadata.labels is None
        assert [s.name for s in rbac.read_cluster_role_binding(grant_a).subjects] == ["kcp-admin"]
    finally:
        second.stop()
