"""Storage: durability, the in-memory store, and the watch log, on both backends (real SQLite in tmp_path, a
real etcd process per module: ``test_storage_etcd.py`` has what only etcd does).

Tests that count resourceVersions count from the store's rv when it opened: on SQLite that is 0, on etcd the
revision of the prefix claim (etcd's revisions are shared by every prefix)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import tracemalloc

import gevent
import orjson
import pytest

from server.storage import (Backend, ConflictError, EtcdBackend, Key, KeyExistsError, KeyNotFoundError,
                            ResourceExpiredError, SQLiteBackend, StorageError, Store, decode_key, encode_key)
from server.testing import running_etcd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CM = "core/configmaps"


def cm(name: str, ns: str = "default", **data) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns},
            "data": {k: str(v) for k, v in data.items()}}


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "objects.db")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    with running_etcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture(params=["sqlite", "etcd"])
def backend_spec(request, db):
    """Where the test's data lives: ``sqlite:<file>`` or ``etcd:<url>|<prefix of its own>``."""
    if request.param == "sqlite":
        return f"sqlite:{db}"
    etcd = request.getfixturevalue("etcd")
    return f"etcd:{etcd.url}|/test/{request.node.name}/{time.monotonic_ns()}"


def open_backend(spec: str):
    kind, _, where = spec.partition(":")
    if kind == "sqlite":
        return SQLiteBackend(where)
    url, _, prefix = where.partition("|")
    return EtcdBackend([url], prefix=prefix, owner="test", probe_interval=0.05)


@pytest.fixture
def new_store(backend_spec):
    """``new_store(**options)``: a Store over the test's data (again after ``close()``: a restart)."""
    return lambda **options: Store(open_backend(backend_spec), **options)


@pytest.fixture
def store(new_store):
    s = new_store()
    yield s
    s.close()


def rv_of(obj: dict) -> int:
    return int(obj["metadata"]["resourceVersion"])


# -- keys ------------------------------------------------------------------------------------

@pytest.mark.parametrize("parts", [
    ("apps/deployments", "root:org", "default", "web"),
    ("/configmaps", "root", "", "cluster-scoped"),
    ("core/configmaps", "root:a", "ns", "we/ird%2Fname%"),
    ("a/b/c", "c/l%", "", ""),
])
def test_key_encoding_round_trips(parts):
    key = encode_key(*parts)
    assert decode_key(key) == parts
    assert key.startswith(parts[0] + "/")


def test_key_encoding_is_readable():
    assert encode_key("apps/deployments", "root:org", "default", "web") == "apps/deployments/root:org/default/web"


# -- CRUD ------------------------------------------------------------------------------------

def test_crud_and_preconditions(store):
    base = store.current_rv()
    k = Key(CM, "root", "default", "a")
    src = cm("a", x=1)
    src["metadata"]["resourceVersion"] = "999"
    created = store.create(k, src)
    assert rv_of(created) == base + 1 and store.current_rv() == base + 1
    assert src["metadata"]["resourceVersion"] == "999", "caller's dict must not be mutated"
    assert store.get(k) is created
    with pytest.raises(KeyExistsError):
        store.create(k, cm("a"))

    with pytest.raises(ConflictError):
        store.update(k, cm("a", x=2), expected_rv=base + 5)
    updated = store.update(k, cm("a", x=2), expected_rv=base + 1)
    assert rv_of(updated) == base + 2 and updated["data"] == {"x": "2"}
    assert rv_of(store.update(k, cm("a", x=3))) == base + 3  # unconditional

    with pytest.raises(KeyNotFoundError):
        store.update(Key(CM, "root", "default", "missing"), cm("missing"))
    with pytest.raises(KeyNotFoundError):
        store.delete(Key(CM, "root", "default", "missing"))
    with pytest.raises(ConflictError):
        store.delete(k, expected_rv=base + 2)
    before = store.get(k)
    deleted = store.delete(k, expected_rv=base + 3)
    assert rv_of(deleted) == base + 4 and deleted["data"] == {"x": "3"}
    assert rv_of(before) == base + 3, "the previously stored object is untouched"
    assert store.get(k) is None
    assert store.count(CM) == 0 and store.count() == 0
    assert store.current_rv() == base + 4


def test_counts(store):
    for i in range(3):
        store.create(Key(CM, "root", "default", f"c{i}"), cm(f"c{i}"))
    store.create(Key("apps/deployments", "root", "default", "d"), {"metadata": {"name": "d"}})
    store.delete(Key(CM, "root", "default", "c0"))
    assert store.count(CM) == 2 and store.count("apps/deployments") == 1 and store.count() == 3
    assert store.counts() == {CM: 2, "apps/deployments": 1}


class FailingBackend:
    """A backend whose writes fail on demand (``fail``), everything else passed through."""

    def __init__(self, backend):
        self.backend = backend
        self.fail = False

    def __getattr__(self, name):
        found = getattr(self.backend, name)
        if name != "submit":
            return found

        def submit(*args):  # a group-committing backend's (SQLite) way in
            if self.fail:
                raise StorageError("disk on fire")
            return found(*args)
        return submit

    def write(self, key, value, prev_rv):
        if self.fail:
            raise StorageError("disk on fire")
        return self.backend.write(key, value, prev_rv)


def test_backend_failure_changes_nothing(backend_spec):
    backend = FailingBackend(open_backend(backend_spec))
    store = Store(backend)
    base = store.current_rv()
    k = Key(CM, "root", "default", "a")
    store.create(k, cm("a", v=1))
    w = store.watch(CM, None, None, store.current_rv())
    backend.fail = True
    with pytest.raises(StorageError, match="disk on fire"):
        store.update(k, cm("a", v=2))
    with pytest.raises(StorageError):
        store.create(Key(CM, "root", "default", "b"), cm("b"))
    assert store.get(k)["data"] == {"v": "1"} and store.current_rv() == base + 1 and store.count() == 1
    assert w.next(0) == []
    backend.fail = False
    assert rv_of(store.update(k, cm("a", v=3))) == base + 2
    store.close()


def test_interrupted_write_still_lands_in_memory(new_store):
    """A Timeout aimed at the writer must not leave memory behind what the backend committed."""
    store = new_store()
    base = store.current_rv()
    k = Key(CM, "root", "default", "a")
    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(0.000001):
            store.create(k, cm("a"))
    assert store.get(k) is not None and store.current_rv() == base + 1
    store.close()
    reopened = new_store()
    assert reopened.get(k) is not None and rv_of(reopened.get(k)) == base + 1
    reopened.close()


def test_concurrent_writers_are_serialized(new_store):
    store = new_store()
    base = store.current_rv()
    w = store.watch(CM, None, None, base)
    k = Key(CM, "root", "default", "shared")
    store.create(k, cm("shared", n=0))

    def bump(i):
        for _ in range(5):
            while True:  # optimistic-concurrency retry loop, as an API handler would do
                cur = store.get(k)
                try:
                    store.update(k, cm("shared", n=int(cur["data"]["n"]) + 1), expected_rv=rv_of(cur))
                    break
                except ConflictError:
                    gevent.sleep(0)
        store.create(Key(CM, "root", "default", f"g{i}"), cm(f"g{i}"))

    gevent.joinall([gevent.spawn(bump, i) for i in range(20)], raise_error=True)
    assert store.get(k)["data"]["n"] == "100"
    rvs = [e.rv for e in w.next(0)]
    assert rvs == list(range(base + 1, base + 122)) and store.current_rv() == base + 121
    store.close()
    reopened = new_store()
    assert reopened.get(k)["data"]["n"] == "100" and reopened.count() == 21
    reopened.close()


def test_sqlite_backend_satisfies_protocol(db):
    backend = SQLiteBackend(db)
    assert isinstance(backend, Backend)
    assert backend.write("r/c/n/a", b"{}", 0) == 1 and backend.write("r/c/n/a", None, 1) == 2
    assert list(backend.load()) == [] and backend.current_rv() == 2
    assert backend.read("r/c/n/a") == (2, None) and backend.healthy
    with pytest.raises(ResourceExpiredError):
        backend.range_at("r/", 1)  # no history kept
    backend.close()
    with pytest.raises(StorageError):
        backend.write("r/c/n/a", b"{}", 0)


def test_closed_store_rejects_writes(new_store):
    store = new_store()
    store.close()
    store.close()
    with pytest.raises(StorageError):
        store.create(Key(CM, "root", "default", "a"), cm("a"))


# -- durability ------------------------------------------------------------------------------

def test_data_survives_reopen(new_store):
    store = new_store()
    base = store.current_rv()
    a = store.create(Key(CM, "root", "default", "a"), cm("a", v=1))
    b = store.create(Key(CM, "root:org", "", "b"), {"metadata": {"name": "b"}})
    store.update(Key(CM, "root", "default", "a"), cm("a", v=2))
    store.close()

    store = new_store()
    got = store.get(Key(CM, "root", "default", "a"))
    assert got["data"] == {"v": "2"} and rv_of(got) == base + 3
    assert store.get(Key(CM, "root:org", "", "b")) == b
    assert rv_of(a) == base + 1 and store.count() == 2
    store.close()


def test_rv_strictly_increasing_across_restart_after_deleting_newest(new_store):
    store = new_store()
    store.create(Key(CM, "root", "default", "a"), cm("a"))
    store.create(Key(CM, "root", "default", "b"), cm("b"))
    store.delete(Key(CM, "root", "default", "b"))  # the newest object is gone: MAX(rv) would be lower
    last = store.current_rv()
    store.close()

    store = new_store()
    assert store.current_rv() >= last
    assert rv_of(store.create(Key(CM, "root", "default", "c"), cm("c"))) > last
    store.close()


def test_memory_backend():
    store = Store(SQLiteBackend(":memory:"))
    assert rv_of(store.create(Key(CM, "root", "default", "a"), cm("a"))) == 1
    store.close()


KILL_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[2])
from server.storage import Key, Store
from tests.unit.test_storage import open_backend
store = Store(open_backend(sys.argv[1]))
i = 0
while True:
    name = f"cm-{i}"
    store.create(Key("core/configmaps", "root", "default", name), {"metadata": {"name": name}, "data": {"i": str(i)}})
    sys.stdout.write(name + "\n")
    sys.stdout.flush()
    i += 1
"""


def test_acknowledged_writes_survive_kill_9(backend_spec, new_store, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), backend_spec, ROOT], stdout=subprocess.PIPE, text=True)
    acked = []
    try:
        for line in proc.stdout:
            if line.startswith("cm-"):  # not a log line
                acked.append(line.strip())
            if len(acked) >= 300:
                break
        os.kill(proc.pid, signal.SIGKILL)
        acked.extend(line.strip() for line in proc.stdout if line.startswith("cm-"))  # acknowledged before dying
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= 300

    store = new_store()
    missing = [n for n in acked if store.get(Key(CM, "root", "default", n)) is None]
    assert not missing
    first, last = store.get(Key(CM, "root", "default", acked[0])), store.get(Key(CM, "root", "default", acked[-1]))
    assert store.current_rv() >= rv_of(last) >= rv_of(first) + len(acked) - 1
    store.close()


def test_blocked_sqlite_write_does_not_stall_the_hub(db):
    store = Store(SQLiteBackend(db))
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # hold the write lock: our writer thread waits in busy_timeout
    ticks = []

    def ticker():
        while True:
            gevent.sleep(0.005)
            ticks.append(1)

    t = gevent.spawn(ticker)
    release = gevent.spawn_later(0.3, blocker.execute, "COMMIT")
    start = time.monotonic()
    store.create(Key(CM, "root", "default", "a"), cm("a"))
    elapsed = time.monotonic() - start
    t.kill()
    release.join()
    blocker.close()
    assert elapsed >= 0.25
    assert len(ticks) >= 20, f"hub stalled: ticker ran {len(ticks)} times in {elapsed:.2f}s"
    store.close()


# -- list ------------------------------------------------------------------------------------

def _populate(store):
    for cluster in ("root:b", "root:a"):
        for ns in ("ns2", "ns1"):
            for name in ("z", "y"):
                store.create(Key(CM, cluster, ns, name), cm(name, ns))
    store.create(Key("apps/deployments", "root:a", "ns1", "d"), {"metadata": {"name": "d"}})


def _keys(items):
    return [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in items]


def test_list_sorted_and_filtered(store):
    base = store.current_rv()
    _populate(store)
    items, rv = store.list(CM, None, None)
    assert rv == store.current_rv() == base + 9
    assert len(items) == 8
    order = [(store_key[0], store_key[1]) for store_key in _keys(items)]
    assert order == [("ns1", "y"), ("ns1", "z"), ("ns2", "y"), ("ns2", "z")] * 2
    assert rv_of(items[0]) == base + 8  # root:a sorts first; it was written second

    items, _ = store.list(CM, "root:b", None)
    assert _keys(items) == [("ns1", "y"), ("ns1", "z"), ("ns2", "y"), ("ns2", "z")]
    assert all(rv_of(o) <= base + 4 for o in items)
    items, _ = store.list(CM, None, "ns2")
    assert _keys(items) == [("ns2", "y"), ("ns2", "z")] * 2
    items, _ = store.list(CM, "root:a", "ns1")
    assert _keys(items) == [("ns1", "y"), ("ns1", "z")]
    assert store.list(CM, "root:nope", None) == ([], base + 9)
    assert store.list("nope/nope", None, None) == ([], base + 9)

    # The sort cache follows creates and deletes.
    store.create(Key(CM, "root:a", "ns1", "a"), cm("a", "ns1"))
    store.delete(Key(CM, "root:a", "ns1", "z"))
    items, rv = store.list(CM, "root:a", "ns1")
    assert _keys(items) == [("ns1", "a"), ("ns1", "y")] and rv == base + 11


def test_list_is_a_snapshot(store):
    _populate(store)
    items, rv = store.list(CM, "root:a", None)
    store.create(Key(CM, "root:a", "ns1", "new"), cm("new", "ns1"))
    store.update(Key(CM, "root:a", "ns1", "y"), cm("y", "ns1", changed=1))
    assert len(items) == 4 and all(rv_of(o) <= rv for o in items)


# -- watch -----------------------------------------------------------------------------------

def test_watch_from_rv_in_window_misses_nothing(store):
    base = store.current_rv()
    for i in range(10):
        store.create(Key(CM, "root", "default", f"c{i}"), cm(f"c{i}"))
    _, rv = store.list(CM, None, None)
    w = store.watch(CM, None, None, base + 5)
    store.update(Key(CM, "root", "default", "c0"), cm("c0", v=1))
    store.delete(Key(CM, "root", "default", "c1"))
    events = w.next(0)
    assert [e.rv for e in events] == list(range(base + 6, base + 13))
    assert [e.type for e in events[-2:]] == ["MODIFIED", "DELETED"]
    assert events[-2].prev["data"] == {} and events[-2].obj["data"] == {"v": "1"}
    assert events[-1].prev is not None and rv_of(events[-1].obj) == base + 12
    assert w.rv == base + 12 and w.next(0) == []

    w2 = store.watch(CM, None, None, rv)  # from a list's rv: exactly the later writes
    assert [e.rv for e in w2.next(0)] == [base + 11, base + 12]


def test_event_line_serialized_once(store):
    base = store.current_rv()
    store.create(Key(CM, "root", "default", "a"), cm("a"))
    (event,) = store.watch(CM, None, None, base).next(0)
    line = event.line()
    assert line is event.line() and line.endswith(b"\n")
    assert orjson.loads(line) == {"type": "ADDED", "object": event.obj}
    assert event.key == Key(CM, "root", "default", "a")


def test_too_old_resource_version(new_store):
    store = new_store(history_max_events=5)
    base = store.current_rv()
    for i in range(30):
        store.create(Key(CM, "root", "default", f"c{i}"), cm(f"c{i}"))
    oldest = store.oldest_rv(CM)
    assert base + 20 <= oldest < base + 30
    with pytest.raises(ResourceExpiredError) as info:
        store.watch(CM, None, None, base + 3)
    assert str(info.value) == info.value.message == f"too old resource version: {base + 3} ({oldest})"
    events = store.watch(CM, None, None, oldest).next(0)
    assert [e.rv for e in events] == list(range(oldest + 1, base + 31))
    last = store.current_rv()
    store.close()

    # After a restart, history starts at the startup rv.
    store = new_store()
    start = store.current_rv()
    assert start >= last
    with pytest.raises(ResourceExpiredError, match=rf"^too old resource version: {last - 1} \({start}\)$"):
        store.watch(CM, None, None, last - 1)
    store.watch(CM, None, None, start)
    store.close()


def test_watcher_falling_behind_gets_expired(new_store):
    store = new_store(history_max_events=5)
    base = store.current_rv()
    w = store.watch(CM, None, None, base)
    for i in range(30):
        store.create(Key(CM, "root", "default", f"c{i}"), cm(f"c{i}"))
    with pytest.raises(ResourceExpiredError, match=rf"^too old resource version: {base} \(\d+\)$"):
        w.next(0)
    store.close()


def test_history_trimmed_by_age(new_store):
    store = new_store(history_seconds=0.05)
    base = store.current_rv()
    store.create(Key(CM, "root", "default", "old"), cm("old"))
    gevent.sleep(0.1)
    store.create(Key(CM, "root", "default", "new"), cm("new"))
    assert store.oldest_rv(CM) == base + 1
    with pytest.raises(ResourceExpiredError):
        store.watch(CM, None, None, base)
    store.close()


def test_watch_filters_by_cluster_and_namespace(store):
    base = store.current_rv()
    w_all = store.watch(CM, None, None, base)
    w_cluster = store.watch(CM, "root:a", None, base)
    w_ns = store.watch(CM, None, "ns1", base)
    w_both = store.watch(CM, "root:a", "ns1", base)
    w_other = store.watch("apps/deployments", None, None, base)
    _populate(store)

    def keys(w):
        return [(e.key.cluster, e.key.namespace) for e in w.next(0)]

    assert len(keys(w_all)) == 8
    assert set(keys(w_cluster)) == {("root:a", "ns1"), ("root:a", "ns2")}
    assert set(keys(w_ns)) == {("root:a", "ns1"), ("root:b", "ns1")}
    assert keys(w_both) == [("root:a", "ns1")] * 2
    assert [e.key.name for e in w_other.next(0)] == ["d"]


def test_watch_from_future_rv(store):
    base = store.current_rv()
    store.create(Key(CM, "root", "default", "a"), cm("a"))
    w = store.watch(CM, None, None, base + 3)
    store.create(Key(CM, "root", "default", "b"), cm("b"))  # base + 2: before since_rv
    store.create(Key(CM, "root", "default", "c"), cm("c"))  # base + 3
    assert w.next(0) == []
    store.create(Key(CM, "root", "default", "d"), cm("d"))
    assert [e.rv for e in w.next(0)] == [base + 4]


def test_next_blocks_until_write_or_timeout(store):
    base = store.current_rv()
    w = store.watch(CM, None, None, base)
    start = time.monotonic()
    assert w.next(0.05) == []
    assert time.monotonic() - start >= 0.045
    gevent.spawn_later(0.02, store.create, Key(CM, "root", "default", "a"), cm("a"))
    start = time.monotonic()
    events = w.next(5)
    assert [e.rv for e in events] == [base + 1] and time.monotonic() - start < 1


def test_close_interrupts_blocked_next(store):
    w = store.watch(CM, None, None, store.current_rv())
    g = gevent.spawn(w.next, 10)
    gevent.sleep(0.01)
    start = time.monotonic()
    w.close()
    assert g.get(timeout=2) == [] and time.monotonic() - start < 1
    assert w.closed and w.next(5) == []
    # Other watchers of the resource are unaffected.
    w2 = store.watch(CM, None, None, store.current_rv())
    store.create(Key(CM, "root", "default", "a"), cm("a"))
    assert len(w2.next(1)) == 1


def test_store_close_wakes_watchers(new_store):
    store = new_store()
    watchers = [store.watch(CM, None, None, store.current_rv()) for _ in range(5)]
    gs = [gevent.spawn(w.next, 10) for w in watchers]
    gevent.sleep(0.01)
    store.close()
    assert [g.get(timeout=2) for g in gs] == [[]] * 5


def test_progress_rv(db):
    store = Store(SQLiteBackend(db))  # etcd moves the store's rv by itself (test_storage_etcd.py)
    w = store.watch(CM, None, None, 0)
    store.create(Key("apps/deployments", "root", "", "d"), {"metadata": {"name": "d"}})
    assert w.progress_rv() == 1  # caught up with its resource; later rvs belong elsewhere
    store.create(Key(CM, "root", "default", "a"), cm("a"))
    assert w.progress_rv() == 0
    w.next(0)
    assert w.progress_rv() == 2
    store.close()


def test_many_greenlets_wake_on_one_write(store):
    n = 2000
    watchers = [store.watch(CM, "root", None, store.current_rv()) for _ in range(n)]
    got = []

    def run(w):
        events = w.next(10)
        got.append((time.monotonic(), len(events)))

    gs = [gevent.spawn(run, w) for w in watchers]
    gevent.sleep(0.01)
    start = time.monotonic()
    store.create(Key(CM, "root", "default", "a"), cm("a"))
    gevent.joinall(gs, timeout=10)
    assert len(got) == n and all(count == 1 for _, count in got)
    assert max(t for t, _ in got) - start < 1


# -- measurements (printed; run with -s) -----------------------------------------------------

def test_measurements(new_store, backend_spec):
    store = new_store()
    n = 2000
    start = time.perf_counter()
    for i in range(n):
        store.create(Key(CM, "root", "default", f"c{i:05d}"), cm(f"c{i:05d}", a=i, b="x" * 200))
    creates = n / (time.perf_counter() - start)

    for i in range(1000):
        store.create(Key("apps/deployments", f"root:c{i % 10}", "default", f"d{i:04d}"),
                     {"metadata": {"name": f"d{i:04d}"}, "spec": {"replicas": i}})
    start = time.perf_counter()
    items, _ = store.list("apps/deployments", None, None)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    items, _ = store.list("apps/deployments", None, None)
    warm = time.perf_counter() - start
    assert len(items) == 1000

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    watchers = [store.watch(CM, "root", None, store.current_rv()) for _ in range(10_000)]
    per_watcher = (tracemalloc.get_traced_memory()[0] - before) / len(watchers)
    tracemalloc.stop()

    woke = []
    gs = [gevent.spawn(lambda w=w: woke.append((time.perf_counter(), len(w.next(10))))) for w in watchers]
    gevent.sleep(0.05)
    start = time.perf_counter()
    store.create(Key(CM, "root", "default", "wake"), cm("wake"))
    gevent.joinall(gs, timeout=20)
    wake = max(t for t, _ in woke) - start
    assert len(woke) == 10_000 and all(c == 1 for _, c in woke)
    print(f"\n[storage] creates/s ({backend_spec.partition(':')[0]}): {creates:,.0f}")
    print(f"[storage] list 1000 objects over 10 clusters: cold {cold * 1e3:.2f} ms, warm {warm * 1e3:.2f} ms")
    print(f"[storage] idle Watcher object: {per_watcher:.0f} B; 10,000 watchers woken by one write in {wake * 1e3:.0f} ms")
    store.close()


def test_identical_nested_values_are_shared_between_objects(store, new_store):
    """Bootstrap objects repeat in every workspace; their nested values are stored once (objects are immutable)."""
    rules = [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"], "nonResourceURLs": []}] * 3
    managed = [{"manager": "kcp", "operation": "Update", "time": "t",
                "fieldsV1": {"f:rules": {"f:apiGroups": {}, "f:resources": {}, "f:verbs": {}}}}]
    first = store.create(Key("rbac/clusterroles", "root:a", "", "admin"),
                         {"metadata": {"name": "admin", "managedFields": managed}, "rules": rules,
                          "status": {"x": ["y" * 80]}})
    second = store.create(Key("rbac/clusterroles", "root:b", "", "admin"),
                          {"metadata": {"name": "admin", "managedFields": managed}, "rules": list(rules),
                           "status": {"x": ["y" * 80]}})
    assert second["rules"] is first["rules"]
    assert second["metadata"]["managedFields"][0]["fieldsV1"] is first["metadata"]["managedFields"][0]["fieldsV1"]
    assert second["status"] is not first["status"]  # status changes often and is not shared
    # an update replaces the value of one object only
    store.update(Key("rbac/clusterroles", "root:b", "", "admin"),
                 {"metadata": {"name": "admin"}, "rules": [{"verbs": ["get"]}]})
    assert store.get(Key("rbac/clusterroles", "root:a", "", "admin"))["rules"] == rules
    # and sharing survives a restart (objects loaded from the database are shared too)
    store.close()
    reopened = new_store()
    a = reopened.get(Key("rbac/clusterroles", "root:a", "", "admin"))
    assert a["rules"] == rules
    reopened.close()
