"""A new workspace's default content, as clients see it, whether it is stored per workspace or shared (a template on
SQLite, rows on etcd): each object its own uid and resourceVersion, writable, deletable, watchable, kept across a
restart."""

from __future__ import annotations

import json
import time

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from server.testing import start_shard
from tests.e2e.test_workspaces import create_workspace, status_of, unique, wait_workspace

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
