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

import json
import threading
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

import structlog
from kubernetes import client, config
from kubernetes.client.rest import ApiException

log = structlog.get_logger("widget-controller")

APIS_GROUP, APIS_VERSION = "apis.kcp.dev", "v1alpha1"
GROUP, VERSION, PLURAL = "example.io", "v1", "widgets"
CLUSTER_ANNOTATION = "kcp.dev/cluster"
WATCH_SECONDS = 5            # how long one watch call lasts: the bound on noticing stop()
RETRY_SECONDS = 1.0

#: ``on_widget(url, cluster, event type, widget)``: every object a watcher receives, before it is reconciled.
Observer = Callable[[str, str, str, dict], None]


def _configuration(base: client.Configuration, host: str) -> client.Configuration:
    """``base``'s credentials and CA, for another server URL."""
    copy = client.Configuration()
    for name in ("ssl_ca_cert", "cert_file", "key_file", "api_key", "api_key_prefix", "verify_ssl",
                 "assert_hostname", "tls_server_name"):
        if hasattr(base, name):
            setattr(copy, name, getattr(base, name))
    copy.host = host
    return copy


def _close(response) -> None:
    """End a watch another thread is reading (it then sees the stop flag)."""
    if response is not None:
        try:
            response.shutdown() if hasattr(response, "shutdown") else response.close()
        except Exception:  # already closed
            pass


@dataclass
class VirtualWorkspaceWatcher:
    """One URL of the export: list + watch ``clusters/*``, reconcile through ``clusters/<cluster>``."""

    url: str
    base: client.Configuration
    on_widget: Observer | None = None
    stopped: threading.Event = field(default_factory=threading.Event)
    reconciled: dict = field(default_factory=dict)   # (cluster, namespace, name) -> generation written

    def __post_init__(self):
        self.wildcard = client.CustomObjectsApi(client.ApiClient(_configuration(self.base, f"{self.url}/clusters/*")))
        self._writers: dict[str, client.CustomObjectsApi] = {}
        self._response = None   # the open watch, closed by stop() so that it ends now
        self.thread = threading.Thread(target=self._run, name=f"watch {self.url}", daemon=True)

    def start(self) -> "VirtualWorkspaceWatcher":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        _close(self._response)

    def _writer(self, cluster: str) -> client.CustomObjectsApi:
        writer = self._writers.get(cluster)
        if writer is None:
            writer = self._writers[cluster] = client.CustomObjectsApi(client.ApiClient(
                _configuration(self.base, f"{self.url}/clusters/{cluster}")))
        return writer

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                version = self._list()
                while not self.stopped.is_set() and version:
                    version = self._watch(version)
            except Exception as exc:  # the shard restarting, a network blip: list again shortly
                if not self.stopped.is_set():
                    log.warning("watch failed, relisting", url=self.url, error=str(exc))
                    self.stopped.wait(RETRY_SECONDS)

    def _list(self) -> str:
        listed = self.wildcard.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        for widget in listed["items"]:
            self._handle("ADDED", widget)
        return listed["metadata"]["resourceVersion"]

    def _watch(self, version: str) -> str:
        """Watch from ``version``; the version to go on from, or "" when it expired (relist)."""
        response = self.wildcard.list_cluster_custom_object(
            GROUP, VERSION, PLURAL, watch=True, resource_version=version, allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS, _preload_content=False)
        self._response = response
        try:
            for line in response:
                if self.stopped.is_set():
                    break
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    return ""   # 410 Gone: what we knew is too old
                version = obj["metadata"].get("resourceVersion") or version
                if kind != "BOOKMARK":
                    self._handle(kind, obj)
        finally:
            response.release_conn()
        return version

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
        provider = _configuration(base, f"{root.scheme}://{root.netloc}/clusters/{export_cluster}")
        self.provider = client.CustomObjectsApi(client.ApiClient(provider))
        self.watchers: dict[str, VirtualWorkspaceWatcher] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="apiexport", daemon=True)
        self._response = None

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str, export_cluster: str, export_name: str, *, context: str | None = None,
                        on_widget: Observer | None = None) -> "WidgetController":
        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
        return cls(configuration, export_cluster, export_name, on_widget=on_widget)

    def start(self) -> "WidgetController":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        _close(self._response)
        for watcher in self.watchers.values():
            watcher.stop()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)
        for watcher in self.watchers.values():
            watcher.thread.join(timeout)

    def sync_urls(self, export: dict) -> None:
        """One watcher per URL in ``export.status.virtualWorkspaces``, no more."""
        urls = {vw["url"] for vw in (export.get("status") or {}).get("virtualWorkspaces") or () if vw.get("url")}
        for url in urls - self.watchers.keys():
            log.info("watching virtual workspace", url=url)
            self.watchers[url] = VirtualWorkspaceWatcher(url, self.base, self.on_widget).start()
        for url in self.watchers.keys() - urls:
            log.info("virtual workspace gone", url=url)
            self.watchers.pop(url).stop()

    def _run(self) -> None:
        selector = f"metadata.name={self.export_name}"
        while not self.stopped.is_set():
            try:
                listed = self.provider.list_cluster_custom_object(APIS_GROUP, APIS_VERSION, "apiexports",
                                                                   field_selector=selector)
                for export in listed["items"]:
                    self.sync_urls(export)
                version = listed["metadata"]["resourceVersion"]
                response = self.provider.list_cluster_custom_object(
                    APIS_GROUP, APIS_VERSION, "apiexports", field_selector=selector, watch=True,
                    resource_version=version, timeout_seconds=WATCH_SECONDS, _preload_content=False)
                self._response = response
                try:
                    for line in response:
                        if self.stopped.is_set():
                            break
                        if line.strip():
                            event = json.loads(line)
                            if event["type"] in ("ADDED", "MODIFIED"):
                                self.sync_urls(event["object"])
                finally:
                    response.release_conn()
            except Exception as exc:
                if not self.stopped.is_set():
                    log.warning("export watch failed, retrying", error=str(exc))
                    self.stopped.wait(RETRY_SECONDS)
