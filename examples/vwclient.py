"""What every controller of a kcp virtual workspace needs, with the kubernetes client: the informer pattern on one
collection, and the list of virtual-workspace URLs an object publishes, followed as it changes.

* ``ListWatch`` lists a collection, then watches it from the list's ``resourceVersion`` (bookmarks on), relisting
  on ``410 Gone`` and after errors, and hands every object to ``handle(event type, object)`` (the list's objects as
  ADDED), in a thread of its own.
* ``PublishedURLs`` does that for one object -- an APIExport, a WorkspaceType -- and keeps one watcher per URL in
  its ``status.virtualWorkspaces``: a URL that appears (a new shard) gets one, a URL that goes loses it.

Used by ``examples.widget_controller`` (apiexport) and ``examples.initializer_controller`` (initializingworkspaces).
"""

from __future__ import annotations

import json
import signal
import threading
from typing import Any, Callable, Protocol
from urllib.parse import urlsplit

import structlog
from kubernetes import client

log = structlog.get_logger("vwclient")

WATCH_SECONDS = 5            # how long one watch call lasts: the bound on noticing stop()
RETRY_SECONDS = 1.0

#: ``list_call(**kwargs)``: a kubernetes client list method bound to its collection (``watch=True`` makes it a watch).
ListCall = Callable[..., Any]
Handler = Callable[[str, dict], None]


def configuration(base: client.Configuration, host: str) -> client.Configuration:
    """``base``'s credentials and CA, for another server URL."""
    copy = client.Configuration()
    for name in ("ssl_ca_cert", "cert_file", "key_file", "api_key", "api_key_prefix", "verify_ssl",
                 "assert_hostname", "tls_server_name"):
        if hasattr(base, name):
            setattr(copy, name, getattr(base, name))
    copy.host = host
    return copy


def custom_objects(base: client.Configuration, host: str) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(client.ApiClient(configuration(base, host)))


def _close(response) -> None:
    """End a watch another thread is reading (it then sees the stop flag)."""
    if response is not None:
        try:
            response.shutdown() if hasattr(response, "shutdown") else response.close()
        except Exception:  # already closed
            pass


class ListWatch:
    """List + watch of ``list_call``'s collection in a thread; every object goes to ``handle`` (see the module)."""

    def __init__(self, list_call: ListCall, handle: Handler, *, name: str):
        self.list_call = list_call
        self.handle = handle
        self.name = name
        self.stopped = threading.Event()
        self._response = None   # the open watch, closed by stop() so that it ends now
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "ListWatch":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        _close(self._response)

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                listed = self.list_call()
                for obj in listed["items"]:
                    self.handle("ADDED", obj)
                version = listed["metadata"]["resourceVersion"]
                while not self.stopped.is_set() and version:
                    version = self._watch(version)
            except Exception as exc:  # the shard restarting, a network blip: list again shortly
                if not self.stopped.is_set():
                    log.warning("list/watch failed, relisting", watcher=self.name, error=str(exc))
                    self.stopped.wait(RETRY_SECONDS)

    def _watch(self, version: str) -> str:
        """Watch from ``version``; the version to go on from, or "" when it expired (relist)."""
        response = self.list_call(watch=True, resource_version=version, allow_watch_bookmarks=True,
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
                    self.handle(kind, obj)
        finally:
            response.release_conn()
        return version


class Watcher(Protocol):
    def start(self) -> Any: ...

    def stop(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...


class PublishedURLs:
    """Follows ``status.virtualWorkspaces`` of the ``plural`` object ``name`` (group/version) in ``cluster`` and
    keeps ``watchers[url] = watch_url(url)`` started for exactly the URLs listed there."""

    def __init__(self, base: client.Configuration, cluster: str, group: str, version: str, plural: str, name: str,
                 watch_url: Callable[[str], Watcher]):
        root = urlsplit(base.host)
        objects = custom_objects(base, f"{root.scheme}://{root.netloc}/clusters/{cluster}")
        self.watch_url = watch_url
        self.watchers: dict[str, Watcher] = {}
        self._lock = threading.Lock()
        self._stopped = False
        self.list_watch = ListWatch(
            lambda **kwargs: objects.list_cluster_custom_object(group, version, plural,
                                                                field_selector=f"metadata.name={name}", **kwargs),
            self._changed, name=f"{plural} {cluster}:{name}")

    def start(self) -> "PublishedURLs":
        self.list_watch.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            watchers = list(self.watchers.values())
        self.list_watch.stop()
        for watcher in watchers:
            watcher.stop()

    def join(self, timeout: float | None = None) -> None:
        self.list_watch.join(timeout)
        for watcher in list(self.watchers.values()):
            watcher.join(timeout)

    def _changed(self, kind: str, obj: dict) -> None:
        if kind not in ("ADDED", "MODIFIED"):
            return
        urls = {vw["url"] for vw in (obj.get("status") or {}).get("virtualWorkspaces") or () if vw.get("url")}
        with self._lock:
            if self._stopped:
                return
            for url in urls - self.watchers.keys():
                log.info("watching virtual workspace", url=url)
                self.watchers[url] = self.watch_url(url).start()
            for url in self.watchers.keys() - urls:
                log.info("virtual workspace gone", url=url)
                self.watchers.pop(url).stop()


def run_until_signalled(controller: Any, banner: str) -> int:
    """``controller.start()``, print ``banner``, wait for SIGINT or SIGTERM, then stop it (a ``__main__``'s life)."""
    controller.start()
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(banner, flush=True)
    done.wait()
    controller.stop()
    controller.join(10)
    return 0
