"""In-memory object store with write-through durability and an in-process watch log.

This is kube-apiserver's "watch cache" made authoritative: one process owns the data, so
every current object lives in memory, reads and lists never touch the backend, and watches
are served from a bounded per-resource event history. The backend only makes writes durable
and assigns resourceVersions (SQLite, or etcd: ``server.storage.etcd`` says why memory stays
authoritative there too); it is asked directly only for a list at a past resourceVersion, and to
settle a write whose outcome it could not report (``_settle``).

Concurrency model (gevent): a write validates against memory, yields only while the backend
write is in flight, and everything after it (rv stamping, the in-memory update, the event append,
waking watchers) happens without a greenlet switch, so readers always see memory and the
event log agree, and ``list()`` is an atomic snapshot. On a backend that commits groups of writes
(``submit``: SQLite) writes to different keys are in flight together -- one per key, none in a cluster
while its template instance is being made or dropped (``_claim``) -- and the backend applies each to memory
(``_commit``) in commit order right after the group's commit; on the others (etcd) one lock serializes
them.

Objects handed out by ``get``/``list``/write methods and carried by events are the stored
dicts themselves, shared with every reader: callers must treat them as read-only and copy
before changing anything.
"""

from __future__ import annotations

import sys
import time
from bisect import bisect_right
from contextlib import ExitStack, contextmanager
from typing import Any, NamedTuple, Protocol

import gevent
import gevent.event
import gevent.lock
import orjson
import structlog
from gevent import getcurrent, get_hub

from .backend import Backend, decode_key, encode_key, key_prefix
from .templates import INSTANCES, TEMPLATES, TOMBSTONE, Instance, Template, TemplateObject
from .errors import (ConflictError, KeyExistsError, KeyNotFoundError, ResourceExpiredError, StorageError,
                     StorageUnavailableError)

log_exception = structlog.get_logger("kcp.storage").exception

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"


class Key(NamedTuple):
    """Address of one object; ``resource`` is opaque (``"apps/deployments"``, ``"core/configmaps"``)."""

    resource: str
    cluster: str
    namespace: str  # "" for cluster-scoped objects
    name: str


class Event:
    """One committed write, shared by every watcher that receives it."""

    __slots__ = ("type", "rv", "key", "obj", "prev", "ts", "_line")

    def __init__(self, type: str, rv: int, key: Key, obj: dict, prev: dict | None, ts: float = 0.0):
        self.type = type
        self.rv = rv
        self.key = key
        self.obj = obj
        # The object before this write: lets a filtered watch turn "stopped matching" into DELETED.
        self.prev = prev
        self.ts = ts  # time.monotonic() of the commit, for age-based history trimming
        self._line = None

    def line(self) -> bytes:
        """The watch-stream line, serialized once per event rather than once per watcher."""
        line = self._line
        if line is None:
            line = self._line = orjson.dumps({"type": self.type, "object": self.obj}) + b"\n"
        return line

    encoded = line  # what a watch stream asks of an event (``watchstream.json_line``)

    @property
    def object(self) -> dict:
        """The object as a watch event carries it (a watcher is handed the store's own events)."""
        return self.obj

    def __repr__(self) -> str:
        return f"Event({self.type}, rv={self.rv}, key={tuple(self.key)!r})"


def _entry_key(cluster: str, instance_name: str, entry: TemplateObject) -> Key:
    """The key of a template object in the instance ``instance_name`` (``""``: the default content) of ``cluster``."""
    return Key(entry.resource, cluster, entry.namespace, entry.name_in(instance_name))


class _TemplateEvent:
    """An event of a template object (``server.storage.templates``), as an :class:`Event` behaves: its object and key
    are made when asked for, so the watch history of a thousand new workspaces holds neither a thousand copies of
    the default content nor a key each (and no slots for them: about 80 bytes an event)."""

    __slots__ = ("type", "rv", "ts", "_line", "_instance", "_entry")

    def __init__(self, type: str, rv: int, instance: Instance, entry: TemplateObject, ts: float):
        self.type, self.rv, self.ts, self._line = type, rv, ts, None
        self._instance, self._entry = instance, entry

    line = encoded = Event.line
    object = Event.object
    __repr__ = Event.__repr__

    @property
    def key(self) -> Key:  # made when asked for too: the history of 100,000 workspaces holds no key tuple each
        return _entry_key(self._instance.cluster, self._instance.name, self._entry)

    @property
    def obj(self) -> dict:
        return self._instance.materialize(self._entry, self.rv if self.type is DELETED else None)

    @property
    def prev(self) -> dict | None:
        return self._instance.materialize(self._entry) if self.type is DELETED else None


class _Log:
    """Per-resource event history plus the broadcast that wakes that resource's watchers.

    ``offset`` counts events ever trimmed, so a watcher's absolute position stays valid across
    trims; ``signal`` is replaced on every append and the old one set, so one ``set()`` wakes
    all waiters and no per-watcher queue is needed.
    """

    __slots__ = ("events", "rvs", "offset", "oldest_rv", "signal", "subscribers", "delivering")

    def __init__(self, oldest_rv: int):
        self.events: list[Event] = []
        self.rvs: list[int] = []  # parallel to events, for bisect
        self.offset = 0
        self.oldest_rv = oldest_rv  # a watch from any rv >= this misses nothing
        self.signal = gevent.event.Event()
        # Watchers that are handed their events (``Watcher.subscribe``), in subscription order.
        self.subscribers: dict[Watcher, None] = {}
        self.delivering = False

    def wake(self) -> None:
        signal = self.signal
        if signal.linkcount():
            self.signal = gevent.event.Event()
            signal.set()
        if self.subscribers and not self.delivering:
            self.delivering = True
            get_hub().loop.run_callback(self.deliver)

    def deliver(self) -> None:
        """Hand every subscriber what it has not had yet: one pass in a hub callback, after the write that woke
        it (and any other in the same loop turn) -- nothing in it may block."""
        try:
            for watcher in list(self.subscribers):
                watcher.push()
        finally:
            self.delivering = False


class _Interrupted(BaseException):
    """Thrown into a greenlet blocked in ``Watcher.next`` when another greenlet closes the watcher."""


def _expired(since_rv: int, oldest_rv: int) -> ResourceExpiredError:
    return ResourceExpiredError(f"too old resource version: {since_rv} ({oldest_rv})")


class Subscriber(Protocol):
    """What ``Watcher.subscribe`` hands events to."""

    def store_events(self, events: list["Event"]) -> None: ...

    def store_ended(self, error: BaseException | None) -> None: ...


class Watcher:
    """A cursor into one resource's event log; holds no queue and no greenlet (about 150 bytes)."""

    __slots__ = ("_store", "_log", "resource", "cluster", "namespace", "_rv", "_pos", "_closed", "_waiting",
                 "_subscriber")

    def __init__(self, store: "Store", log: _Log, resource: str, cluster: str | None,
                 namespace: str | None, since_rv: int, pos: int):
        self._store = store
        self._log = log
        self.resource = resource
        self.cluster = cluster
        self.namespace = namespace
        self._rv = since_rv  # highest rv examined; only events above it are delivered
        self._pos = pos  # absolute index (log.offset-relative) of the next event to examine
        self._closed = False
        self._waiting = None  # the greenlet blocked in next(), so close() can interrupt it
        self._subscriber: Subscriber | None = None
        store._watchers += 1

    @property
    def rv(self) -> int:
        """The highest resourceVersion this watcher has examined (delivered or filtered out)."""
        return self._rv

    @property
    def closed(self) -> bool:
        return self._closed or self._store._closed

    def progress_rv(self) -> int:
        """A resourceVersion safe for a BOOKMARK: everything up to it has been delivered."""
        log = self._log
        if self._pos - log.offset == len(log.events):
            return max(self._rv, self._store._rv)
        return self._rv

    def take(self) -> list[Event]:
        """The matching events after the last delivered one, in rv order, without waiting (maybe none).

        Raises :class:`ResourceExpiredError` if the history it still needed has been trimmed.
        """
        log = self._log
        start = self._pos - log.offset
        if start < 0:
            raise _expired(self._rv, log.oldest_rv)
        events = log.events
        end = len(events)
        if start >= end:
            return []
        floor = self._rv
        cluster = self.cluster
        namespace = self.namespace
        batch = events[start:end] if start else events[:]
        if cluster is None and namespace is None:
            out = [e for e in batch if e.rv > floor]
        elif namespace is None:
            out = [e for e in batch if e.rv > floor and e.key.cluster == cluster]
        elif cluster is None:
            out = [e for e in batch if e.rv > floor and e.key.namespace == namespace]
        else:
            out = [e for e in batch if e.rv > floor and e.key.cluster == cluster and e.key.namespace == namespace]
        self._pos = log.offset + end
        last = events[end - 1].rv
        if last > floor:
            self._rv = last
        return out

    def subscribe(self, subscriber: "Subscriber") -> None:
        """Hand ``subscriber`` the events from now on instead of being asked for them: ``store_events(events)``
        from the store's fan-out (a hub callback: it must not block), once for what is already there too;
        ``store_ended(error)`` once, with a :class:`ResourceExpiredError` when the history it needed was
        trimmed, None when the store closed. ``close()`` unsubscribes. No greenlet waits: the point, for an idle
        watch (and an object with methods rather than two callbacks: two bound methods fewer per idle watch)."""
        self._subscriber = subscriber
        log = self._log
        log.subscribers[self] = None
        if self._pos - log.offset < len(log.events) and not log.delivering:
            log.delivering = True
            get_hub().loop.run_callback(log.deliver)

    def push(self) -> None:
        """Hand the subscriber its new events (``subscribe``)."""
        if self._closed:
            return
        if self._store._closed:
            self._finish(None)
            return
        try:
            events = self.take()
        except ResourceExpiredError as exc:
            self._finish(exc)
            return
        if events:
            try:
                self._subscriber.store_events(events)
            except Exception:  # noqa: BLE001 - one broken consumer must not stop the fan-out to the others
                log_exception("watch subscriber failed", resource=self.resource)
                self.close()

    def _finish(self, error: BaseException | None) -> None:
        subscriber = self._subscriber
        self.close()
        if subscriber is not None:
            subscriber.store_ended(error)

    def next(self, timeout: float | None) -> list[Event]:
        """Matching events after the last delivered one, in rv order; waits up to ``timeout``
        seconds (``None``: until there are some).

        Returns ``[]`` on timeout or once the watcher or the store is closed; raises
        :class:`ResourceExpiredError` if the history it still needed has been trimmed.
        """
        log = self._log
        deadline = None
        while True:
            if self._closed or self._store._closed:
                return []
            out = self.take()
            if out:
                return out
            if timeout is None:
                remaining = None
            else:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + timeout
                remaining = deadline - now
                if remaining <= 0:
                    return []
            me = getcurrent()
            self._waiting = me
            try:
                log.signal.wait(remaining)
            except _Interrupted:
                return []
            finally:
                self._waiting = None

    def close(self) -> None:
        """Stop the watch; a greenlet blocked in ``next()`` returns ``[]`` promptly."""
        if self._closed:
            return
        self._closed = True
        self._store._watchers -= 1
        if self._subscriber is not None:
            self._log.subscribers.pop(self, None)
            self._subscriber = None
        waiting = self._waiting
        if waiting is not None and waiting is not getcurrent():
            get_hub().loop.run_callback(self._interrupt, waiting)

    def _interrupt(self, greenlet) -> None:
        # Runs in the hub; only throw if that greenlet is still parked in our next().
        if self._waiting is greenlet:
            greenlet.throw(_Interrupted())

    def __enter__(self) -> "Watcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _call(fn, *args):
    """Run ``fn`` and return ``(ok, result_or_exception)`` so the greenlet never dies noisily."""
    try:
        return True, fn(*args)
    except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
        return False, exc


class _Interner:
    """Lets identical nested values of different stored objects share one Python object.

    Every workspace gets the same bootstrap ClusterRoles (rules, managedFields), the same default
    Namespace and so on; without sharing, each copy costs tens of KiB per workspace. Sharing is safe
    because stored objects are immutable (callers copy before they change anything). Values are
    keyed by their JSON encoding; the table is bounded and simply starts over when full -- in entries and in bytes
    of encoding, since most values are seen once (a workspace's own annotations) and would otherwise keep
    thousands of encodings and the values they stand for alive (1 KiB per workspace at 10,000 of them).
    """

    MIN_BYTES = 64  # smaller values are not worth a table entry

    def __init__(self, limit: int = 8192, limit_bytes: int = 512 << 10):
        self._limit = limit
        self._limit_bytes = limit_bytes
        self._bytes = 0
        self._values: dict[bytes, Any] = {}

    def value(self, value: Any) -> Any:
        if not value or not isinstance(value, (dict, list)):
            return value
        try:
            encoded = orjson.dumps(value)
        except TypeError:
            return value
        if len(encoded) < self.MIN_BYTES:
            return value
        shared = self._values.get(encoded)
        if shared is not None:
            return shared
        if len(self._values) >= self._limit or self._bytes >= self._limit_bytes:
            self._values.clear()
            self._bytes = 0
        self._values[encoded] = value
        self._bytes += len(encoded)
        return value

    def object(self, obj: dict) -> None:
        """Share ``obj``'s nested values in place (``obj`` is the store's own top-level copy): the spec-like fields,
        each field of ``status`` (conditions are the same in a thousand workspaces made in the same second), the
        labels, annotations and finalizers, and each managedFields entry."""
        for key, value in obj.items():
            if key == "status":
                if isinstance(value, dict):
                    obj[key] = {k: self.value(v) for k, v in value.items()}
            elif key != "metadata":
                obj[key] = self.value(value)
        md = obj.get("metadata")
        if isinstance(md, dict):
            for key in ("labels", "annotations", "finalizers"):
                if key in md:
                    md[key] = self.value(md[key])
            created = md.get("creationTimestamp")
            if type(created) is str:
                md["creationTimestamp"] = sys.intern(created)
            managed = md.get("managedFields")
            if isinstance(managed, list) and managed:
                md["managedFields"] = [
                    self.value({**entry, "fieldsV1": self.value(entry["fieldsV1"])})
                    if isinstance(entry, dict) and "fieldsV1" in entry else entry for entry in managed]


class Store:
    """All objects in memory, every write durable in ``backend`` first, watches from memory."""

    def __init__(self, backend: Backend, *, history_seconds: float = 300,
                 history_max_events: int = 100_000):
        if history_max_events < 1:
            raise ValueError("history_max_events must be >= 1")
        self._backend = backend
        self._history_seconds = float(history_seconds)
        self._history_max = int(history_max_events)
        # Trim only after overshooting by 10%, so trimming (a list memmove) is amortized.
        self._trim_count_at = self._history_max + max(1, self._history_max // 10)
        self._trim_age_at = self._history_seconds * 1.1
        self._lock = gevent.lock.Semaphore(1)
        # Group commit (``_claim``): the keys with a write in flight (and how many per cluster), the clusters whose
        # template instance is being made or dropped, and the signal that one of them was released.
        self._grouped = callable(getattr(backend, "submit", None))
        self._claimed: set[Key] = set()
        self._claimed_in: dict[str, int] = {}
        self._claimed_clusters: set[str] = set()
        self._released = gevent.event.Event()
        self._closed = False
        # resource -> cluster -> (namespace, name) -> obj
        self._data: dict[str, dict[str, dict[tuple[str, str], dict]]] = {}
        # (resource, cluster) -> sorted keys of that bucket; dropped on create/delete there
        self._sorted: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self._counts: dict[str, int] = {}
        self._total = 0
        self._logs: dict[str, _Log] = {}
        self._watchers = 0
        self._interner = _Interner()
        self._unsettled: set[Key] = set()  # keys whose last write is in doubt (``_settle``)
        self._settler: gevent.Greenlet | None = None
        # Shared default content (server.storage.templates): templates by name, each cluster's instance, and the
        # template objects deleted (key -> the rv of the instance they were deleted from).
        self._templates: dict[str, Template] = {}
        self._instances: dict[str, Instance] = {}
        # Instances of named templates: cluster -> (the template's family, instance name) -> instance.
        self._named: dict[str, dict[tuple[str, str], Instance]] = {}
        self._tombstones: dict[Key, int] = {}
        self._load()
        self._rv = self._start_rv = backend.current_rv()
        if hasattr(backend, "on_progress"):
            backend.on_progress = self.advance

    def _load(self) -> None:
        data = self._data
        counts = self._counts
        loads = orjson.loads
        instances, tombstones = [], []
        for bkey, rv, value in self._backend.load():
            resource, cluster, namespace, name = decode_key(bkey)
            if resource == TEMPLATES:
                template = Template.decode(value)
                self._templates[template.name] = template
                continue
            obj = loads(value)
            if resource == INSTANCES:
                instances.append((cluster, namespace, rv, obj))
                continue
            if TOMBSTONE in obj:
                tombstones.append((Key(resource, cluster, namespace, name), obj[TOMBSTONE]))
                continue
            md = obj.get("metadata")
            if not isinstance(md, dict):
                md = obj["metadata"] = {}
            md["resourceVersion"] = str(rv)
            self._interner.object(obj)
            data.setdefault(resource, {}).setdefault(cluster, {})[(namespace, name)] = obj
            counts[resource] = counts.get(resource, 0) + 1
            self._total += 1
        for cluster, name, rv, record in instances:
            self._add_instance(Instance(self._templates[record["template"]], cluster, record["uid"],
                                        record["creationTimestamp"], rv, record.get("owner") or "", name))
        for key, instance_rv in tombstones:
            served = self._served(key)
            if served is not None and served[0].rv == instance_rv:  # else left over from an instance dropped since
                self._tombstones[key] = instance_rv
        for instance in self._all_instances():
            for _ in self._shown(instance):
                pass

    def _add_instance(self, instance: Instance) -> None:
        if instance.name:
            self._named.setdefault(instance.cluster, {})[(instance.template.named, instance.name)] = instance
        else:
            self._instances[instance.cluster] = instance

    def _all_instances(self):
        yield from self._instances.values()
        for named in self._named.values():
            yield from named.values()

    def _instance(self, cluster: str, family: str, name: str) -> Instance | None:
        if name:
            return self._named.get(cluster, {}).get((family, name))
        return self._instances.get(cluster)

    def _served(self, key: Key) -> tuple[Instance, TemplateObject] | None:
        """The instance that serves ``key`` (unless a row shadows it or a tombstone hides it), with its object."""
        instance = self._instances.get(key.cluster)
        if instance is not None:
            entry = instance.entry(key.resource, key.namespace, key.name)
            if entry is not None:
                return instance, entry
        named = self._named.get(key.cluster)
        if named:
            for template in self._templates.values():
                match = template.named and template.match(key.resource, key.namespace, key.name)
                if match:
                    instance = named.get((template.named, match[1]))
                    entry = instance.entry(key.resource, key.namespace, key.name) if instance is not None else None
                    if entry is not None:  # (the instance may be of another version of the template)
                        return instance, entry
        return None

    def _shown(self, instance: Instance, sign: int = 1):
        """The instance's objects that it serves (no row shadows them, no tombstone hides them), each counted
        (``sign``) as it is yielded."""
        counts = self._counts
        for entry in instance.template.objects:
            key = _entry_key(instance.cluster, instance.name, entry)
            if key in self._tombstones or self.get_real(key) is not None:
                continue
            counts[entry.resource] = counts.get(entry.resource, 0) + sign
            self._total += sign
            yield key, entry

    # -- reads ------------------------------------------------------------------------------

    def current_rv(self) -> int:
        return self._rv

    def get(self, key: Key) -> dict | None:
        """The stored object (shared: do not mutate; a template object is made afresh), or None."""
        clusters = self._data.get(key.resource)
        obj = None
        if clusters is not None:
            bucket = clusters.get(key.cluster)
            if bucket is not None:
                obj = bucket.get((key.namespace, key.name))
        if obj is None and (self._instances or self._named):
            served = self._served(key)
            if served is not None and key not in self._tombstones:
                return served[0].materialize(served[1])
        return obj

    def get_real(self, key: Key) -> dict | None:
        """The object if it has a row of its own (not served from a template)."""
        clusters = self._data.get(key.resource)
        if clusters is None:
            return None
        bucket = clusters.get(key.cluster)
        if bucket is None:
            return None
        return bucket.get((key.namespace, key.name))

    def list(self, resource: str, cluster: str | None = None, namespace: str | None = None, *,
             fields: tuple[str, ...] | None = None) -> tuple[list[dict], int]:
        """Objects sorted by (cluster, namespace, name) and the rv they are current at.

        ``None`` means all clusters / all namespaces. Never yields, so it is a consistent
        snapshot. The dicts are the stored ones: do not mutate. ``fields``: the caller reads only these top-level
        fields and metadata's name and namespace, so template objects are made with no more than that (an index
        over 100,000 of them: RBAC's bindings).
        """
        rv = self._rv
        clusters = self._data.get(resource)
        templated = ((self._instances or self._named)
                     and any(resource in t.by_resource for t in self._templates.values()))
        if not clusters and not templated:
            return [], rv
        clusters = clusters or {}
        if cluster is not None:
            if cluster not in clusters and not (templated and (cluster in self._instances or cluster in self._named)):
                return [], rv
            names = [cluster]
        elif templated:
            names = sorted(clusters.keys() | self._instances.keys() | self._named.keys())
        else:
            names = sorted(clusters)
        out: list[dict] = []
        for name in names:
            bucket = clusters.get(name) or {}
            serving = self._serving(resource, name) if templated else None
            if serving:
                out.extend(self._with_template(resource, name, namespace, bucket, serving, fields))
                continue
            keys = self._sorted_keys(resource, name, bucket)
            if namespace is None:
                out.extend(map(bucket.__getitem__, keys))
            else:
                out.extend(bucket[k] for k in keys if k[0] == namespace)
        return out, rv

    def names(self, resource: str, cluster: str) -> set[tuple[str, str]]:
        """``(namespace, name)`` of every object of ``resource`` in ``cluster``, as ``list`` would return them but
        unsorted and without making the template objects (an index that needs only the names: RBAC's roles)."""
        bucket = (self._data.get(resource) or {}).get(cluster) or {}
        out = set(bucket)
        tombstones = self._tombstones
        for instance in self._serving(resource, cluster) if self._instances or self._named else ():
            for entry in instance.template.by_resource[resource].values():
                k = (entry.namespace, entry.name_in(instance.name))
                if not (tombstones and Key(resource, cluster, k[0], k[1]) in tombstones):
                    out.add(k)
        return out

    def _serving(self, resource: str, cluster: str) -> list[Instance]:
        """The instances of ``cluster`` with objects of ``resource``."""
        out = []
        instance = self._instances.get(cluster)
        if instance is not None and resource in instance.template.by_resource:
            out.append(instance)
        named = self._named.get(cluster)
        if named:
            out += [i for i in named.values() if resource in i.template.by_resource]
        return out

    def _with_template(self, resource: str, cluster: str, namespace: str | None, bucket: dict,
                       instances: list[Instance], fields: tuple[str, ...] | None = None) -> list[dict]:
        """A bucket's objects merged with the instances' that no row shadows and no tombstone hides, sorted."""
        if len(instances) == 1 and not instances[0].name:
            instance = instances[0]
            entries = {k: (instance, e) for k, e in instance.template.by_resource[resource].items()}
            keys = instance.template.sorted_keys[resource] if not bucket else None
        else:
            entries = {(e.namespace, e.name_in(i.name)): (i, e)
                       for i in instances for e in i.template.by_resource[resource].values()}
            keys = None
        if keys is None:
            keys = sorted(bucket.keys() | entries.keys())
        tombstones = self._tombstones
        out = []
        for k in keys:
            if namespace is not None and k[0] != namespace:
                continue
            obj = bucket.get(k)
            if obj is None:
                if tombstones and Key(resource, cluster, k[0], k[1]) in tombstones:
                    continue
                instance, entry = entries[k]
                if fields is None:
                    obj = instance.materialize(entry)
                else:
                    obj = instance.fields(entry, fields)
                    obj["metadata"] = {"name": k[1], **({"namespace": k[0]} if k[0] else {})}
            out.append(obj)
        return out

    def _sorted_keys(self, resource: str, cluster: str, bucket: dict) -> list[tuple[str, str]]:
        cache_key = (resource, cluster)
        keys = self._sorted.get(cache_key)
        if keys is None:
            keys = self._sorted[cache_key] = sorted(bucket)
        return keys

    def count(self, resource: str | None = None) -> int:
        """Objects stored for ``resource``, or in total when None (O(1), for metrics)."""
        if resource is None:
            return self._total
        return self._counts.get(resource, 0)

    def counts(self) -> dict[str, int]:
        """Object count per resource key (a copy)."""
        return {r: n for r, n in self._counts.items() if n}

    # -- writes -----------------------------------------------------------------------------

    def create(self, key: Key, obj: dict) -> dict:
        """Store a new object; raises :class:`KeyExistsError` if ``key`` is taken."""
        return self._write(ADDED, key, obj, None)

    def update(self, key: Key, obj: dict, expected_rv: int | None = None) -> dict:
        """Replace an object; raises :class:`KeyNotFoundError` or, if ``expected_rv`` is given
        and differs from the stored rv, :class:`ConflictError`."""
        return self._write(MODIFIED, key, obj, expected_rv)

    def delete(self, key: Key, expected_rv: int | None = None) -> dict:
        """Remove an object; returns its last state stamped with the deletion's rv (as the
        DELETED event carries it)."""
        return self._write(DELETED, key, None, expected_rv)

    def _write(self, kind: str, key: Key, obj: dict | None, expected_rv: int | None) -> dict:
        with self._claim(key.cluster, key):
            if self._closed:
                raise StorageError("store is closed")
            if self._unsettled:
                self._settle()  # a write left in doubt comes first: until then memory may be behind
            resource, cluster, namespace, name = key
            old = self.get(key)
            if kind is ADDED:
                if old is not None:
                    raise KeyExistsError(f"{resource} {cluster}|{namespace}/{name} already exists")
            else:
                if old is None:
                    raise KeyNotFoundError(f"{resource} {cluster}|{namespace}/{name} not found")
                if expected_rv is not None and int(old["metadata"]["resourceVersion"]) != expected_rv:
                    raise ConflictError(f"{resource} {cluster}|{namespace}/{name}: resourceVersion "
                                        f"{old['metadata']['resourceVersion']} != expected {expected_rv}")
            # Copy the two levels we change so neither the caller's dict nor the stored one moves.
            new = dict(old if kind is DELETED else obj)
            md = new.get("metadata")
            md = dict(md) if isinstance(md, dict) else {}
            new["metadata"] = md
            if kind is DELETED:
                served = self._served(key) if self._instances or self._named else None
                # Under a template object, a delete leaves a row that keeps it hidden.
                value = orjson.dumps({TOMBSTONE: served[0].rv}) if served is not None else None
            else:
                md.pop("resourceVersion", None)  # the row's rv is the truth; don't persist a stale one
                value = orjson.dumps(new)
            prev_rv = int(old["metadata"]["resourceVersion"]) if old is not None else 0
            try:
                interrupted = self._durable(encode_key(resource, cluster, namespace, name), value, prev_rv, 0,
                                            lambda rv: self._commit(kind, key, new, old, rv))
            except ConflictError:
                # The backend holds something else under the key (written behind our back): adopt it.
                self._unsettled.add(key)
                self._settle()
                raise
            except StorageUnavailableError as exc:
                if exc.in_doubt:
                    self._unsettled.add(key)
                    self._settle_later()
                raise
        if interrupted is not None:
            # The write is committed and visible; the caller was timed out or killed meanwhile.
            raise interrupted
        return new

    def _commit(self, kind: str, key: Key, new: dict, old: dict | None, rv: int) -> None:
        """Memory and the event log follow a committed write. No greenlet switch in here."""
        resource, cluster, namespace, name = key
        clusters = self._data.get(resource)
        bucket = clusters.get(cluster) if clusters is not None else None
        new["metadata"]["resourceVersion"] = str(rv)
        served = self._served(key) if self._instances or self._named else None
        if served is not None:
            if kind is DELETED:
                self._tombstones[key] = served[0].rv
            else:
                self._tombstones.pop(key, None)
        if kind is DELETED:
            if bucket is not None and bucket.pop((namespace, name), None) is not None:
                self._sorted.pop((resource, cluster), None)
                if not bucket:
                    del clusters[cluster]
            self._counts[resource] -= 1
            self._total -= 1
        else:
            self._interner.object(new)
            if bucket is None:
                if clusters is None:
                    clusters = self._data[resource] = {}
                bucket = clusters[cluster] = {}
            bucket[(namespace, name)] = new
            if old is None:
                self._sorted.pop((resource, cluster), None)
                self._counts[resource] = self._counts.get(resource, 0) + 1
                self._total += 1
        self._rv = rv
        self._append(resource, Event(kind, rv, key, new, old, time.monotonic()))

    # -- shared default content (server.storage.templates) -----------------------------------

    @property
    def supports_templates(self) -> bool:
        """Whether the backend can reserve resourceVersions, so that every template object has one of its own."""
        return getattr(self._backend, "reserves_revisions", False)

    def has_instance(self, cluster: str, family: str = "", name: str = "") -> bool:
        """Whether ``cluster`` has its default content from a template (``name``: an instance of that name of a
        named template of ``family``)."""
        return self._instance(cluster, family, name) is not None

    def instantiate(self, cluster: str, template: Template, uid: str, created: str, owner: str = "",
                    name: str = "") -> None:
        """Give ``cluster`` the template's objects, with one write (raises :class:`KeyExistsError` if it has them);
        ``name``: the instance's name, for a named template (then ``cluster`` may have any number of them).

        Each gets an ADDED event at its own reserved resourceVersion, as if it had been created then."""
        if not self.supports_templates:
            raise StorageError("this backend cannot reserve resourceVersions for template objects")
        if bool(name) != bool(template.named):
            raise ValueError("a named template's instances have a name, and only theirs")
        with self._claim_instance(cluster, template, name):
            if self._closed:
                raise StorageError("store is closed")
            if self._instance(cluster, template.named, name) is not None:
                raise KeyExistsError(f"cluster {cluster} has instantiated template {template.name} {name} already")
            if template.name not in self._templates:
                # Another cluster may be writing it too, the same bytes: the first to commit is kept.
                self._durable(encode_key(TEMPLATES, "", "", template.name), template.encoded, 0, 0,
                              lambda rv: self._templates.setdefault(template.name, template))
            template = self._templates[template.name]
            instance = Instance(template, cluster, uid, created, 0, owner, name)

            def committed(rv: int) -> None:
                instance.rv = rv
                self._add_instance(instance)
                now = time.monotonic()
                first = instance.first_rv
                for _, entry in self._shown(instance):  # a row written before (a half-made cluster's retry) wins
                    self._append(entry.resource, _TemplateEvent(ADDED, first + entry.index, instance, entry, now))
                self._rv = rv

            interrupted = self._durable(encode_key(INSTANCES, cluster, name, template.name), instance.record(), 0,
                                        len(template), committed)
        if interrupted is not None:
            raise interrupted

    def drop_instances(self, cluster: str) -> None:
        """Drop every instance in ``cluster`` (it is being deleted)."""
        for instance in [*self._named.get(cluster, {}).values(), *filter(None, [self._instances.get(cluster)])]:
            self.drop_instance(cluster, instance.template.named, instance.name)

    def drop_instance(self, cluster: str, family: str = "", name: str = "") -> None:
        """Remove the objects of ``cluster``'s default content (``name``: of its instance of that name of a named
        template of ``family``): DELETED events for those still shown, and its tombstones."""
        instance = self._instance(cluster, family, name)
        if instance is None:
            return
        with self._claim_instance(cluster, instance.template, name):
            if self._instance(cluster, family, name) is not instance or self._closed:
                return
            template = instance.template
            hidden = [k for k in self._tombstones if k.cluster == cluster and instance.entry(k.resource, k.namespace,
                                                                                             k.name) is not None]

            def committed(rv: int) -> None:
                now = time.monotonic()
                first = rv - len(template)
                gone = list(self._shown(instance, -1))
                if name:
                    named = self._named[cluster]
                    del named[(template.named, name)]
                    if not named:
                        del self._named[cluster]
                else:
                    del self._instances[cluster]
                for _, entry in gone:
                    self._append(entry.resource, _TemplateEvent(DELETED, first + entry.index, instance, entry, now))
                self._rv = rv

            interrupted = self._durable(encode_key(INSTANCES, cluster, name, template.name), None, instance.rv,
                                        len(template), committed)
            for key in hidden:
                del self._tombstones[key]
                if self.get_real(key) is None:
                    self._durable(encode_key(*key), None, 0)  # no event: nothing visible changes
        if interrupted is not None:
            raise interrupted

    @contextmanager
    def _claim_instance(self, cluster: str, template: Template, name: str):
        """A template operation's claim: the whole cluster for its default content, only the instance's own keys
        for a named instance (the owner grants in a busy parent must not hold off the parent's other writes)."""
        if not name or not self._grouped:
            with self._claim(cluster):
                yield
            return
        with ExitStack() as stack:
            for key in sorted(_entry_key(cluster, name, entry) for entry in template.objects):
                stack.enter_context(self._claim(cluster, key))
            yield

    @contextmanager
    def _claim(self, cluster: str, key: Key | None = None):
        """Hold off the writes this one must not overlap: one to ``key`` (``None``: any in ``cluster``, for its
        template instance), or any while a template operation in its cluster is in flight -- so a write validated
        against memory is still valid when it commits. Without group commit: the one write lock."""
        if not self._grouped:
            with self._lock:
                yield
            return
        claimed, counts, clusters = self._claimed, self._claimed_in, self._claimed_clusters
        while cluster in clusters or (counts.get(cluster) if key is None else key in claimed):
            self._released.wait()
        if key is None:
            clusters.add(cluster)
        else:
            claimed.add(key)
            counts[cluster] = counts.get(cluster, 0) + 1
        try:
            yield
        finally:
            if key is None:
                clusters.discard(cluster)
            else:
                claimed.discard(key)
                left = counts[cluster] - 1
                if left:
                    counts[cluster] = left
                else:
                    del counts[cluster]
            released = self._released
            if released.linkcount():
                self._released = gevent.event.Event()
                released.set()

    def _durable(self, bkey: str, value: bytes | None, prev_rv: int, reserve: int = 0,
                 committed=None) -> BaseException | None:
        """Make one write durable and call ``committed(rv)`` right after, in commit order with no greenlet switch
        in between; returns the Timeout/kill that reached the caller meanwhile (deferred: the write goes on)."""
        if not self._grouped:
            rv, interrupted = self._backend_write(bkey, value, prev_rv, reserve)
            if committed is not None:
                committed(rv)
            return interrupted
        result = self._backend.submit(bkey, value, reserve, committed)
        interrupted = None
        while not result.ready():
            try:
                result.wait()
            except BaseException as exc:  # noqa: BLE001 - deferred until the write settles
                if interrupted is None:
                    interrupted = exc
        result.get()  # the write's own error, if it failed
        return interrupted

    def _backend_write(self, bkey: str, value: bytes | None, prev_rv: int,
                       reserve: int = 0) -> tuple[int, BaseException | None]:
        """Run the backend write so that a Timeout/kill aimed at the caller cannot abandon it
        half-way: memory must end up matching what the backend committed."""
        args = (bkey, value, prev_rv, reserve) if reserve else (bkey, value, prev_rv)
        g = gevent.spawn(_call, self._backend.write, *args)
        interrupted = None
        while True:
            try:
                g.join()
                break
            except BaseException as exc:  # noqa: BLE001 - deferred until the write settles
                if interrupted is None:
                    interrupted = exc
        ok, result = g.value
        if not ok:
            raise result
        return result, interrupted

    # -- settling what memory is not sure of ------------------------------------------------

    def _settle(self) -> None:
        """Make memory match the backend for every unsettled key (called with the lock held); raises
        ``StorageUnavailableError`` while the backend cannot say."""
        for key in sorted(self._unsettled):
            rv, value = self._backend.read(encode_key(*key))
            if value is not None and value.startswith(b'{"' + TOMBSTONE.encode()):
                value = None  # a deleted template object (and _commit of DELETED keeps it hidden)
            old = self.get(key)
            if value is None:
                if old is not None:
                    gone = dict(old)
                    gone["metadata"] = dict(old["metadata"])
                    self._commit(DELETED, key, gone, old, max(rv, self._rv))
            elif old is None or int(old["metadata"]["resourceVersion"]) != rv:
                obj = orjson.loads(value)
                if not isinstance(obj.get("metadata"), dict):
                    obj["metadata"] = {}
                self._commit(MODIFIED if old is not None else ADDED, key, obj, old, rv)
            self._unsettled.discard(key)

    def _settle_later(self) -> None:
        """Keep trying to settle in the background, so that readers learn the outcome without a next write."""
        if self._settler is not None and not self._settler.dead:
            return

        def retry():
            delay = 0.1
            while self._unsettled and not self._closed:
                gevent.sleep(delay)
                with self._lock:
                    try:
                        if self._unsettled and not self._closed:
                            self._settle()
                    except StorageError:
                        delay = min(delay * 2, 2.0)

        self._settler = gevent.spawn(retry)

    def advance(self, rv: int) -> None:
        """The backend's revision moved to ``rv`` without a write of ours (other prefixes of one etcd): the
        store's resourceVersion follows while no write is in flight, so bookmarks carry it."""
        if rv > self._rv and not self._lock.locked() and not self._unsettled and not self._closed:
            self._rv = rv

    def catch_up(self, rv: int) -> int:
        """The store's rv, first moved to the backend's revision when a client names one beyond it (an etcd
        revision of another prefix's write); waits for an in-flight write of ours."""
        if rv > self._rv:
            with self._lock:
                revision = self._backend.revision()
                if revision > self._rv and not self._unsettled and not self._closed:
                    self._rv = revision
        return self._rv

    def list_at(self, resource: str, cluster: str | None, namespace: str | None, rv: int) -> list[dict]:
        """Objects as they were at ``rv`` (sorted as ``list``), from the backend's history;
        :class:`ResourceExpiredError` when it keeps none that old."""
        prefix = key_prefix(resource, cluster, namespace if cluster is not None else None)
        out = []
        for bkey, obj_rv, value in self._backend.range_at(prefix, rv):
            res, c, ns, name = decode_key(bkey)
            if res != resource or (namespace is not None and ns != namespace):
                continue
            obj = orjson.loads(value)
            md = obj.get("metadata")
            if not isinstance(md, dict):
                md = obj["metadata"] = {}
            md["resourceVersion"] = str(obj_rv)
            out.append(((c, ns, name), obj))
        out.sort(key=lambda item: item[0])
        return [obj for _, obj in out]

    def healthy(self) -> bool:
        """Whether the backend answers (readiness)."""
        return not self._closed and self._backend.healthy

    # -- watch ------------------------------------------------------------------------------

    def _log_for(self, resource: str) -> _Log:
        log = self._logs.get(resource)
        if log is None:
            # Every event since startup is in the (still empty) log, so startup rv is the floor.
            log = self._logs[resource] = _Log(self._start_rv)
        return log

    def _append(self, resource: str, event: Event) -> None:
        log = self._log_for(resource)
        log.events.append(event)
        log.rvs.append(event.rv)
        if len(log.events) > self._trim_count_at or log.events[0].ts < event.ts - self._trim_age_at:
            self._trim(log, event.ts)
        log.wake()

    def _trim(self, log: _Log, now: float) -> None:
        events = log.events
        n = len(events)
        cut = max(0, n - self._history_max)
        cutoff = now - self._history_seconds
        while cut < n and events[cut].ts < cutoff:
            cut += 1
        if cut:
            log.oldest_rv = events[cut - 1].rv
            del events[:cut]
            del log.rvs[:cut]
            log.offset += cut

    def watch(self, resource: str, cluster: str | None, namespace: str | None,
              since_rv: int) -> Watcher:
        """A watcher for events with rv > ``since_rv`` (may be in the future).

        Raises :class:`ResourceExpiredError` when ``since_rv`` is older than the retained
        history for ``resource`` (clients must re-list).
        """
        if self._closed:
            raise StorageError("store is closed")
        log = self._log_for(resource)
        if since_rv < log.oldest_rv:
            raise _expired(since_rv, log.oldest_rv)
        pos = log.offset + bisect_right(log.rvs, since_rv)
        return Watcher(self, log, resource, cluster, namespace, since_rv, pos)

    @property
    def open_watchers(self) -> int:
        """Watchers not closed yet (each is a watch some client or controller holds open)."""
        return self._watchers

    def oldest_rv(self, resource: str) -> int:
        """The lowest rv a watch on ``resource`` may start from."""
        log = self._logs.get(resource)
        return log.oldest_rv if log is not None else self._start_rv

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for the in-flight write, wake all watchers (they return ``[]``) and close the backend."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for log in self._logs.values():
                log.wake()  # pulling watchers return [], subscribers are ended
            if self._settler is not None:
                self._settler.kill(block=False)
            self._backend.close()
