"""A fake syncer: it "runs" the workloads placed on one SyncTarget by reporting them ready, through the syncer
virtual workspace only.

A real syncer copies its view into a physical cluster and reports the status it finds there. This one keeps
the "physical cluster" in memory (``downstream``) and declares every Deployment ready the moment it sees it:

1. It reads its SyncTarget (in workspace ``cluster``) for its key and follows
   ``status.virtualWorkspaces[].url`` (``examples.urlfollower.URLFollower``): one ``TargetView`` per URL.
2. Per URL, one ``Informer`` per synced resource on ``<url>/clusters/*``: Deployments,
   ConfigMaps, Secrets and Namespaces, each kept in ``downstream`` as the view shows them (its share of the
   replicas, its spec diff applied).
3. Each Deployment is run: the syncer puts its finalizer ``workload.kcp.dev/syncer-<key>`` on it (so the
   upstream object waits for it on deletion), then reports ``replicas = readyReplicas = availableReplicas =
   updatedReplicas =`` its share with conditions Available and Progressing, by a status merge patch through
   ``<url>/clusters/<the object's kcp.dev/cluster>``. A Deployment being deleted is stopped downstream and
   released (the finalizer removed). Namespaces are reported Active.

Every write is idempotent -- skipped when the view already shows it -- so the MODIFIED events of its own
writes end the loop. The credentials need ``sync`` and ``get``/``list``/``watch`` on the SyncTarget.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import structlog
from kubernetes import client
from kubernetes.client.rest import ApiException

from examples.urlfollower import URLFollower, URLWorker, kubeconfig_configuration, object_key

log = structlog.get_logger("fake-syncer")

GROUP, VERSION = "workload.kcp.dev", "v1alpha1"
KEY_LABEL = "internal.workload.kcp.dev/key"
FINALIZER_PREFIX = "workload.kcp.dev/syncer-"
MERGE_PATCH = "application/merge-patch+json"
RESOURCES = ("deployments", "configmaps", "secrets", "namespaces")

#: ``on_event(url, resource, event type, object)``: every object a view's informer receives, before it is handled.
Observer = Callable[[str, str, str, dict], None]


def report(deployment: dict) -> dict:
    """The status of a Deployment that runs its share (the view's ``spec.replicas``) and is ready."""
    replicas = (deployment.get("spec") or {}).get("replicas", 1)
    return {"observedGeneration": deployment["metadata"].get("generation", 1), "replicas": replicas,
            "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                            "message": "Deployment has minimum availability."},
                           {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                            "message": "the fake syncer runs every replica at once"}]}


class TargetView(URLWorker):
    """One URL of the SyncTarget: an informer per synced resource on ``clusters/*``, writes through
    ``clusters/<cluster>``."""

    def __init__(self, url: str, base: client.Configuration, key: str, on_event: Observer | None = None):
        super().__init__(url, base)
        self.finalizer = FINALIZER_PREFIX + key
        self.on_event = on_event
        self.downstream: dict[tuple[str, str, str, str], dict] = {}   # (resource, cluster, namespace, name)
        wildcard = self.client("*")
        apps, core = client.AppsV1Api(wildcard), client.CoreV1Api(wildcard)
        lists = {"deployments": apps.list_deployment_for_all_namespaces,
                 "configmaps": core.list_config_map_for_all_namespaces,
                 "secrets": core.list_secret_for_all_namespaces, "namespaces": core.list_namespace}
        for resource in RESOURCES:
            self.inform(lists[resource], partial(self._handle, resource), name=resource)

    def running(self) -> dict[tuple[str, str, str], int]:
        """``(cluster, namespace, name) -> replicas`` of the Deployments this view runs downstream."""
        return {(c, ns, n): (obj.get("spec") or {}).get("replicas", 1)
                for (resource, c, ns, n), obj in list(self.downstream.items()) if resource == "deployments"}

    # ------------------------------------------------------------------ informer callbacks

    def _handle(self, resource: str, kind: str, obj: dict) -> None:
        if self.on_event is not None:
            self.on_event(self.url, resource, kind, obj)
        key = (resource, *object_key(obj))
        if kind == "DELETED":
            self.downstream.pop(key, None)
            return
        try:
            if resource == "deployments":
                self._run(key, obj)
            else:
                self.downstream[key] = obj
                if resource == "namespaces" and (obj.get("status") or {}).get("phase") != "Active":
                    self._writer(key[1])[1].patch_namespace_status(key[3], {"status": {"phase": "Active"}},
                                                                   _content_type=MERGE_PATCH)
        except ApiException as exc:
            if exc.status not in (404, 409):   # unplaced, or changed meanwhile: the watch will tell
                raise
            log.info("write skipped", resource=resource, name=key[3], status=exc.status)

    def _writer(self, cluster: str) -> tuple[client.AppsV1Api, client.CoreV1Api]:
        api = self.client(cluster)
        return client.AppsV1Api(api), client.CoreV1Api(api)

    def _run(self, key: tuple[str, str, str, str], deployment: dict) -> None:
        _, cluster, namespace, name = key
        apps = self._writer(cluster)[0]
        meta = deployment["metadata"]
        holds = self.finalizer in (meta.get("finalizers") or ())
        if meta.get("deletionTimestamp"):
            self.downstream.pop(key, None)       # stopped downstream: let the upstream object go
            if holds:
                apps.patch_namespaced_deployment(name, namespace, {"metadata": {"finalizers": []}},
                                                 _content_type=MERGE_PATCH)
                log.info("released", cluster=cluster, namespace=namespace, name=name)
            return
        self.downstream[key] = deployment
        if not holds:
            apps.patch_namespaced_deployment(name, namespace, {"metadata": {"finalizers": [self.finalizer]}},
                                             _content_type=MERGE_PATCH)
            return   # its MODIFIED event comes back with the finalizer: the status is reported then
        wanted = report(deployment)
        if deployment.get("status") != wanted:
            apps.patch_namespaced_deployment_status(name, namespace, {"status": wanted}, _content_type=MERGE_PATCH)
            log.info("reported ready", cluster=cluster, namespace=namespace, name=name,
                     replicas=wanted["readyReplicas"])


class FakeSyncer(URLFollower):
    """The syncer of SyncTarget ``name`` in workspace ``cluster``: one ``TargetView`` per URL it publishes."""

    def __init__(self, base: client.Configuration, cluster: str, name: str, *, on_event: Observer | None = None):
        super().__init__(base, cluster, (GROUP, VERSION, "synctargets"), name, worker=self._view)
        self.cluster, self.name = cluster, name
        self.on_event = on_event
        self.key = ""

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str, cluster: str, name: str, *, context: str | None = None,
                        on_event: Observer | None = None) -> "FakeSyncer":
        return cls(kubeconfig_configuration(kubeconfig, context), cluster, name, on_event=on_event)

    @property
    def views(self) -> dict[str, TargetView]:
        return self.workers

    def running(self) -> dict[tuple[str, str, str], int]:
        """What runs downstream, over every view: ``(cluster, namespace, name) -> replicas``."""
        return {key: replicas for view in list(self.views.values()) for key, replicas in view.running().items()}

    def start(self) -> "FakeSyncer":
        """Read the SyncTarget's key (its finalizer's name), then follow its URLs."""
        target = client.CustomObjectsApi(self.client(self.cluster)).get_cluster_custom_object(
            GROUP, VERSION, "synctargets", self.name)
        self.key = target["metadata"]["labels"][KEY_LABEL]
        return super().start()

    def _view(self, url: str) -> TargetView:
        return TargetView(url, self.base, self.key, self.on_event)
