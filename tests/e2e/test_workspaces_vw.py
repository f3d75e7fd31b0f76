"""The ``workspaces`` virtual workspace through real clients, in every topology (embedded, external, forwarded).

Users come from the shard's static token file; the admin (``system:masters``) arranges orgs,
workspaces and RBAC directly on the shard. Every test works in an org of its own, so the tests of
one topology share a shard without seeing each other's objects.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest
import urllib3
import yaml
from kubernetes import client

from server.shard import ShardConfig
from tests.topologies import TOPOLOGIES, running_topology

GROUP, VERSION = "tenancy.kcp.dev", "v1beta1"
RBAC = "rbac.authorization.k8s.io"
OWNER_ANNOTATION = "experimental.tenancy.kcp.dev/owner"
MEMBERS = "org-members"
USERS = {  # name -> groups (every one also gets system:authenticated)
    "alice": ("team-a", MEMBERS),
    "bob": (MEMBERS,),
    "carol": ("ops", MEMBERS),
    "dave": (MEMBERS,),
    "eve": ("outsiders",),
}
HISTORY = 400  # watch events the shard remembers per resource


def token(user: str) -> str:
    return f"token-{user}"


def write_token_file(directory: Path) -> str:
    path = directory / "tokens.csv"
    path.write_text("".join(f'{token(u)},{u},{u}-uid,"{",".join(g)}"\n' for u, g in USERS.items()))
    return str(path)


class Env:
    """One topology: where the virtual workspace is, and the admin's hands on the shard behind it."""

    def __init__(self, vw, shard):
        self.vw = vw
        self.shard = shard
        self.http = urllib3.PoolManager(ca_certs=shard.ca_file, cert_reqs="CERT_REQUIRED", retries=False,
                                        timeout=urllib3.Timeout(connect=5, read=30))
        self.admin_token = None

    # -- the admin, directly on the shard

    def custom(self, cluster: str) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.shard.cluster_client(cluster))

    def rbac(self, cluster: str) -> client.RbacAuthorizationV1Api:
        return client.RbacAuthorizationV1Api(self.shard.cluster_client(cluster))

    def create_cluster_workspace(self, cluster: str, name: str, owner: str | None = None,
                                 labels: dict | None = None) -> dict:
        meta: dict = {"name": name, "labels": labels or {}}
        if owner:
            meta["annotations"] = {OWNER_ANNOTATION: json.dumps({"username": owner, "uid": f"{owner}-uid",
                                                                 "groups": list(USERS.get(owner, ()))})}
        return self.custom(cluster).create_cluster_custom_object(GROUP, "v1alpha1", "clusterworkspaces",
                                                                 {"metadata": meta})

    def delete_cluster_workspace(self, cluster: str, name: str) -> None:
        for _ in range(8):  # the lifecycle controller may be writing it at the same time: 409, try again
            try:
                self.custom(cluster).delete_cluster_custom_object(GROUP, "v1alpha1", "clusterworkspaces", name)
                return
            except client.ApiException as exc:
                if exc.status != 409:
                    raise
                time.sleep(0.05)
        raise AssertionError(f"could not delete {cluster}:{name}")

    def grant(self, cluster: str, name: str, subjects: list[tuple[str, str]], *, names: list[str] | None = None,
              verbs: tuple[str, ...] = ("access",), resource: str = "clusterworkspaces/content") -> None:
        """ClusterRole + ClusterRoleBinding ``name`` in ``cluster``; ``names`` None grants on every name."""
        rule: dict = {"apiGroups": [GROUP], "resources": [resource], "verbs": list(verbs)}
        if names is not None:
            rule["resourceNames"] = names
        api = self.rbac(cluster)
        api.create_cluster_role({"metadata": {"name": name}, "rules": [rule]})
        api.create_cluster_role_binding({
            "metadata": {"name": name}, "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": kind, "name": subject, **({"apiGroup": RBAC} if kind != "ServiceAccount" else {})}
                         for kind, subject in subjects]})

    def new_org(self, prefix: str = "org", members: str = MEMBERS) -> str:
        """A fresh org under root (a ClusterWorkspace, Ready) that members of ``members`` may enter."""
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.create_cluster_workspace("root", name)
        self.grant("root", f"enter-{name}", [("Group", members)], names=[name])
        org = f"root:{name}"
        wait_for(lambda: self.phase("root", name) == "Ready", f"{org} to be Ready")
        return org

    def phase(self, cluster: str, name: str) -> str | None:
        obj = self.custom(cluster).get_cluster_custom_object(GROUP, "v1alpha1", "clusterworkspaces", name)
        return (obj.get("status") or {}).get("phase")

    # -- the users, through the virtual workspace

    def path(self, org: str, scope: str = "all", name: str = "", **query) -> str:
        path = f"workspaces/{org}/{scope}/apis/{GROUP}/{VERSION}/workspaces" + (f"/{name}" if name else "")
        if query:
            path += "?" + "&".join(f"{k}={v}" for k, v in query.items())
        return path

    def headers(self, user: str | None) -> dict:
        if user is None:  # the admin: a system:masters token through the same clients
            return {"Authorization": f"Bearer {self.admin_token}"}
        return {"Authorization": f"Bearer {token(user)}"}

    def call(self, method: str, user: str | None, path: str, body=None, accept: str = "application/json"):
        response = self.http.request(method, self.vw.url(path), body=orjson.dumps(body) if body is not None else None,
                                     headers={**self.headers(user), "Accept": accept,
                                              "Content-Type": "application/json"})
        return response.status, (orjson.loads(response.data) if response.data else None)

    def names(self, user: str | None, org: str, scope: str = "all") -> set[str]:
        status, body = self.call("GET", user, self.path(org, scope))
        assert status == 200, body
        return {item["metadata"]["name"] for item in body["items"]}

    def watch(self, user: str | None, org: str, scope: str = "all", **query) -> "EventStream":
        return EventStream(self, user, self.path(org, scope, watch="true", **query))

    def user_kubeconfig(self, user: str, org: str, scope: str = "all") -> str:
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "ws",
                  "clusters": [{"name": "ws", "cluster": {"server": self.vw.url(f"workspaces/{org}/{scope}"),
                                                          "certificate-authority": self.shard.ca_file}}],
                  "users": [{"name": user, "user": {"token": token(user)}}],
                  "contexts": [{"name": "ws", "context": {"cluster": "ws", "user": user}}]}
        path = self.vw.workdir / f"{user}-{org}-{scope}.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        return str(path)


class EventStream:
    """A watch read by a thread into a queue: ``next()`` waits for the next event (bookmarks skipped)."""

    def __init__(self, env: Env, user: str | None, path: str):
        self.http = urllib3.PoolManager(ca_certs=env.shard.ca_file, cert_reqs="CERT_REQUIRED", retries=False)
        self.response = self.http.request("GET", env.vw.url(path), headers=env.headers(user), preload_content=False,
                                          timeout=urllib3.Timeout(connect=5, read=60))
        self.status = self.response.status
        self.events: queue.Queue = queue.Queue()
        if self.status == 200:
            threading.Thread(target=self._read, daemon=True).start()
        else:
            self.body = orjson.loads(self.response.read())

    def _read(self):
        buffer = b""
        try:
            for chunk in self.response.stream(1024):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        self.events.put(orjson.loads(line))
        except Exception:  # noqa: BLE001 - closed by the test
            pass
        finally:
            self.events.put(None)

    def next(self, timeout: float = 5.0, bookmarks: bool = False) -> dict | None:
        deadline = time.monotonic() + timeout
        while True:
            event = self.events.get(timeout=max(deadline - time.monotonic(), 0.01))
            if event is None or bookmarks or event["type"] != "BOOKMARK":
                return event

    def expect(self, event_type: str, name: str, timeout: float = 5.0) -> dict:
        """The next event, which must be ``event_type`` of ``name`` (MODIFIED events of others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.next(max(deadline - time.monotonic(), 0.01))
            assert event is not None, f"the watch ended before {event_type} {name}"
            meta = event["object"].get("metadata") or {}
            if event["type"] == "MODIFIED" and (event_type != "MODIFIED" or meta.get("name") != name):
                continue
            assert (event["type"], meta.get("name")) == (event_type, name), event
            return event

    def quiet(self, seconds: float = 0.5) -> list[dict]:
        """Object events within ``seconds`` (none expected, usually)."""
        found = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                event = self.next(max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if event is not None and event["type"] != "MODIFIED":
                found.append(event)
        return found

    def close(self):
        try:
            self.response.shutdown()  # unblocks the reading thread
        except (RuntimeError, ValueError):
            pass  # the watch ended already
        self.response.close()
        self.http.clear()


def wait_for(predicate, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - not there yet
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module", params=TOPOLOGIES)
def env(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp("workspaces-vw")
    tokens = write_token_file(directory)
    admin = "token-admin"
    Path(tokens).write_text(Path(tokens).read_text() + f'{admin},kcp-admin,admin-uid,"system:masters"\n')
    config = ShardConfig(token_auth_file=tokens, bookmark_interval=1.0, watch_history_events=HISTORY)
    with running_topology(request.param, config) as (vw, shard, _):
        e = Env(vw, shard)
        e.admin_token = admin
        yield e


# ---------------------------------------------------------------------- who sees what

def test_visibility_matrix(env):
    """Owner, access through a group, access on every name, nothing, system:masters; personal vs all."""
    org = env.new_org()
    env.create_cluster_workspace(org, "owned", owner="alice")
    env.create_cluster_workspace(org, "shared")
    env.create_cluster_workspace(org, "third")
    env.grant(org, "team-a-shared", [("Group", "team-a")], names=["shared"])
    env.grant(org, "ops-everything", [("Group", "ops")], names=None, verbs=("admin",))
    env.grant(org, "dave-get-only", [("User", "dave")], names=None, verbs=("get", "list"),
              resource="clusterworkspaces")  # not content: sees nothing
    wait_for(lambda: env.names("alice", org) == {"owned", "shared"}, "the owner grant of alice")
    assert env.names("bob", org) == set()
    assert env.names("carol", org) == {"owned", "shared", "third"}
    assert env.names("dave", org) == set()
    assert env.names(None, org) == {"owned", "shared", "third"}
    assert env.names("alice", org, "personal") == {"owned"}
    assert env.names("carol", org, "personal") == set()
    # get: visible -> 200; invisible and missing are both the same 404
    status, body = env.call("GET", "alice", env.path(org, name="shared"))
    assert status == 200 and body["kind"] == "Workspace" and body["apiVersion"] == f"{GROUP}/{VERSION}"
    assert body["spec"]["type"]["name"] == "universal" and body["status"]["URL"].endswith(f"/clusters/{org}:shared")
    assert body["status"]["phase"] in ("Scheduling", "Initializing", "Ready") and "managedFields" not in body["metadata"]
    for name in ("third", "no-such-workspace"):
        status, body = env.call("GET", "alice", env.path(org, name=name))
        assert status == 404 and body["message"] == f'workspaces.{GROUP} "{name}" not found', body
    status, _ = env.call("GET", "alice", env.path(org, "personal", name="shared"))
    assert status == 404
    # someone who may not enter the org at all
    status, body = env.call("GET", "eve", env.path(org))
    assert status == 403 and body["reason"] == "Forbidden" and f'workspace "{org}"' in body["message"]
    status, _ = env.call("GET", "eve", env.path(org, name="shared"))
    assert status == 403


def test_one_org_sees_nothing_of_another(env):
    mine = env.new_org("mine")
    theirs = env.new_org("theirs", members="outsiders")
    env.create_cluster_workspace(mine, "same-name")
    env.create_cluster_workspace(theirs, "same-name")
    env.create_cluster_workspace(theirs, "secret")
    env.grant(mine, "all-mine", [("Group", MEMBERS)], names=None)
    env.grant(theirs, "all-theirs", [("Group", "outsiders")], names=None)
    assert env.names("alice", mine) == {"same-name"}
    assert env.names("eve", theirs) == {"same-name", "secret"}
    for user, org in (("alice", theirs), ("eve", mine)):
        for path in (env.path(org), env.path(org, name="same-name"), env.path(org, watch="true")):
            status, body = env.call("GET", user, path)
            assert status == 403, (user, path, body)


def test_root_lists_what_the_caller_may_enter(env):
    """In ``root`` (no parent) every user may list; the orgs shown are those it was let into."""
    org = env.new_org("rooted")
    name = org.split(":")[1]
    assert name in env.names("bob", "root")
    assert name not in env.names("eve", "root")


# ---------------------------------------------------------------------- watches follow RBAC

def test_watch_follows_bindings_and_workspaces_within_a_second(env):
    org = env.new_org()
    env.create_cluster_workspace(org, "w1")
    env.create_cluster_workspace(org, "w2")
    stream = env.watch("alice", org, allowWatchBookmarks="true")
    try:
        assert stream.status == 200
        assert stream.quiet(0.3) == []
        rbac = env.rbac(org)
        # a binding created: ADDED
        env.grant(org, "see-w1", [("Group", "team-a")], names=["w1"])
        started = time.monotonic()
        assert stream.expect("ADDED", "w1", timeout=1.0)["object"]["kind"] == "Workspace"
        assert time.monotonic() - started < 1.0
        # a role changed: w2 joins
        rbac.patch_cluster_role("see-w1", {"rules": [{"apiGroups": [GROUP], "resources": ["clusterworkspaces/content"],
                                                      "resourceNames": ["w1", "w2"], "verbs": ["access"]}]})
        stream.expect("ADDED", "w2", timeout=1.0)
        # the binding changed to name someone else: both leave
        rbac.patch_cluster_role_binding("see-w1", {"subjects": [{"kind": "User", "name": "bob", "apiGroup": RBAC}]})
        left = {stream.expect("DELETED", name, timeout=1.0)["object"]["metadata"]["name"] for name in ("w1", "w2")}
        assert left == {"w1", "w2"}
        # a binding on every name (a new binding of an existing role), then revoked while the watch is open
        rbac.create_cluster_role_binding({"metadata": {"name": "alice-all"},
                                          "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "see-all"},
                                          "subjects": [{"kind": "User", "name": "alice", "apiGroup": RBAC}]})
        assert stream.quiet(0.3) == []  # bound to a role that does not exist yet
        rbac.create_cluster_role({"metadata": {"name": "see-all"}, "rules": [
            {"apiGroups": ["*"], "resources": ["*/content"], "verbs": ["access"]}]})
        assert {stream.expect("ADDED", n, 1.0)["object"]["metadata"]["name"] for n in ("w1", "w2")} == {"w1", "w2"}
        # workspaces created and deleted
        env.create_cluster_workspace(org, "w3")
        stream.expect("ADDED", "w3", timeout=1.0)
        env.delete_cluster_workspace(org, "w3")
        stream.expect("DELETED", "w3", timeout=3.0)  # after the controller's finalizer
        started = time.monotonic()
        rbac.delete_cluster_role_binding("alice-all")
        for name in ("w1", "w2"):
            stream.expect("DELETED", name, timeout=1.0)
        assert time.monotonic() - started < 1.0
        # losing the org itself empties the view
        rbac.create_cluster_role_binding({"metadata": {"name": "alice-all-again"},
                                          "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "see-all"},
                                          "subjects": [{"kind": "User", "name": "alice", "apiGroup": RBAC}]})
        stream.expect("ADDED", "w1", 1.0), stream.expect("ADDED", "w2", 1.0)
        env.rbac("root").delete_cluster_role_binding(f"enter-{org.split(':')[1]}")
        assert {stream.expect("DELETED", n, 1.0)["object"]["metadata"]["name"] for n in ("w1", "w2")} == {"w1", "w2"}
    finally:
        stream.close()


def test_personal_watch_shows_only_owned(env):
    org = env.new_org()
    env.grant(org, "carol-all", [("User", "carol")], names=None)
    stream = env.watch("carol", org, "personal")
    try:
        env.create_cluster_workspace(org, "not-hers")
        env.create_cluster_workspace(org, "hers", owner="carol")
        stream.expect("ADDED", "hers", timeout=2.0)
        assert all(e["object"]["metadata"]["name"] == "hers" for e in stream.quiet(0.3))
    finally:
        stream.close()


def test_list_then_watch_from_its_resource_version(env):
    """An informer's list+watch: nothing between the two is lost; bookmarks carry a version to resume from."""
    org = env.new_org()
    env.grant(org, "members-all", [("Group", MEMBERS)], names=None)
    env.create_cluster_workspace(org, "before")
    status, listed = env.call("GET", "bob", env.path(org))
    rv = listed["metadata"]["resourceVersion"]
    assert status == 200 and [i["metadata"]["name"] for i in listed["items"]] == ["before"]
    env.create_cluster_workspace(org, "between")
    stream = env.watch("bob", org, resourceVersion=rv, allowWatchBookmarks="true")
    try:
        event = stream.expect("ADDED", "between")
        assert int(event["object"]["metadata"]["resourceVersion"]) > int(rv)
        bookmark = stream.next(timeout=3.0, bookmarks=True)
        while bookmark["type"] != "BOOKMARK":
            bookmark = stream.next(timeout=3.0, bookmarks=True)
        assert bookmark["object"]["kind"] == "Workspace"
        assert int(bookmark["object"]["metadata"]["resourceVersion"]) >= int(event["object"]["metadata"]["resourceVersion"])
    finally:
        stream.close()
    # resuming from the bookmark replays nothing old
    resumed = env.watch("bob", org, resourceVersion=bookmark["object"]["metadata"]["resourceVersion"])
    try:
        assert [e for e in resumed.quiet(0.5) if e["type"] == "ADDED"] == []
        env.create_cluster_workspace(org, "after")
        resumed.expect("ADDED", "after")
    finally:
        resumed.close()


def test_resume_across_a_permission_change_is_410(env):
    """A client resuming from before its permissions changed cannot be told what changed: 410, so it relists."""
    org = env.new_org()
    env.create_cluster_workspace(org, "w")
    wait_for(lambda: env.phase(org, "w") == "Ready", "the workspace to be Ready")
    status, listed = env.call("GET", "bob", env.path(org))
    assert status == 200 and listed["items"] == []
    env.grant(org, "bob-w", [("User", "bob")], names=["w"])
    stream = env.watch("bob", org, resourceVersion=listed["metadata"]["resourceVersion"])
    try:
        event = stream.next(timeout=5.0)
        assert event["type"] == "ERROR" and event["object"]["code"] == 410, event
    finally:
        stream.close()
    assert env.names("bob", org) == {"w"}  # the relist is right


def test_send_initial_events_and_selectors(env):
    org = env.new_org()
    env.grant(org, "members-all", [("Group", MEMBERS)], names=None)
    env.create_cluster_workspace(org, "blue", labels={"color": "blue"})
    env.create_cluster_workspace(org, "red", labels={"color": "red"})
    status, body = env.call("GET", "dave", env.path(org, labelSelector="color=blue"))
    assert status == 200 and [i["metadata"]["name"] for i in body["items"]] == ["blue"]
    status, body = env.call("GET", "dave", env.path(org, fieldSelector="metadata.name=red"))
    assert status == 200 and [i["metadata"]["name"] for i in body["items"]] == ["red"]
    status, body = env.call("GET", "dave", env.path(org, labelSelector="color%20in%20(", limit=1))
    assert status == 400, body
    stream = env.watch("dave", org, sendInitialEvents="true", resourceVersionMatch="NotOlderThan",
                       allowWatchBookmarks="true", labelSelector="color=blue")
    try:
        labels = stream.expect("ADDED", "blue")["object"]["metadata"]["labels"]
        assert labels.pop("internal.kcp.dev/phase") in ("Scheduling", "Ready")  # the shard's phase label, too
        assert labels == {"color": "blue"}
        end = stream.next(bookmarks=True)
        assert end["type"] == "BOOKMARK"
        assert end["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
        env.custom(org).patch_cluster_custom_object(GROUP, "v1alpha1", "clusterworkspaces", "red",
                                                    {"metadata": {"labels": {"color": "blue"}}})
        stream.expect("ADDED", "red")
        env.custom(org).patch_cluster_custom_object(GROUP, "v1alpha1", "clusterworkspaces", "blue",
                                                    {"metadata": {"labels": {"color": "green"}}})
        stream.expect("DELETED", "blue")
    finally:
        stream.close()


def test_pages(env):
    org = env.new_org()
    for name in ("a1", "a2", "a3", "b1", "b2"):
        env.create_cluster_workspace(org, name)
    env.grant(org, "bob-some", [("User", "bob")], names=["a1", "a3", "b1", "b2"])
    status, first = env.call("GET", "bob", env.path(org, limit=3))
    assert status == 200 and [i["metadata"]["name"] for i in first["items"]] == ["a1", "a3", "b1"]
    assert first["metadata"]["remainingItemCount"] == 1
    status, second = env.call("GET", "bob", env.path(org, limit=3, **{"continue": first["metadata"]["continue"]}))
    assert status == 200 and [i["metadata"]["name"] for i in second["items"]] == ["b2"]
    assert "continue" not in second["metadata"]


# ---------------------------------------------------------------------- writes

def workspace(name: str, type_name: str | None = None) -> dict:
    body: dict = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Workspace", "metadata": {"name": name}, "spec": {}}
    if type_name:
        body["spec"]["type"] = {"name": type_name}
    return body


def test_create_and_delete(env):
    org = env.new_org()
    env.grant(org, "alice-creates", [("User", "alice")], names=None, verbs=("create",), resource="clusterworkspaces")
    env.grant(org, "dave-sees-all", [("User", "dave")], names=None)
    status, body = env.call("POST", "bob", env.path(org), workspace("bobs"))
    assert status == 403 and body["reason"] == "Forbidden", body
    status, body = env.call("POST", "alice", env.path(org), workspace("Not_A_Name"))
    assert status == 422 and body["details"]["causes"][0]["field"] == "metadata.name", body
    status, body = env.call("POST", "alice", env.path(org), workspace("typed", "no-such-type"))
    assert status == 422 and body["details"]["kind"] == "Workspace", body
    status, body = env.call("POST", "alice", env.path(org), {**workspace("wrong"), "kind": "ConfigMap"})
    assert status == 400, body
    status, body = env.call("POST", "alice", env.path(org) + "?dryRun=All", workspace("dry"))
    assert status == 201 and body["metadata"]["name"] == "dry"
    status, body = env.call("POST", "alice", env.path(org), workspace("mine"))
    assert status == 201 and body["kind"] == "Workspace" and body["metadata"]["name"] == "mine", body
    owner = json.loads(env.custom(org).get_cluster_custom_object(GROUP, "v1alpha1", "clusterworkspaces", "mine")
                       ["metadata"]["annotations"][OWNER_ANNOTATION])
    assert owner["username"] == "alice" and MEMBERS in owner["groups"]
    wait_for(lambda: env.names("alice", org, "personal") == {"mine"}, "alice's owner grant")
    assert "dry" not in env.names(None, org)
    status, body = env.call("POST", "alice", env.path(org), workspace("mine"))
    assert status == 409 and body["reason"] == "AlreadyExists", body
    # delete: invisible is 404, visible without the right is 403, the owner may
    status, _ = env.call("DELETE", "bob", env.path(org, name="mine"))
    assert status == 404
    status, body = env.call("DELETE", "dave", env.path(org, name="mine"))
    assert status == 403 and body["reason"] == "Forbidden", body
    status, body = env.call("DELETE", "alice", env.path(org, name="mine"))
    assert status == 200, body
    wait_for(lambda: "mine" not in env.names(None, org), "the workspace to be deleted")


def test_unsupported_verbs_and_other_resources(env):
    org = env.new_org()
    env.create_cluster_workspace(org, "x", owner="alice")
    wait_for(lambda: env.names("alice", org) == {"x"}, "the owner grant")
    status, _ = env.call("PUT", "alice", env.path(org, name="x"), workspace("x"))
    assert status == 405
    status, _ = env.call("GET", "alice", f"workspaces/{org}/all/api/v1/configmaps")
    assert status in (403, 404)
    status, _ = env.call("GET", "alice", f"workspaces/{org}/mine/apis/{GROUP}/{VERSION}/workspaces")
    assert status == 404  # not a scope


# ---------------------------------------------------------------------- discovery, OpenAPI, kubectl

def test_discovery_and_openapi(env):
    org = env.new_org()
    status, body = env.call("GET", "bob", f"workspaces/{org}/all/apis/{GROUP}/{VERSION}")
    assert status == 200
    (resource,) = body["resources"]
    assert resource["name"] == "workspaces" and resource["kind"] == "Workspace" and not resource["namespaced"]
    assert set(resource["verbs"]) == {"get", "list", "watch", "create", "delete", "patch"}
    status, root = env.call("GET", "bob", f"workspaces/{org}/all/openapi/v3")
    assert status == 200
    (path,) = [p for p in root["paths"] if p.endswith(f"apis/{GROUP}/{VERSION}")]
    status, document = env.call("GET", "bob", f"workspaces/{org}/all/openapi/v3/apis/{GROUP}/{VERSION}")
    assert status == 200 and any(k.endswith(".v1beta1.Workspace") for k in document["components"]["schemas"])


def test_kubectl(env):
    org = env.new_org()
    env.grant(org, "alice-creates", [("User", "alice")], names=None, verbs=("create",), resource="clusterworkspaces")
    env.create_cluster_workspace(org, "hidden")
    kubeconfig = env.user_kubeconfig("alice", org)
    manifest = yaml.safe_dump(workspace("from-kubectl"))

    home = env.vw.workdir / "kubectl-home"

    def command(*args):
        return ["kubectl", f"--cache-dir={home / 'cache'}", f"--kubeconfig={kubeconfig}", *args]

    def kubectl(*args, check=True, input=None):
        return subprocess.run(command(*args), env=env.vw.kubectl_env(), input=input, capture_output=True, text=True,
                              check=check, timeout=60)

    assert "created" in kubectl("create", "-f", "-", input=manifest).stdout
    wait_for(lambda: "from-kubectl" in kubectl("get", "workspaces").stdout, "the owner grant")
    lines = kubectl("get", "workspaces").stdout.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "PHASE", "URL", "AGE"]
    assert [line.split()[0] for line in lines[1:]] == ["from-kubectl"]
    assert lines[1].split()[1] == "universal" and lines[1].split()[3].endswith(f"/clusters/{org}:from-kubectl")
    shown = yaml.safe_load(kubectl("get", "workspace", "from-kubectl", "-o", "yaml").stdout)
    assert shown["kind"] == "Workspace" and shown["metadata"]["name"] == "from-kubectl"
    assert "NotFound" in kubectl("get", "workspace", "hidden", check=False).stderr
    # labels: a patch, which needs patch on the ClusterWorkspace (owners have get and delete)
    assert "Forbidden" in kubectl("label", "workspace", "from-kubectl", "tier=gold", check=False).stderr
    env.grant(org, "alice-patches", [("User", "alice")], names=None, verbs=("patch",), resource="clusterworkspaces")
    assert "labeled" in kubectl("label", "workspace", "from-kubectl", "tier=gold").stdout
    assert "tier=gold" in kubectl("get", "workspace", "from-kubectl", "--show-labels").stdout
    assert "may not be changed" in kubectl("patch", "workspace", "from-kubectl", "--type=merge", "-p",
                                           '{"spec":{"type":{"name":"other"}}}', check=False).stderr
    # kubectl get -w: lines as workspaces come and go
    watcher = subprocess.Popen(command("get", "workspaces", "-w", "--output-watch-events"), env=env.vw.kubectl_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    lines_seen: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines_seen.put(line) for line in watcher.stdout], daemon=True).start()
    try:
        time.sleep(1.0)
        env.grant(org, "alice-hidden", [("User", "alice")], names=["hidden"])
        deadline = time.monotonic() + 10
        seen = ""
        while "ADDED" not in seen or "hidden" not in seen:
            seen = lines_seen.get(timeout=max(deadline - time.monotonic(), 0.01))
    finally:
        watcher.kill()
        watcher.wait()
    assert "deleted" in kubectl("delete", "workspace", "from-kubectl", "--wait=false").stdout
    wait_for(lambda: "from-kubectl" not in kubectl("get", "workspaces").stdout, "kubectl delete")
