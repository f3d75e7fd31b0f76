"""A Widget controller that sees its consumers only through the apiexport virtual workspace.

It follows ``APIExport.status.virtualWorkspaces`` in the provider workspace (``examples.urlfollower``: one
informer per URL -- one per shard -- on ``<url>/clusters/*``, started when a shard's URL appears and stopped
when it goes) and reconciles every Widget an informer is told about by writing ``status.observed`` through
``<url>/clusters/<the widget's workspace>``.

Why the kubernetes client and not kopf: a kcp controller needs two URLs per virtual workspace --
``clusters/*`` to watch and ``clusters/<workspace>`` to write, chosen per object from its
``kcp.dev/cluster`` annotation -- and a changing *list* of virtual workspaces. kopf binds an
operator to one server and patches objects through the URL it watched them on (``clusters/*``
takes no writes), so it would need one process per URL and could not write status. The client's
list+watch is the informer pattern client-go controllers use against kcp, in a page of code.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import structlog
from kubernetes import client
from kubernetes.client.rest import ApiException

from examples.urlfollower import CLUSTER_ANNOTATION, URLFollower, URLWorker, kubeconfig_configuration

log = structlog.get_logger("widget-controller")

APIEXPORTS = ("apis.kcp.dev", "v1alpha1", "apiexports")
GROUP, VERSION, PLURAL = "example.io", "v1", "widgets"

#: ``on_widget(url, cluster, event type, widget)``: every object an informer receives, before it is reconciled.
Observer = Callable[[str, str, str, dict], None]


class WidgetReconciler:
    """What one URL's informer calls: mark every Widget ``status.observed``, through ``<url>/clusters/<cluster>``."""

    def __init__(self, on_widget: Observer | None = None):
        self.on_widget = on_widget
        self.reconciled: dict = {}   # (url, cluster, namespace, name) -> generation written

    def __call__(self, worker: URLWorker, kind: str, widget: dict) -> None:
        meta = widget["metadata"]
        cluster = (meta.get("annotations") or {}).get(CLUSTER_ANNOTATION, "")
        if self.on_widget is not None:
            self.on_widget(worker.url, cluster, kind, widget)
        key = (worker.url, cluster, meta.get("namespace", ""), meta["name"])
        if kind == "DELETED":
            self.reconciled.pop(key, None)
            return
        if (widget.get("status") or {}).get("observed") is True:
            return
        try:
            client.CustomObjectsApi(worker.client(cluster)).patch_namespaced_custom_object_status(
                GROUP, VERSION, key[2], PLURAL, key[3], {"status": {"observed": True}})
            self.reconciled[key] = meta.get("generation")
            log.info("reconciled", cluster=cluster, namespace=key[2], name=key[3])
        except ApiException as exc:
            if exc.status not in (403, 404):   # deleted or unbound meanwhile: the watch will tell
                raise


class WidgetController(URLFollower):
    """Follows ``APIExport <export_cluster>/<export_name>`` with one Widget informer per published URL."""

    def __init__(self, base: client.Configuration, export_cluster: str, export_name: str, *,
                 on_widget: Observer | None = None):
        self.reconciler = WidgetReconciler(on_widget)
        super().__init__(base, export_cluster, APIEXPORTS, export_name, worker=self._widgets)
        self.export_cluster, self.export_name = export_cluster, export_name

    def _widgets(self, url: str) -> URLWorker:
        worker = URLWorker(url, self.base)
        worker.inform((GROUP, VERSION, PLURAL), partial(self.reconciler, worker))
        return worker

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str, export_cluster: str, export_name: str, *, context: str | None = None,
                        on_widget: Observer | None = None) -> "WidgetController":
        return cls(kubeconfig_configuration(kubeconfig, context), export_cluster, export_name, on_widget=on_widget)
