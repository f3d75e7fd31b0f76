"""Follow a list of virtual-workspace URLs: one worker per URL, started and stopped as the list changes.

Every kcp object that offers a virtual workspace publishes where it is served, one URL per shard, in
``status.virtualWorkspaces[].url`` -- an APIExport (the apiexport virtual workspace), a WorkspaceType
(initializingworkspaces), a SyncTarget (syncer). With one shard the list has one entry; with several, each
URL serves the workspaces of its own shard only, so a controller must watch every URL, and start watching a
new one (a shard joins) or stop (a shard is removed) without a restart. Two pieces, for any example controller:

* ``URLFollower``: list+watch one object (by name, in one workspace) and keep ``workers`` equal to its URL
  list -- ``start(url)`` makes and starts a worker for each new URL, ``worker.stop()`` ends each one gone;
  ``stop()`` ends them all.
* ``Informer``: the usual worker, a client-go-style informer of one resource at ``<url>/clusters/*``: LIST,
  then WATCH from the list's resourceVersion with bookmarks, relisting on 410 Gone or any error, calling
  ``handle(url, event type, object)`` for every object it sees (ADDED for what the list returns).

Both run in threads with the blocking ``kubernetes`` client; a watch call lasts ``WATCH_SECONDS`` at most, so
``stop()`` takes effect within that (it also closes the open watch at once)::

    follower = URLFollower(provider_configuration, "root:provider", ("apis.kcp.dev", "v1alpha1", "apiexports"),
                           "widgets", start=lambda url: Informer(url, base, ("example.io", "v1", "widgets"),
                                                                 handle).start()).start()
"""

from __future__ import annotations

import abc
import json
import threading
from typing import Callable, Protocol
from urllib.parse import urlsplit

import structlog
from kubernetes import client

log = structlog.get_logger("url-follower")

WATCH_SECONDS = 5            # how long one watch call lasts: the bound on noticing stop()
RETRY_SECONDS = 1.0

#: (group, version, plural) of a resource
Resource = tuple[str, str, str]
#: ``handle(url, event type, object)``
Handler = Callable[[str, str, dict], None]


class Worker(Protocol):
    def stop(self) -> None: ...


def configuration_for(base: client.Configuration, host: str) -> client.Configuration:
    """``base``'s credentials and CA, for another server URL."""
    copy = client.Configuration()
    for name in ("ssl_ca_cert", "cert_file", "key_file", "api_key", "api_key_prefix", "verify_ssl",
                 "assert_hostname", "tls_server_name"):
        if hasattr(base, name):
            setattr(copy, name, getattr(base, name))
    copy.host = host
    return copy


def published_urls(obj: dict) -> set[str]:
    """The URLs in an object's ``status.virtualWorkspaces``."""
    return {vw["url"] for vw in (obj.get("status") or {}).get("virtualWorkspaces") or ()
            if isinstance(vw, dict) and isinstance(vw.get("url"), str) and vw["url"]}


def _close(response) -> None:
    """End a watch another thread is reading (it then sees the stop flag)."""
    if response is not None:
        try:
            response.shutdown() if hasattr(response, "shutdown") else response.close()
        except Exception:  # noqa: BLE001 - already closed
            pass


class _Watching(abc.ABC):
    """A thread that lists and watches until ``stop()``."""

    def __init__(self, name: str):
        self.stopped = threading.Event()
        self._response = None  # the open watch, closed by stop() so that it ends now
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        _close(self._response)

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def _loop(self) -> None:
        while not self.stopped.is_set():
            try:
                version = self._list()
                while not self.stopped.is_set() and version:
                    version = self._watch(version)
            except Exception as exc:  # a shard restarting, a network blip: list again shortly
                if not self.stopped.is_set():
                    log.warning("watch failed, relisting", worker=self.thread.name, error=str(exc))
                    self.stopped.wait(RETRY_SECONDS)

    def _events(self, response, version: str):
        """The events of one watch call (``(type, object)``), tracking ``self.version``; ends on ERROR (410)."""
        self._response = response
        self.version = version
        try:
            for line in response:
                if self.stopped.is_set():
                    return
                if not line.strip():
                    continue
                event = json.loads(line)
                if event["type"] == "ERROR":
                    self.version = ""   # 410 Gone: what we knew is too old
                    return
                self.version = event["object"]["metadata"].get("resourceVersion") or self.version
                yield event["type"], event["object"]
        finally:
            response.release_conn()

    @abc.abstractmethod
    def _list(self) -> str:
        """LIST and handle what it returns; the list's resourceVersion."""

    @abc.abstractmethod
    def _watch(self, version: str) -> str:
        """One WATCH call from ``version``; the version to go on from ("": relist)."""


class Informer(_Watching):
    """List+watch ``resource`` at ``<url>/clusters/*``; ``handle(url, type, object)`` for each object seen."""

    def __init__(self, url: str, base: client.Configuration, resource: Resource, handle: Handler):
        super().__init__(f"informer {url}")
        self.url = url
        self.resource = resource
        self.handle = handle
        self.api = client.CustomObjectsApi(client.ApiClient(configuration_for(base, f"{url}/clusters/*")))

    def _list(self) -> str:
        listed = self.api.list_cluster_custom_object(*self.resource)
        for obj in listed["items"]:
            self.handle(self.url, "ADDED", obj)
        return listed["metadata"]["resourceVersion"]

    def _watch(self, version: str) -> str:
        """Watch from ``version``; the version to go on from, or "" when it expired (relist)."""
        response = self.api.list_cluster_custom_object(
            *self.resource, watch=True, resource_version=version, allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS, _preload_content=False)
        for kind, obj in self._events(response, version):
            if kind != "BOOKMARK":
                self.handle(self.url, kind, obj)
        return self.version


class URLFollower(_Watching):
    """Keeps one worker per URL that object ``name`` of ``resource`` in workspace ``cluster`` publishes."""

    def __init__(self, base: client.Configuration, cluster: str, resource: Resource, name: str, *,
                 start: Callable[[str], Worker]):
        super().__init__(f"follow {resource[2]} {cluster}:{name}")
        root = urlsplit(base.host)
        self.api = client.CustomObjectsApi(client.ApiClient(
            configuration_for(base, f"{root.scheme}://{root.netloc}/clusters/{cluster}")))
        self.resource, self.name = resource, name
        self.start_worker = start
        self.workers: dict[str, Worker] = {}
        self._lock = threading.Lock()

    def stop(self) -> None:
        super().stop()
        with self._lock:
            for worker in self.workers.values():
                worker.stop()

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        for worker in list(self.workers.values()):
            join = getattr(worker, "join", None)
            if join is not None:
                join(timeout)

    def sync(self, urls: set[str]) -> None:
        """One worker per URL in ``urls``, no more."""
        with self._lock:
            if self.stopped.is_set():
                return
            for url in sorted(urls - self.workers.keys()):
                log.info("following virtual workspace", url=url)
                self.workers[url] = self.start_worker(url)
            for url in sorted(self.workers.keys() - urls):
                log.info("virtual workspace gone", url=url)
                self.workers.pop(url).stop()

    def _list(self) -> str:
        listed = self.api.list_cluster_custom_object(*self.resource, field_selector=f"metadata.name={self.name}")
        self.sync(set().union(*(published_urls(obj) for obj in listed["items"])))
        return listed["metadata"]["resourceVersion"]

    def _watch(self, version: str) -> str:
        response = self.api.list_cluster_custom_object(
            *self.resource, field_selector=f"metadata.name={self.name}", watch=True, resource_version=version,
            allow_watch_bookmarks=True, timeout_seconds=WATCH_SECONDS, _preload_content=False)
        for kind, obj in self._events(response, version):
            if kind in ("ADDED", "MODIFIED"):
                self.sync(published_urls(obj))
            elif kind == "DELETED":
                self.sync(set())
        return self.version
