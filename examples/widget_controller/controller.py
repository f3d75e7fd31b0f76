"""A Widget controller that sees its consumers only through the apiexport virtual workspace.

It reads ``APIExport.status.virtualWorkspaces`` in the provider workspace, runs one informer-style
watcher (list, then watch from the list's resourceVersion, relist on 410) per URL on
``<url>/clusters/*``, and reconciles every Widget it is told about by writing ``status.observed``
through ``<url>/clusters/<the widget's workspace>``. The export itself is watched too, so URLs
that appear (a new shard) get a watcher and URLs that disappear lose theirs.

Why the kubernetes client and not kopf: a kcp controller needs two URLs per virtual workspace --
``clusters/*`` to watch and ``clusters/<workspace>`` to write, chosen per object from its
``kcp.dev/cluster`` annotation -- and a changing *list* of virtual workspaces. kopf binds an
operator to one server and patches objects through the URL it watched them on (``clusters/*``
takes no writes), so it would need one process per URL and could not write status. The client's
list+watch is the informer pattern client-go controllers use against kcp, in a page of code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable
from urllib.parse import urlsplit

import structlog
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from examples.informer import ListWatch, PublishedURLs, configuration_for

log = structlog.get_logger("widget-controller")

APIS_GROUP, APIS_VERSION = "apis.kcp.dev", "v1alpha1"
GROUP, VERSION, PLURAL = "example.io", "v1", "widgets"
CLUSTER_ANNOTATION = "kcp.dev/cluster"

#: ``on_widget(url, cluster, event type, widget)``: every object a watcher receives, before it is reconciled.
Observer = Callable[[str, str, str, dict], None]


@dataclass
class VirtualWorkspaceWatcher:
    """One URL of the export: list + watch ``clusters/*``, reconcile through ``clusters/<cluster>``."""

    url: str
    base: client.Configuration
    on_widget: Observer | None = None
    reconciled: dict = field(default_factory=dict)   # (cluster, namespace, name) -> generation written

    def __post_init__(self):
        wildcard = client.CustomObjectsApi(client.ApiClient(configuration_for(self.base, f"{self.url}/clusters/*")))
        self._writers: dict[str, client.CustomObjectsApi] = {}
        self.informer = ListWatch(f"watch {self.url}", partial(wildcard.list_cluster_custom_object, GROUP, VERSION,
                                                               PLURAL), self._handle)
        self.thread = self.informer.thread

    def start(self) -> "VirtualWorkspaceWatcher":
        self.informer.start()
        return self

    def stop(self) -> None:
        self.informer.stop()

    def join(self, timeout: float | None = None) -> None:
        self.informer.join(timeout)

    def _writer(self, cluster: str) -> client.CustomObjectsApi:
        writer = self._writers.get(cluster)
        if writer is None:
            writer = self._writers[cluster] = client.CustomObjectsApi(client.ApiClient(
                configuration_for(self.base, f"{self.url}/clusters/{cluster}")))
        return writer

    def _handle(self, kind: str, widget: dict) -> None:
        meta = widget["metadata"]
        cluster = (meta.get("annotations") or {}).get(CLUSTER_ANNOTATION, "")
        if self.on_widget is not None:
            self.on_widget(self.url, cluster, kind, widget)
        key = (cluster, meta.get("namespace", ""), meta["name"])
        if kind == "DELETED":
            self.reconciled.pop(key, None)
            return
        if (widget.get("status") or {}).get("observed") is True:
            return
        try:
            self._writer(cluster).patch_namespaced_custom_object_status(
                GROUP, VERSION, key[1], PLURAL, key[2], {"status": {"observed": True}})
            self.reconciled[key] = meta.get("generation")
            log.info("reconciled", cluster=cluster, namespace=key[1], name=key[2])
        except ApiException as exc:
            if exc.status not in (403, 404):   # deleted or unbound meanwhile: the watch will tell
                raise


class WidgetController:
    """Watches ``APIExport <export_cluster>/<export_name>`` and keeps one watcher per published URL."""

    def __init__(self, base: client.Configuration, export_cluster: str, export_name: str, *,
                 on_widget: Observer | None = None):
        self.base = base
        self.export_cluster, self.export_name = export_cluster, export_name
        self.on_widget = on_widget
        root = urlsplit(base.host)
        provider = client.CustomObjectsApi(client.ApiClient(
            configuration_for(base, f"{root.scheme}://{root.netloc}/clusters/{export_cluster}")))
        self.urls = PublishedURLs("apiexport", partial(provider.list_cluster_custom_object, APIS_GROUP, APIS_VERSION,
                                                       "apiexports", field_selector=f"metadata.name={export_name}"),
                                  lambda url: VirtualWorkspaceWatcher(url, self.base, self.on_widget).start())

    @property
    def watchers(self) -> dict[str, VirtualWorkspaceWatcher]:
        return self.urls.workers

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str, export_cluster: str, export_name: str, *, context: str | None = None,
                        on_widget: Observer | None = None) -> "WidgetController":
        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
        return cls(configuration, export_cluster, export_name, on_widget=on_widget)

    def start(self) -> "WidgetController":
        self.urls.start()
        return self

    def stop(self) -> None:
        self.urls.stop()

    def join(self, timeout: float | None = None) -> None:
        self.urls.join(timeout)
