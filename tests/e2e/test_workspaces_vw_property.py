"""Property: for random workspaces, owners, roles and bindings, what each user lists through the workspaces view
is exactly what an independent reference evaluation of the tenancy rule says it may enter.

The reference below is written from the rule (``server.auth.workspace_access``'s docstring) and kube's RBAC
matching, not from the implementation: a workspace is visible to a user if some ClusterRoleBinding naming the user (or
one of its groups) refers to an existing ClusterRole with a rule whose verbs include access, admin or
``*``, whose apiGroups include tenancy.kcp.dev or ``*``, whose resources include
clusterworkspaces/content, ``*/content`` or ``*``, and whose resourceNames are empty or name the
workspace; owners are granted admin on theirs by the lifecycle controller; ``personal`` keeps what
the user owns. Objects are arranged through the shard's registry (fast); lists go through HTTPS.
"""

from __future__ import annotations

import json
import uuid

import orjson
import pytest
import urllib3
from hypothesis import HealthCheck, given, settings, strategies as st

from server.apis.tenancy import CLUSTER_WORKSPACES, OWNER_ANNOTATION
from server.shard import ShardConfig
from server.testing import running_shard

GROUP = "tenancy.kcp.dev"
RBAC = "rbac.authorization.k8s.io"
NAMES = ("w0", "w1", "w2", "w3", "w4")
USERS = {"u1": ("g1",), "u2": ("g1", "g2"), "u3": ()}
SUBJECTS = [("User", u) for u in USERS] + [("Group", "g1"), ("Group", "g2"), ("Group", "system:authenticated")]
ROLE_NAMES = ("r0", "r1", "r2", "r3")


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    tokens = tmp_path_factory.mktemp("property") / "tokens.csv"
    tokens.write_text("".join(f'token-{u},{u},{u}-uid,"{",".join(g)}"\n' for u, g in USERS.items()))
    with running_shard(ShardConfig(token_auth_file=str(tokens))) as running:
        # everyone may enter every org under root; what they see inside is the org's RBAC
        running.run(_create_rbac, running.shard.registry, "root", [
            {"name": "enter-orgs", "rules": [{"apiGroups": [GROUP], "resources": ["clusterworkspaces/content"],
                                              "verbs": ["access"]}]}],
            [{"name": "enter-orgs", "role": "enter-orgs", "subjects": [("Group", "system:authenticated")]}])
        yield running


def _create_rbac(registry, cluster: str, roles: list[dict], bindings: list[dict]) -> None:
    role_type = registry.catalog.lookup(cluster, RBAC, "v1", "clusterroles")
    binding_type = registry.catalog.lookup(cluster, RBAC, "v1", "clusterrolebindings")
    for role in roles:
        registry.create(role_type, cluster, "", {"metadata": {"name": role["name"]}, "rules": role["rules"]})
    for binding in bindings:
        registry.create(binding_type, cluster, "", {
            "metadata": {"name": binding["name"]},
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": binding["role"]},
            "subjects": [{"kind": kind, "name": name, "apiGroup": RBAC} for kind, name in binding["subjects"]]})


def _arrange(registry, org: str, workspaces: dict, roles: list[dict], bindings: list[dict]) -> None:
    registry.ensure_logical_cluster(org)
    for name, owner in workspaces.items():
        owner_value = json.dumps({"username": owner or "nobody", "uid": "", "groups": []})
        registry.create(CLUSTER_WORKSPACES, org, "", {"metadata": {"name": name,
                                                                   "annotations": {OWNER_ANNOTATION: owner_value}}})
    _create_rbac(registry, org, roles, bindings)


def _owner_grants_done(registry, org: str, workspaces: dict) -> bool:
    """The lifecycle controller granted every owner (its ClusterRoleBinding exists)."""
    binding_type = registry.catalog.lookup(org, RBAC, "v1", "clusterrolebindings")
    return all(registry.store.get(registry.key(binding_type, org, "", f"workspace-owner:{name}")) is not None
               for name in workspaces)


# ---------------------------------------------------------------------- the reference

def _any(values, *wanted) -> bool:
    return any(w in values for w in wanted)


def reference_visible(user: str, workspaces: dict, roles: list[dict], bindings: list[dict]) -> set[str]:
    groups = set(USERS[user]) | {"system:authenticated"}
    rules_by_role = {role["name"]: role["rules"] for role in roles}
    visible = {name for name, owner in workspaces.items() if owner == user}  # the controller's owner grant
    for binding in bindings:
        if not any((kind == "User" and name == user) or (kind == "Group" and name in groups)
                   for kind, name in binding["subjects"]):
            continue
        for rule in rules_by_role.get(binding["role"], ()):
            if not (_any(rule["verbs"], "access", "admin", "*") and _any(rule["apiGroups"], GROUP, "*")
                    and _any(rule["resources"], "clusterworkspaces/content", "*/content", "*")):
                continue
            names = rule.get("resourceNames") or []
            visible |= {w for w in workspaces if not names or w in names}
    return visible


# ---------------------------------------------------------------------- strategies

# Weighted towards rules and bindings that grant something, so that most examples see a non-empty view.
rules = st.fixed_dictionaries(
    {"verbs": st.lists(st.sampled_from(["access", "admin", "access", "get", "*"]), min_size=1, max_size=2,
                       unique=True),
     "apiGroups": st.sampled_from([[GROUP], [GROUP], ["*"], [""]]),
     "resources": st.sampled_from([["clusterworkspaces/content"], ["clusterworkspaces/content"], ["*/content"],
                                   ["*"], ["clusterworkspaces"]])},
    optional={"resourceNames": st.lists(st.sampled_from(NAMES + ("missing",)), min_size=1, max_size=3, unique=True)})
roles = st.lists(st.fixed_dictionaries({"name": st.sampled_from(ROLE_NAMES[:3]),
                                        "rules": st.lists(rules, min_size=1, max_size=2)}),
                 min_size=1, max_size=3, unique_by=lambda r: r["name"])
bindings = st.lists(st.fixed_dictionaries({
    "name": st.sampled_from(("b0", "b1", "b2", "b3")),
    "role": st.sampled_from(ROLE_NAMES),  # r3 never exists: a binding to a missing role grants nothing
    "subjects": st.lists(st.sampled_from(SUBJECTS), min_size=1, max_size=3, unique=True)}),
    min_size=1, max_size=4, unique_by=lambda b: b["name"])
workspaces = st.dictionaries(st.sampled_from(NAMES), st.sampled_from([None, None, *USERS]), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(workspaces=workspaces, roles=roles, bindings=bindings)
def test_lists_match_the_reference(shard, workspaces, roles, bindings):
    org = f"root:prop-{uuid.uuid4().hex[:8]}"
    registry = shard.shard.registry
    shard.run(_arrange, registry, org, workspaces, roles, bindings)
    deadline = 100
    while not shard.run(_owner_grants_done, registry, org, workspaces) and deadline:
        deadline -= 1
        shard.run(lambda: __import__("gevent").sleep(0.02))
    http = urllib3.PoolManager(ca_certs=shard.ca_file, cert_reqs="CERT_REQUIRED")
    for user in USERS:
        expected = reference_visible(user, workspaces, roles, bindings)
        for scope, want in (("all", expected), ("personal", {w for w in expected if workspaces[w] == user})):
            response = http.request("GET", f"{shard.url}/services/workspaces/{org}/{scope}/apis/{GROUP}/v1beta1/"
                                            "workspaces", headers={"Authorization": f"Bearer token-{user}"})
            assert response.status == 200, response.data
            got = {item["metadata"]["name"] for item in orjson.loads(response.data)["items"]}
            assert got == want, (user, scope, workspaces, roles, bindings)
