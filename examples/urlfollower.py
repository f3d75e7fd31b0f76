"""Follow a list of virtual-workspace URLs: one worker per URL, started and stopped as the list changes.

Every kcp object that offers a virtual workspace publishes where it is served, one URL per shard, in
``status.virtualWorkspaces[].url`` -- an APIExport (the apiexport virtual workspace), a WorkspaceType
(initializingworkspaces), a SyncTarget (syncer). With one shard the list has one entry; with several, each
URL serves the workspaces of its own shard only, so a controller must watch every URL, and start watching a
new one (a shard joins) or stop (a shard is removed) without a restart. What every example controller uses:

* ``Informer``: the informer pattern of client-go, in a thread of its own, on one collection (a list function of
  the kubernetes client): LIST, then WATCH from the list's resourceVersion with bookmarks, going on from the last
  version it saw whenever a watch call ends or fails, and LISTing again only when the server says that version is
  gone (410). ``handle(event type, object)`` gets every object: what a list returns as ADDED, what a relist no
  longer has as DELETED (``objects`` is what it knows), then the watch's events. An object whose handler raised
  is delivered again (the watch goes on from before it). Objects are plain dicts, as the server sent them.
* ``URLWorker``: what a controller runs for one URL -- its informers on ``<url>/clusters/*``, and API clients for
  ``<url>/clusters/<workspace>`` to write through, all on one connection pool (one TLS connection per shard, not
  one per workspace); ``stop()`` ends every watch at once (the open response is shut down), ``join()`` waits for
  the threads and closes the pool, so no socket outlives it.
* ``URLFollower``: a ``URLWorker`` on the shard of one object (by name, in one workspace) that keeps ``workers``
  equal to that object's URL list -- ``worker(url)`` makes one for each new URL, started at once, and each URL
  gone has its worker stopped; ``stop()`` and ``join()`` take the workers with them.
* ``run_until_signalled``: a ``__main__``'s life -- run until SIGINT or SIGTERM, then stop and join.

Usage (a controller of an APIExport's Widgets)::

    def widgets(url: str) -> URLWorker:
        worker = URLWorker(url, base)
        worker.inform(("example.io", "v1", "widgets"), lambda kind, widget: ...)   # writes: worker.client(cluster)
        return worker

    follower = URLFollower(base, "root:provider", ("apis.kcp.dev", "v1alpha1", "apiexports"), "widgets",
                           worker=widgets).start()
"""

from __future__ import annotations

import json
import signal
import threading
from functools import partial
from typing import Any, Callable, Protocol
from urllib.parse import urlsplit

import structlog
from kubernetes import client, config
from kubernetes.client.rest import ApiException

log = structlog.get_logger("url-follower")

WATCH_SECONDS = 60           # how long one watch call lasts (the server ends it; stop() does not wait for that)
LIST_SECONDS = 60            # the read timeout of a LIST; a watch's is WATCH_SECONDS + LIST_SECONDS
CONNECT_SECONDS = 10
RETRY_SECONDS = 1.0          # the pause after a failure (the shard restarting, a network blip, a handler error)
CLUSTER_ANNOTATION = "kcp.dev/cluster"

#: (group, version, plural) of a resource
Resource = tuple[str, str, str]
#: ``handle(event type, object)``
Handler = Callable[[str, dict], None]
#: a kubernetes client list function bound to its collection: ``list_call(**kwargs)`` (``watch=True``: a watch)
ListCall = Callable[..., Any]


class Worker(Protocol):
    def start(self) -> Any: ...

    def stop(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...


def kubeconfig_configuration(kubeconfig: str, context: str | None = None) -> client.Configuration:
    """The client configuration of a kubeconfig file's context (its current one by default)."""
    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    return configuration


def configuration_for(base: client.Configuration, host: str) -> client.Configuration:
    """``base``'s credentials and CA, for another server URL."""
    copy = client.Configuration()
    for name in ("ssl_ca_cert", "cert_file", "key_file", "api_key", "api_key_prefix", "verify_ssl",
                 "assert_hostname", "tls_server_name", "proxy"):
        if hasattr(base, name):
            setattr(copy, name, getattr(base, name))
    copy.host = host
    return copy


def published_urls(obj: dict) -> set[str]:
    """The URLs in an object's ``status.virtualWorkspaces``."""
    return {vw["url"] for vw in (obj.get("status") or {}).get("virtualWorkspaces") or ()
            if isinstance(vw, dict) and isinstance(vw.get("url"), str) and vw["url"]}


def object_key(obj: dict) -> tuple[str, str, str]:
    """``(workspace, namespace, name)``: what names an object across the workspaces of a ``clusters/*`` view."""
    meta = obj["metadata"]
    return (meta.get("annotations") or {}).get(CLUSTER_ANNOTATION, ""), meta.get("namespace", ""), meta["name"]


def _finish(response, complete: bool) -> None:
    """Give a response's connection back: to the pool when it was read to its end, else closed (unread bytes
    must not be the next request's answer)."""
    if not complete:
        try:
            response.close()
        except Exception:  # noqa: BLE001 - already closed
            pass
    response.release_conn()


class _HandlerFailed(Exception):
    """``handle`` raised: deliver that event again after a pause, rather than list again."""


class Informer:
    """List + watch of ``list_call``'s collection in a thread of its own (see the module)."""

    def __init__(self, name: str, list_call: ListCall, handle: Handler):
        self.name = name
        self.list_call = list_call
        self.handle = handle
        self.objects: dict[tuple[str, str, str], dict] = {}   # what it knows, by ``object_key``
        self.version = ""      # the resourceVersion to watch from; "" until listed, and after a 410
        self.lists = 0         # LISTs done: one, and one more per expired version
        self.watches = 0       # watch calls made
        self.stopped = threading.Event()
        self._response = None  # the open watch, shut down by stop() so that it ends now
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "Informer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        response = self._response
        if response is not None:
            try:
                response.shutdown()   # wakes the thread blocked reading it
            except Exception:  # noqa: BLE001 - finished meanwhile
                pass

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                if not self.version:
                    self._list()
                self._watch()
            except ApiException as exc:
                if exc.status == 410:   # the watch call itself refused the version: list again now
                    self.version = ""
                else:
                    self._pause(exc)
            except Exception as exc:  # noqa: BLE001 - the shard restarting, a network blip, a handler's error
                self._pause(exc)

    def _pause(self, exc: Exception) -> None:
        if self.stopped.is_set():
            return
        if isinstance(exc, _HandlerFailed):
            log.warning("handler failed, delivering again", informer=self.name, error=str(exc.__cause__))
        else:
            log.warning("list/watch failed, retrying", informer=self.name, error=str(exc),
                        since=self.version or "a new list")
        self.stopped.wait(RETRY_SECONDS)

    def _deliver(self, kind: str, obj: dict) -> None:
        try:
            self.handle(kind, obj)
        except Exception as exc:
            raise _HandlerFailed(str(exc)) from exc
        if kind == "DELETED":
            self.objects.pop(object_key(obj), None)
        else:
            self.objects[object_key(obj)] = obj

    def _list(self) -> None:
        response = self.list_call(_preload_content=False, _request_timeout=(CONNECT_SECONDS, LIST_SECONDS))
        complete = False
        try:
            listed = json.loads(response.data)
            complete = True
        finally:
            _finish(response, complete)
        self.lists += 1
        items = {object_key(obj): obj for obj in listed["items"]}
        for key in [key for key in self.objects if key not in items]:
            self._deliver("DELETED", self.objects[key])   # gone while the version we had expired
        for obj in items.values():
            self._deliver("ADDED", obj)
        self.version = listed["metadata"]["resourceVersion"]

    def _watch(self) -> None:
        """One watch call from ``self.version``, which follows every event delivered and every bookmark."""
        response = self.list_call(watch=True, resource_version=self.version, allow_watch_bookmarks=True,
                                  timeout_seconds=WATCH_SECONDS, _preload_content=False,
                                  _request_timeout=(CONNECT_SECONDS, WATCH_SECONDS + LIST_SECONDS))
        self._response = response
        self.watches += 1
        complete = False
        try:
            if self.stopped.is_set():   # stop() came before the response was there to shut down
                return
            for line in response:
                if self.stopped.is_set():
                    return
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":   # 410 Expired: what we knew is too old; anything else: start afresh too
                    self.version = ""
                    if obj.get("code") != 410:
                        raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
                    return
                if kind != "BOOKMARK":
                    self._deliver(kind, obj)
                self.version = obj["metadata"].get("resourceVersion") or self.version
            complete = True
        finally:
            self._response = None
            _finish(response, complete)


class URLWorker:
    """What runs for one virtual-workspace URL: informers on it, clients into it, one connection pool."""

    def __init__(self, url: str, base: client.Configuration):
        self.url = url
        self.base = base
        self.informers: list[Informer] = []
        self.threads: list[threading.Thread] = []   # a subclass's own threads, started and joined with the rest
        self.stopped = threading.Event()
        self._rest = client.ApiClient(configuration_for(base, url)).rest_client

    def client(self, cluster: str = "*") -> client.ApiClient:
        """An API client for ``<url>/clusters/<cluster>`` on the worker's connection pool."""
        api = client.ApiClient(configuration_for(self.base, f"{self.url}/clusters/{cluster}"))
        api.rest_client = self._rest
        return api

    def inform(self, collection: Resource | ListCall, handle: Handler, *, cluster: str = "*",
               name: str | None = None, **selectors) -> Informer:
        """An informer (started with the worker) of ``collection``: a ``(group, version, plural)`` of custom
        objects in ``<url>/clusters/<cluster>``, narrowed by ``selectors`` (``field_selector=...``), or any
        kubernetes client list function (of an API made with ``client()``)."""
        if isinstance(collection, tuple):
            name = name or collection[2]
            collection = partial(client.CustomObjectsApi(self.client(cluster)).list_cluster_custom_object,
                                 *collection, **selectors)
        informer = Informer(f"{name or 'informer'} {self.url}", collection, handle)
        self.informers.append(informer)
        return informer

    def start(self) -> "URLWorker":
        for runner in (*self.informers, *self.threads):
            runner.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        for informer in self.informers:
            informer.stop()

    def join(self, timeout: float | None = None) -> None:
        """Wait for every thread (``timeout`` for each); once stopped, close the connection pool."""
        for runner in (*self.informers, *self.threads):
            runner.join(timeout)
        if self.stopped.is_set():
            self._rest.close()

    @property
    def alive(self) -> bool:
        return any(informer.alive for informer in self.informers) or any(t.is_alive() for t in self.threads)


class URLFollower(URLWorker):
    """Keeps one ``worker(url)`` per URL that object ``name`` of ``resource`` in workspace ``cluster`` publishes."""

    def __init__(self, base: client.Configuration, cluster: str, resource: Resource, name: str, *,
                 worker: Callable[[str], Worker]):
        root = urlsplit(base.host)
        super().__init__(f"{root.scheme}://{root.netloc}", base)
        self.new_worker = worker
        self.workers: dict[str, Worker] = {}
        self._retired: list[Worker] = []   # stopped for a URL gone, joined by join() (or once they have ended)
        self._lock = threading.Lock()
        self.inform(resource, self._changed, cluster=cluster, name=f"follow {resource[2]} {cluster}:{name}",
                    field_selector=f"metadata.name={name}")

    def _changed(self, kind: str, obj: dict) -> None:
        self.sync(set() if kind == "DELETED" else published_urls(obj))

    def sync(self, urls: set[str]) -> None:
        """One worker per URL in ``urls``, no more."""
        with self._lock:
            if self.stopped.is_set():
                return
            for url in sorted(urls - self.workers.keys()):
                log.info("following virtual workspace", url=url)
                self.workers[url] = self.new_worker(url)
                self.workers[url].start()
            for url in sorted(self.workers.keys() - urls):
                log.info("virtual workspace gone", url=url)
                gone = self.workers.pop(url)
                gone.stop()
                self._retired.append(gone)
            for ended in [w for w in self._retired if not getattr(w, "alive", True)]:
                ended.join(0)   # closes its pool
                self._retired.remove(ended)

    def stop(self) -> None:
        with self._lock:
            super().stop()
            for worker in (*self.workers.values(), *self._retired):
                worker.stop()

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        with self._lock:
            workers = [*self.workers.values(), *self._retired]
        for worker in workers:
            worker.join(timeout)


def run_until_signalled(worker: Worker, banner: str) -> int:
    """Print ``banner``, run until SIGINT or SIGTERM, then stop the started ``worker`` and wait for it (a
    ``__main__``'s body)."""
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(banner, flush=True)
    done.wait()
    worker.stop()
    worker.join(10)
    return 0
