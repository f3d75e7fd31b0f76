"""What the example controllers share: informer-style list+watch loops with the kubernetes client, and following
the virtual-workspace URLs an object publishes.

* ``ListWatch`` lists, then watches from the list's resourceVersion (with bookmarks, in short watch calls so that
  ``stop()`` is noticed), and lists again on ``410 Gone`` or any error -- the informer pattern client-go
  controllers use against kcp, in a page;
* ``PublishedURLs`` follows one object's ``status.virtualWorkspaces[].url`` (an APIExport's, a SyncTarget's):
  one worker per URL, started when the URL appears and stopped when it goes (a shard added or removed).

Every call goes through the kubernetes client's own functions with ``_preload_content=False``: objects stay
plain dicts, as the server sent them, for every resource alike.
"""

from __future__ import annotations

import json
import signal
import threading
from typing import Any, Callable, Protocol

import structlog
from kubernetes import client

__all__ = ["configuration_for", "ListWatch", "PublishedURLs", "run_until_signalled", "WATCH_SECONDS",
           "RETRY_SECONDS"]

log = structlog.get_logger("examples")

WATCH_SECONDS = 5            # how long one watch call lasts: the bound on noticing stop()
RETRY_SECONDS = 1.0

#: ``handle(event type, object)``: ADDED for each listed object, then the watch's ADDED, MODIFIED and DELETED.
Handler = Callable[[str, dict], None]


def configuration_for(base: client.Configuration, host: str) -> client.Configuration:
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


class ListWatch:
    """List + watch with ``list_call`` (a kubernetes client list function, its positional arguments bound) in a
    thread of its own, handing every object to ``handle``; ``on_list(items)`` replaces the ADDED events of a list
    when given (an informer that must forget what a relist no longer has)."""

    def __init__(self, name: str, list_call: Callable[..., Any], handle: Handler, *,
                 on_list: Callable[[list[dict]], None] | None = None):
        self.name = name
        self.list_call = list_call
        self.handle = handle
        self.on_list = on_list
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
                version = self._list()
                while not self.stopped.is_set() and version:
                    version = self._watch(version)
            except Exception as exc:  # the shard restarting, a network blip: list again shortly
                if not self.stopped.is_set():
                    log.warning("watch failed, relisting", watch=self.name, error=str(exc))
                    self.stopped.wait(RETRY_SECONDS)

    def _list(self) -> str:
        listed = json.loads(self.list_call(_preload_content=False).data)
        if self.on_list is not None:
            self.on_list(listed["items"])
        else:
            for obj in listed["items"]:
                self.handle("ADDED", obj)
        return listed["metadata"]["resourceVersion"]

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


class Worker(Protocol):
    def stop(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...


def run_until_signalled(worker: Worker, banner: str) -> int:
    """Print ``banner``, run until SIGINT or SIGTERM, then stop ``worker`` and wait for it (a ``__main__``'s body)."""
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(banner, flush=True)
    done.wait()
    worker.stop()
    worker.join(10)
    return 0


class PublishedURLs:
    """One ``start_worker(url)`` per URL in the ``status.virtualWorkspaces`` of the object ``list_call`` lists
    (narrowed to it by a field selector), no more; ``workers`` maps each URL to its worker."""

    def __init__(self, name: str, list_call: Callable[..., Any], start_worker: Callable[[str], Worker]):
        self.start_worker = start_worker
        self.workers: dict[str, Worker] = {}
        self._lock = threading.Lock()
        self.watch = ListWatch(name, list_call, self._handle)

    def start(self) -> "PublishedURLs":
        self.watch.start()
        return self

    def stop(self) -> None:
        self.watch.stop()
        with self._lock:
            for worker in self.workers.values():
                worker.stop()

    def join(self, timeout: float | None = None) -> None:
        self.watch.join(timeout)
        for worker in list(self.workers.values()):
            worker.join(timeout)

    def _handle(self, kind: str, obj: dict) -> None:
        urls = set() if kind == "DELETED" else {
            vw["url"] for vw in (obj.get("status") or {}).get("virtualWorkspaces") or () if vw.get("url")}
        with self._lock:
            if self.watch.stopped.is_set():
                return
            for url in urls - self.workers.keys():
                log.info("watching virtual workspace", url=url)
                self.workers[url] = self.start_worker(url)
            for url in self.workers.keys() - urls:
                log.info("virtual workspace gone", url=url)
                self.workers.pop(url).stop()
