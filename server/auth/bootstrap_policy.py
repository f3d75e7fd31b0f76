"""The RBAC objects every logical cluster starts with, like kube's ``bootstrappolicy``.

``cluster-admin``, ``admin``, ``edit`` and ``view`` (written out: aggregation is not served) and the
discovery roles every authenticated user is bound to (``system:basic-user``, ``system:discovery``,
``system:public-info-viewer``). ``ensure_bootstrap_policy`` is a ``Registry`` cluster hook: it runs
whenever a logical cluster is ensured and creates only what is missing, so ``root`` (at every
start) and each new workspace get the policy, and a deleted default comes back on restart, as
kube's reconciler does.
"""

from __future__ import annotations

from kcp_virtual.framework import errors
from server.auth.user import AUTHENTICATED, MASTERS, UNAUTHENTICATED
from server.storage import Key

GROUP = "rbac.authorization.k8s.io"
_META = {"labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
         "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}}
READ = ["get", "list", "watch"]
WRITE = ["create", "delete", "deletecollection", "patch", "update"]


def _rule(verbs: list[str], groups: list[str], resources: list[str]) -> dict:
    return {"verbs": verbs, "apiGroups": groups, "resources": resources}


def _urls(verbs: list[str], urls: list[str]) -> dict:
    return {"verbs": verbs, "nonResourceURLs": urls}


VIEW_RULES = [
    _rule(READ, [""], ["configmaps", "endpoints", "persistentvolumeclaims", "persistentvolumeclaims/status", "pods",
                       "replicationcontrollers", "replicationcontrollers/scale", "serviceaccounts", "services",
                       "services/status"]),
    _rule(READ, [""], ["bindings", "events", "limitranges", "namespaces/status", "pods/log", "pods/status",
                       "replicationcontrollers/status", "resourcequotas", "resourcequotas/status"]),
    _rule(READ, [""], ["namespaces"]),
    _rule(READ, ["apps"], ["controllerrevisions", "daemonsets", "daemonsets/status", "deployments", "deployments/scale",
                           "deployments/status", "replicasets", "replicasets/scale", "replicasets/status",
                           "statefulsets", "statefulsets/scale", "statefulsets/status"]),
    _rule(READ, ["batch"], ["cronjobs", "cronjobs/status", "jobs", "jobs/status"]),
    _rule(READ, ["coordination.k8s.io"], ["leases"]),
    _rule(READ, ["discovery.k8s.io"], ["endpointslices"]),
    _rule(READ, ["events.k8s.io"], ["events"]),
]

EDIT_RULES = [
    _rule(["impersonate"], [""], ["serviceaccounts"]),
    _rule(READ, [""], ["secrets"]),
    _rule(WRITE, [""], ["configmaps", "events", "persistentvolumeclaims", "pods", "replicationcontrollers",
                        "replicationcontrollers/scale", "secrets", "serviceaccounts", "services"]),
    _rule(["create"], [""], ["serviceaccounts/token"]),
    _rule(WRITE, ["apps"], ["daemonsets", "deployments", "deployments/rollback", "deployments/scale", "replicasets",
                            "replicasets/scale", "statefulsets", "statefulsets/scale"]),
    _rule(WRITE, ["batch"], ["cronjobs", "jobs"]),
    _rule(WRITE, ["coordination.k8s.io"], ["leases"]),
    _rule(WRITE, ["events.k8s.io"], ["events"]),
    *VIEW_RULES,
]

ADMIN_RULES = [
    _rule(["create"], ["authorization.k8s.io"], ["localsubjectaccessreviews"]),
    _rule(READ + WRITE, [GROUP], ["rolebindings", "roles"]),
    *EDIT_RULES,
]

CLUSTER_ROLES: dict[str, list[dict]] = {
    "cluster-admin": [_rule(["*"], ["*"], ["*"]), _urls(["*"], ["*"])],
    "admin": ADMIN_RULES,
    "edit": EDIT_RULES,
    "view": VIEW_RULES,
    "system:basic-user": [
        _rule(["create"], ["authorization.k8s.io"], ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
        _rule(["create"], ["authentication.k8s.io"], ["selfsubjectreviews"]),
    ],
    "system:discovery": [_urls(["get"], ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi",
                                         "/openapi/*", "/readyz", "/version", "/version/"])],
    "system:public-info-viewer": [_urls(["get"], ["/healthz", "/livez", "/readyz", "/version", "/version/"])],
}

CLUSTER_ROLE_BINDINGS: dict[str, list[str]] = {   # binding (and ClusterRole) name -> groups bound
    "cluster-admin": [MASTERS],
    "system:basic-user": [AUTHENTICATED],
    "system:discovery": [AUTHENTICATED],
    "system:public-info-viewer": [AUTHENTICATED, UNAUTHENTICATED],
}


def bootstrap_objects() -> list[tuple[str, dict]]:
    """(plural, object) for every default ClusterRole and ClusterRoleBinding."""
    objects = [("clusterroles", {"apiVersion": f"{GROUP}/v1", "kind": "ClusterRole",
                                 "metadata": {"name": name, **_META}, "rules": rules})
               for name, rules in CLUSTER_ROLES.items()]
    objects += [("clusterrolebindings", {
        "apiVersion": f"{GROUP}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name, **_META},
        "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": GROUP, "kind": "Group", "name": group} for group in groups]})
        for name, groups in CLUSTER_ROLE_BINDINGS.items()]
    return objects


def ensure_bootstrap_policy(registry, cluster: str) -> None:
    """Create the default roles and bindings that ``cluster`` lacks (idempotent; a Registry cluster hook)."""
    for plural, obj in bootstrap_objects():
        rt = registry.catalog.lookup(cluster, GROUP, "v1", plural)
        if rt is None:
            return  # a catalog without RBAC (a bare test registry): nothing to bootstrap
        if registry.store.get(Key(rt.storage_key, cluster, "", obj["metadata"]["name"])) is not None:
            continue
        try:
            registry.create(rt, cluster, "", obj)
        except errors.AlreadyExists:
            pass
