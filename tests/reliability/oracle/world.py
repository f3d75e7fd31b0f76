"""The randomized world the oracle checks: tenants, callers, objects, grants -- built and changed through the API.

Workspaces ``root:t1``..``root:t3`` and ``root:provider`` (ClusterWorkspaces of ``root``); the provider
exports ``widgets``, bound by t1 and t2, not t3. ConfigMaps and Secrets in two namespaces of every tenant,
Widgets in the bound ones. Callers: users (static tokens, random groups), service accounts named alike in
two workspaces, and one that is deleted halfway (its token must then be refused). Grants are bindings
the world adds and revokes at random: entering a workspace (``access`` on ``clusterworkspaces/content`` in
root, for one name or all), ``view``/``edit`` in a tenant (for one namespace or the whole workspace,
sometimes naming a service account of another workspace), reading or using the export's content.
The provider also owns WorkspaceType ``db`` (its initializer ``root:provider:db``, whose
``initializerPermissions`` let it list and create ConfigMaps) and SyncTargets ``east`` and ``west``; grants
add ``initialize`` on the type and ``sync`` on a target. Workspaces of type ``db`` are created Initializing
and released (the initializer removed) at random; ConfigMaps and Deployments of the tenants are placed on the
targets by their state labels. The model here is the oracle's truth; the server is only ever written to,
never read back into it (but for the SyncTargets' UIDs, which are the URL's, not an answer to check).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import hashlib

from tests.reliability.conditions import wait
from tests.reliability.oracle.rbac import READ, TENANCY, Binding, Caller, Policy, Rule, Subject
from tests.reliability.shardprocess import RestClient

ORG = "root"
TENANTS = ("t1", "t2", "t3")
PROVIDER = "provider"
BOUND = ("t1", "t2")
NAMESPACES = ("default", "team")
EXPORT = "widgets"
GROUPS = ("g-red", "g-blue")
USERS = tuple(f"u{i}" for i in range(5))
RBAC = "/apis/rbac.authorization.k8s.io/v1"
APIS = "apis.kcp.dev"
WORKLOAD = "workload.kcp.dev"
TYPE = "db"
INITIALIZER = f"{ORG}:{PROVIDER}:{TYPE}"
TARGETS = ("east", "west")
INITIAL_WORKSPACES = 3
CLUSTER_WORKSPACES = f"/apis/{TENANCY}/v1alpha1/clusterworkspaces"
#: What the initializer group holds in a workspace it initializes (the type's ``initializerPermissions``).
INITIALIZER_RULES = (Rule(("get", "list", "create"), ("",), ("configmaps",)),)
WIDGET_SCHEMA = {"type": "object", "properties": {"spec": {"type": "object", "properties": {
    "size": {"type": "integer"}}}}}


def cluster_of(ws: str) -> str:
    return f"{ORG}:{ws}"


@dataclass
class World:
    admin: RestClient
    rng: random.Random
    policy: Policy = field(default_factory=Policy)
    callers: dict[str, Caller] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)      # caller key -> bearer token
    revoked: dict[str, float] = field(default_factory=dict)   # callers whose credentials are gone -> since (monotonic)
    configmaps: dict[tuple[str, str], set[str]] = field(default_factory=dict)   # (cluster, ns) -> names
    secrets: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    widgets: dict[str, set[str]] = field(default_factory=dict)                  # cluster -> names (ns default)
    initializing: set[str] = field(default_factory=set)   # workspaces of type db still waiting for INITIALIZER
    released: set[str] = field(default_factory=set)       # ... and those it released (Ready)
    initialized: dict[str, set[str]] = field(default_factory=dict)  # workspace -> ConfigMaps it made (ns default)
    target_uids: dict[str, str] = field(default_factory=dict)       # SyncTarget name -> its UID (the URL's)
    placed: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)  # (cluster, ns, ConfigMap) -> targets
    deployments: dict[str, tuple[int, set[str]]] = field(default_factory=dict)  # name (root:t1, default) -> ...
    mutations: int = 0
    _serial: int = 0

    # ------------------------------------------------------------------ building

    @staticmethod
    def token_file_lines(rng: random.Random) -> tuple[str, dict[str, tuple[str, ...]]]:
        """The static token file of the users, and each user's groups (drawn once)."""
        groups = {user: tuple(g for g in GROUPS if rng.random() < 0.4) for user in USERS}
        text = "".join(f'token-of-{user},{user},{user}-uid,"{",".join(groups[user])}"\n' for user in USERS)
        return text, groups

    def build(self, user_groups: dict[str, tuple[str, ...]]) -> None:
        for user in USERS:
            self.callers[user] = Caller(user, user, (*user_groups[user], "system:authenticated"))
            self.tokens[user] = f"token-of-{user}"
        for ws in (*TENANTS, PROVIDER):
            self.admin.ok("POST", f"/clusters/{ORG}/apis/{TENANCY}/v1alpha1/clusterworkspaces", {"metadata": {"name": ws}})
        for ws in (*TENANTS, PROVIDER):
            wait(lambda: self.admin.call("GET", f"/clusters/{ORG}/apis/{TENANCY}/v1alpha1/clusterworkspaces/{ws}")[1],
                 lambda obj: (obj.get("status") or {}).get("phase") == "Ready")
        self._roles()
        self._export()
        self._initializing_type()
        self._sync_targets()
        for ws in TENANTS:
            cluster = cluster_of(ws)
            self.admin.ok("POST", f"/clusters/{cluster}/api/v1/namespaces", {"metadata": {"name": "team"}})
            for ns in NAMESPACES:
                self.configmaps[(cluster, ns)] = set()
                self.secrets[(cluster, ns)] = set()
                for i in range(2):
                    self.create_configmap(cluster, ns)
                self.admin.ok("POST", f"/clusters/{cluster}/api/v1/namespaces/{ns}/secrets",
                              {"metadata": {"name": f"s-{ns}"}, "stringData": {"k": "v"}})
                self.secrets[(cluster, ns)].add(f"s-{ns}")
                for name in sorted(self.configmaps[(cluster, ns)]):
                    self.place(cluster, ns, name, {t for t in TARGETS if self.rng.random() < 0.5})
        for replicas in (0, 1, 5):
            self.create_deployment(replicas)
        for _ in range(INITIAL_WORKSPACES):
            self.create_initializing()
        for name, ws in (("robot", "t1"), ("robot", "t2"), ("doomed", "t1")):
            self._service_account(ws, name)
        for _ in range(40):  # enough that every view both allows and refuses often
            self.grant()
        for kind in ("initialize", "initialize", "sync", "sync"):  # a few who may, whatever the draw above
            user = Subject("User", self.rng.choice(USERS))
            self.grant("enter-provider", user)
            self.grant(kind, user)

    def _roles(self) -> None:
        """The ClusterRoles grants refer to: entering one tenant or all (in root), the export's content (provider)."""
        for ws in (*TENANTS, PROVIDER, None):
            name = f"enter-{ws or 'all'}"
            rule = Rule(("access",), (TENANCY,), ("clusterworkspaces/content",), (ws,) if ws else ())
            self._cluster_role(ORG, name, rule)
        provider = cluster_of(PROVIDER)
        self._cluster_role(provider, f"initialize-{TYPE}", Rule(("initialize",), (TENANCY,), ("workspacetypes",), (TYPE,)))
        for target in TARGETS:
            self._cluster_role(provider, f"sync-{target}", Rule(("sync",), (WORKLOAD,), ("synctargets",), (target,)))
        self._cluster_role(provider, "content-read", Rule(READ, (APIS,), ("apiexports/content",), (EXPORT,)))
        self._cluster_role(provider, "content-all", Rule(("*",), (APIS,), ("apiexports/content",), (EXPORT,)))

    def _cluster_role(self, cluster: str, name: str, rule: Rule) -> None:
        body = {"verbs": list(rule.verbs), "apiGroups": list(rule.groups), "resources": list(rule.resources)}
        if rule.names:
            body["resourceNames"] = list(rule.names)
        self.admin.ok("POST", f"/clusters/{cluster}{RBAC}/clusterroles", {"metadata": {"name": name}, "rules": [body]})
        self.policy.roles[(cluster, name)] = (rule,)

    def _export(self) -> None:
        provider = f"/clusters/{cluster_of(PROVIDER)}/apis/{APIS}/v1alpha1"
        self.admin.ok("POST", f"{provider}/apiresourceschemas", {
            "apiVersion": f"{APIS}/v1alpha1", "kind": "APIResourceSchema", "metadata": {"name": "v1.widgets.example.io"},
            "spec": {"group": "example.io", "scope": "Namespaced",
                     "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                     "versions": [{"name": "v1", "served": True, "storage": True, "schema": WIDGET_SCHEMA}]}})
        self.admin.ok("POST", f"{provider}/apiexports", {"apiVersion": f"{APIS}/v1alpha1", "kind": "APIExport",
                                                        "metadata": {"name": EXPORT},
                                                        "spec": {"latestResourceSchemas": ["v1.widgets.example.io"]}})
        for ws in BOUND:
            cluster = cluster_of(ws)
            self.admin.ok("POST", f"/clusters/{cluster}/apis/{APIS}/v1alpha1/apibindings", {
                "apiVersion": f"{APIS}/v1alpha1", "kind": "APIBinding", "metadata": {"name": EXPORT},
                "spec": {"reference": {"workspace": {"path": cluster_of(PROVIDER), "exportName": EXPORT}}}})
            self.widgets[cluster] = set()
            wait(lambda: self.admin.call("POST", self.widget_path(cluster), self._widget_body(f"w-{ws}-0"))[0],
                 lambda status: status in (201, 409))
            self.widgets[cluster].add(f"w-{ws}-0")

    def _initializing_type(self) -> None:
        self.admin.ok("POST", f"/clusters/{cluster_of(PROVIDER)}/apis/{TENANCY}/v1alpha1/workspacetypes", {
            "metadata": {"name": TYPE}, "spec": {"initializer": True, "initializerPermissions": [
                {"verbs": list(rule.verbs), "apiGroups": list(rule.groups), "resources": list(rule.resources)}
                for rule in INITIALIZER_RULES]}})

    def _sync_targets(self) -> None:
        path = f"/clusters/{cluster_of(PROVIDER)}/apis/{WORKLOAD}/v1alpha1/synctargets"
        for name in TARGETS:
            created = self.admin.ok("POST", path, {"apiVersion": f"{WORKLOAD}/v1alpha1", "kind": "SyncTarget",
                                                   "metadata": {"name": name}})
            self.target_uids[name] = created["metadata"]["uid"]

    @staticmethod
    def widget_path(cluster: str) -> str:
        return f"/clusters/{cluster}/apis/example.io/v1/namespaces/default/widgets"

    @staticmethod
    def _widget_body(name: str) -> dict:
        return {"apiVersion": "example.io/v1", "kind": "Widget", "metadata": {"name": name}, "spec": {"size": 1}}

    def _service_account(self, ws: str, name: str) -> None:
        cluster = cluster_of(ws)
        path = f"/clusters/{cluster}/api/v1/namespaces/default/serviceaccounts"
        self.admin.ok("POST", path, {"metadata": {"name": name}})
        token = self.admin.ok("POST", f"{path}/{name}/token", {"apiVersion": "authentication.k8s.io/v1",
                                                              "kind": "TokenRequest", "spec": {}})["status"]["token"]
        key = f"sa:{ws}:{name}"
        self.callers[key] = Caller(key, f"system:serviceaccount:default:{name}",
                                   ("system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"),
                                   sa_cluster=cluster)
        self.tokens[key] = token

    # ------------------------------------------------------------------ changing

    def serial(self) -> int:
        self._serial += 1
        return self._serial

    def create_configmap(self, cluster: str, ns: str) -> None:
        name = f"cm-{self.serial()}"
        self.admin.ok("POST", f"/clusters/{cluster}/api/v1/namespaces/{ns}/configmaps",
                      {"metadata": {"name": name}, "data": {"k": "v"}})
        self.configmaps[(cluster, ns)].add(name)
        self.mutations += 1

    def _subject(self, broad: bool) -> Subject:
        """A user, a group (``broad``: also everyone authenticated or every service account) or a service account."""
        pick = self.rng.random()
        if pick < 0.45:
            return Subject("User", self.rng.choice(USERS))
        if pick < 0.7:
            return Subject("Group", self.rng.choice((*GROUPS, "system:serviceaccounts", "system:authenticated")
                                                    if broad else GROUPS))
        sa = self.rng.choice([c for c in self.callers.values() if c.sa_cluster is not None])
        return Subject("ServiceAccount", sa.sa[1], sa.sa[0])  # named in any workspace: it only matches its own

    def grant(self, kind: str | None = None, subject: Subject | None = None) -> Binding:
        """A random binding (of ``kind``, to ``subject``, when given)."""
        kind = kind or self.rng.choice(("enter", "enter", "tenant", "tenant", "tenant", "content", "initialize",
                                        "sync"))
        name = f"grant-{self.serial()}"
        if kind == "enter-provider":
            cluster, namespace, role = ORG, "", f"enter-{PROVIDER}"
        elif kind == "enter":
            cluster, namespace = ORG, ""
            role = self.rng.choice([f"enter-{ws}" for ws in (*TENANTS, PROVIDER)] + ["enter-all"])
        elif kind == "tenant":
            cluster = cluster_of(self.rng.choice(TENANTS))
            namespace = self.rng.choice((*NAMESPACES, ""))
            role = self.rng.choice(("view", "edit"))
        elif kind == "initialize":
            cluster, namespace, role = cluster_of(PROVIDER), "", f"initialize-{TYPE}"
        elif kind == "sync":
            cluster, namespace, role = cluster_of(PROVIDER), "", f"sync-{self.rng.choice(TARGETS)}"
        else:
            cluster, namespace = cluster_of(PROVIDER), ""
            role = self.rng.choice(("content-read", "content-all"))
        # Entering is never granted to everyone, or the tenancy rule would never be what decides.
        binding = Binding(name, cluster, namespace, role, subject or self._subject(broad=not kind.startswith("enter")))
        subject = {"kind": binding.subject.kind, "name": binding.subject.name}
        if binding.subject.kind == "ServiceAccount":
            subject["namespace"] = binding.subject.namespace
        else:
            subject["apiGroup"] = "rbac.authorization.k8s.io"
        body = {"metadata": {"name": name}, "subjects": [subject],
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}}
        plural = f"namespaces/{namespace}/rolebindings" if namespace else "clusterrolebindings"
        self.admin.ok("POST", f"/clusters/{cluster}{RBAC}/{plural}", body)
        self.policy.bindings[name] = binding
        self.mutations += 1
        return binding

    def revoke(self) -> Binding | None:
        if not self.policy.bindings:
            return None
        binding = self.policy.bindings.pop(self.rng.choice(sorted(self.policy.bindings)))
        plural = f"namespaces/{binding.namespace}/rolebindings" if binding.namespace else "clusterrolebindings"
        self.admin.ok("DELETE", f"/clusters/{binding.cluster}{RBAC}/{plural}/{binding.name}")
        self.mutations += 1
        return binding

    def delete_service_account(self, key: str) -> None:
        caller = self.callers[key]
        namespace, name = caller.sa
        self.admin.ok("DELETE", f"/clusters/{caller.sa_cluster}/api/v1/namespaces/{namespace}/serviceaccounts/{name}")
        self.revoked[key] = time.monotonic()
        self.mutations += 1

    def mutate(self) -> str:
        """One random change of grants or objects; what it was."""
        pick = self.rng.random()
        if pick < 0.45:
            return f"granted {self.grant()}"
        if pick < 0.75:
            return f"revoked {self.revoke()}"
        if pick < 0.8:
            cluster, ns = cluster_of(self.rng.choice(TENANTS)), self.rng.choice(NAMESPACES)
            self.create_configmap(cluster, ns)
            return f"configmap in {cluster}/{ns}"
        if pick < 0.85:
            return f"widget {self.create_widget(cluster_of(self.rng.choice(BOUND)))}"
        if pick < 0.9:
            return f"initializing {self.create_initializing()}"
        if pick < 0.95:
            return f"deployment {self.create_deployment(self.rng.randint(0, 7))}"
        (cluster, ns), names = self.rng.choice(sorted(self.configmaps.items()))
        name = self.rng.choice(sorted(names))
        targets = {t for t in TARGETS if self.rng.random() < 0.5}
        self.place(cluster, ns, name, targets)
        return f"placed {cluster}/{ns}/{name} on {sorted(targets)}"

    # ------------------------------------------------------------------ initializing workspaces

    def create_initializing(self) -> str:
        """A ClusterWorkspace of type db in root, once Initializing (it waits for INITIALIZER alone)."""
        name = f"init-{self.serial()}"
        self.admin.ok("POST", f"/clusters/{ORG}{CLUSTER_WORKSPACES}", {
            "metadata": {"name": name}, "spec": {"type": {"name": TYPE, "path": cluster_of(PROVIDER)}}})
        wait(lambda: self.admin.call("GET", f"/clusters/{ORG}{CLUSTER_WORKSPACES}/{name}")[1],
             lambda ws: (ws.get("status") or {}).get("phase") == "Initializing")
        self.initializing.add(name)
        self.initialized[name] = set()
        self.mutations += 1
        return name

    def workspaces(self) -> set[str]:
        """Every workspace of ``root``, Initializing or Ready."""
        return {*TENANTS, PROVIDER, *self.initializing, *self.released}

    def release(self, name: str) -> None:
        """What a successful removal of INITIALIZER did: the workspace is Ready, out of the view."""
        self.initializing.discard(name)
        self.released.add(name)

    # ------------------------------------------------------------------ placement on sync targets

    @staticmethod
    def target_key(name: str) -> str:
        """kcp's ToSyncTargetKey, written here from its definition: sha224 of ``<cluster>:<name>`` in base 62."""
        digits = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
        number = int.from_bytes(hashlib.sha224(f"{cluster_of(PROVIDER)}:{name}".encode()).digest(), "big")
        key = ""
        while number:
            number, digit = divmod(number, 62)
            key = digits[digit] + key
        return key

    def _state_labels(self, targets: set[str]) -> dict:
        return {f"state.workload.kcp.dev/{self.target_key(t)}": "Sync" if t in targets else None for t in TARGETS}

    def place(self, cluster: str, ns: str, name: str, targets: set[str]) -> None:
        """The ConfigMap placed on exactly ``targets`` (its state labels, by a merge patch)."""
        self.admin.ok("PATCH", f"/clusters/{cluster}/api/v1/namespaces/{ns}/configmaps/{name}",
                      {"metadata": {"labels": self._state_labels(targets)}}, content_type="application/merge-patch+json")
        self.placed[(cluster, ns, name)] = set(targets)
        self.mutations += 1

    def create_deployment(self, replicas: int) -> str:
        """A Deployment of root:t1's default namespace with ``replicas``, placed on a random set of targets."""
        name = f"d-{self.serial()}"
        targets = {t for t in TARGETS if self.rng.random() < 0.6}
        labels = {k: v for k, v in self._state_labels(targets).items() if v}
        self.admin.ok("POST", f"/clusters/{cluster_of(TENANTS[0])}/apis/apps/v1/namespaces/default/deployments", {
            "metadata": {"name": name, "labels": labels}, "spec": {
                "replicas": replicas, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}},
                             "spec": {"containers": [{"name": "app", "image": "nginx"}]}}}})
        self.deployments[name] = (replicas, targets)
        self.mutations += 1
        return f"{name} ({replicas}) on {sorted(targets)}"

    def create_widget(self, cluster: str) -> str:
        name = f"w-{self.serial()}"
        self.admin.ok("POST", self.widget_path(cluster), self._widget_body(name))
        self.widgets[cluster].add(name)
        self.mutations += 1
        return f"{cluster}/{name}"

