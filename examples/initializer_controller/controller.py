"""An initializer for the workspaces of one WorkspaceType, through the initializingworkspaces virtual workspace.

It follows ``WorkspaceType.status.virtualWorkspaces`` (``examples.urlfollower.URLFollower``) and per URL watches
``<url>/clusters/*``: the ClusterWorkspaces that are Initializing and wait for this type's initializer
``<type workspace>:<type name>``. Each one is handed to a pool of workers, which

1. seed the workspace through the content proxy ``<url>/clusters/<workspace>``: a Namespace and a ConfigMap in it
   (an AlreadyExists from an earlier attempt is fine: the work is idempotent);
2. remove the initializer from ``status.initializers`` with a merge patch pinned to the resourceVersion the watch
   delivered -- a 409 (another initializer, or the shard, wrote meanwhile) means read again and retry, never
   overwrite.

The shard moves the workspace to Ready when the last initializer is gone; it then leaves the view (DELETED).
A workspace's own logical cluster is ``<its kcp.dev/cluster>:<its name>`` (the ClusterWorkspace lives in the
parent). The credentials need ``initialize`` on the WorkspaceType (``workspacetypes``, resourceName = the type) in
the type's workspace and ``get``/``list``/``watch`` on ``workspacetypes`` there; inside the workspaces, what the
type's ``spec.initializerPermissions`` grant (here: create namespaces and configmaps).
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

import structlog
from kubernetes import client
from kubernetes.client.rest import ApiException

from examples.urlfollower import CLUSTER_ANNOTATION, RETRY_SECONDS, URLFollower, URLWorker, kubeconfig_configuration

log = structlog.get_logger("initializer-controller")

GROUP, VERSION = "tenancy.kcp.dev", "v1alpha1"
NAMESPACE = "initialized"
CONFIGMAP = "initialized-by"
WORKERS = 8
_CONFLICT_RETRIES = 10

#: ``on_initialized(url, workspace cluster)``: called once a workspace has been seeded and released.
Observer = Callable[[str, str], None]


def workspace_cluster(workspace: dict) -> str:
    """The logical cluster a ClusterWorkspace of the view stands for: ``<parent>:<name>``."""
    meta = workspace["metadata"]
    return f'{(meta.get("annotations") or {})[CLUSTER_ANNOTATION]}:{meta["name"]}'


class InitializingWorkspacesWatcher(URLWorker):
    """One published URL: watch ``clusters/*``, initialize each workspace with ``workers`` threads."""

    def __init__(self, url: str, base: client.Configuration, initializer: str, *, workers: int = WORKERS,
                 on_initialized: Observer | None = None):
        super().__init__(url, base)
        self.initializer = initializer
        self.on_initialized = on_initialized
        self._queue: queue.Queue = queue.Queue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._work, name=f"initialize {url} {i}", daemon=True)
                        for i in range(workers)]
        self.inform((GROUP, VERSION, "clusterworkspaces"), self._handle)

    def stop(self) -> None:
        super().stop()
        for _ in self.threads:
            self._queue.put(None)

    def _handle(self, kind: str, workspace: dict) -> None:
        if kind not in ("ADDED", "MODIFIED"):
            return   # DELETED: initialized (by us or not), or gone; nothing left to do
        cluster = workspace_cluster(workspace)
        with self._lock:
            if cluster in self._pending:
                return
            self._pending.add(cluster)
        self._queue.put((cluster, workspace))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self.stopped.is_set():
                return
            cluster, workspace = item
            try:
                if self.initialize(cluster, workspace) and self.on_initialized is not None:
                    self.on_initialized(self.url, cluster)
            except Exception as exc:  # the shard restarting, a network blip: again in a while (it stays pending)
                log.warning("initialization failed, retrying", workspace=cluster, error=str(exc))
                retry = threading.Timer(RETRY_SECONDS, self._queue.put, ((cluster, None),))
                retry.daemon = True
                retry.start()
                continue
            with self._lock:
                self._pending.discard(cluster)

    def initialize(self, cluster: str, workspace: dict | None = None) -> bool:
        """Seed ``cluster`` and remove our initializer; False when it was no longer ours to initialize.
        ``workspace`` is its ClusterWorkspace as last seen (None: read it)."""
        api = self.client(cluster)
        try:
            self._seed(client.CoreV1Api(api), cluster)
        except ApiException as exc:
            if exc.status == 403:  # no longer Initializing with us: someone else finished it
                return False
            raise
        return self._remove_initializer(client.CustomObjectsApi(api), cluster, workspace)

    def _seed(self, core: client.CoreV1Api, cluster: str) -> None:
        for create in (lambda: core.create_namespace({"metadata": {"name": NAMESPACE}}),
                       lambda: core.create_namespaced_config_map(NAMESPACE, {
                           "metadata": {"name": CONFIGMAP},
                           "data": {"initializer": self.initializer, "workspace": cluster}})):
            try:
                create()
            except ApiException as exc:
                if exc.status != 409:  # AlreadyExists: an earlier attempt got this far
                    raise

    def _remove_initializer(self, objects: client.CustomObjectsApi, cluster: str, workspace: dict | None) -> bool:
        """A merge patch pinned to the version of ``workspace``; on 409 read the current one and try again."""
        name = cluster.rpartition(":")[2]
        for _ in range(_CONFLICT_RETRIES):
            try:
                if workspace is None:
                    workspace = objects.get_cluster_custom_object(GROUP, VERSION, "clusterworkspaces", name)
                remaining = [i for i in workspace["status"].get("initializers") or () if i != self.initializer]
                objects.patch_cluster_custom_object_status(GROUP, VERSION, "clusterworkspaces", name, {
                    "metadata": {"resourceVersion": workspace["metadata"]["resourceVersion"]},
                    "status": {"initializers": remaining}})
                log.info("initialized", workspace=cluster)
                return True
            except ApiException as exc:
                if exc.status == 404:  # left the view: initialized already, or deleted
                    return False
                if exc.status != 409:
                    raise
                workspace = None
        raise RuntimeError(f"{cluster}: still conflicting after {_CONFLICT_RETRIES} attempts")


class InitializerController(URLFollower):
    """Initializes the workspaces of WorkspaceType ``<type_cluster>:<type_name>`` on every published URL."""

    def __init__(self, base: client.Configuration, type_cluster: str, type_name: str, *, workers: int = WORKERS,
                 on_initialized: Observer | None = None):
        self.initializer = f"{type_cluster}:{type_name}"
        super().__init__(base, type_cluster, (GROUP, VERSION, "workspacetypes"), type_name,
                         worker=lambda url: InitializingWorkspacesWatcher(url, base, self.initializer,
                                                                          workers=workers,
                                                                          on_initialized=on_initialized))

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str, type_cluster: str, type_name: str, *, context: str | None = None,
                        **options) -> "InitializerController":
        return cls(kubeconfig_configuration(kubeconfig, context), type_cluster, type_name, **options)
