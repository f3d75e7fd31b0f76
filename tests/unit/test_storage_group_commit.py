"""Group commit on SQLite (server.storage.sqlite): concurrent writers share one transaction, each is answered after
its COMMIT, in resourceVersion order, and a write that fails inside a group fails nobody else.

Every test reopens the file: what was acknowledged must be what is stored."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys

import gevent
import pytest

from server.storage import ADDED, Key, KeyExistsError, ObjectTooLargeError, SQLiteBackend, Store
from server.storage.templates import Template

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CM = "core/configmaps"


def cm(name: str, **data) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"},
            "data": {k: str(v) for k, v in data.items()}}


def rv_of(obj: dict) -> int:
    return int(obj["metadata"]["resourceVersion"])


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "objects.db")


def rows(db: str) -> dict[str, int]:
    """key -> rv as the file holds them (read by a connection of its own, as after a restart)."""
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT key, rv FROM objects"))
    finally:
        conn.close()


def test_concurrent_writers_share_commits_in_rv_order(db):
    backend = SQLiteBackend(db)
    store = Store(backend)
    w = store.watch(CM, None, None, 0)
    answered = []

    def create(i):
        obj = store.create(Key(CM, "root", "default", f"c{i}"), cm(f"c{i}", i=i))
        answered.append(rv_of(obj))

    gevent.joinall([gevent.spawn(create, i) for i in range(200)], raise_error=True)
    # Fewer transactions than writes: writers that came while one group committed shared the next.
    assert backend.writes == 200 and backend.groups < 50
    # Every write its own rv, gapless; the watch sees them in rv order (= commit order), each once.
    assert sorted(answered) == list(range(1, 201))
    assert [e.rv for e in w.take()] == list(range(1, 201))
    assert store.current_rv() == 200
    store.close()
    assert sorted(rows(db).values()) == list(range(1, 201))
    reopened = Store(SQLiteBackend(db))
    assert {rv_of(reopened.get(Key(CM, "root", "default", f"c{i}"))) for i in range(200)} == set(answered)
    reopened.close()


def test_a_write_failing_in_a_group_fails_no_other(db):
    backend = SQLiteBackend(db)
    store = Store(backend)
    store.create(Key(CM, "root", "default", "first"), cm("first"))
    # SQLite refuses values over its length limit: a real per-write failure inside the transaction.
    backend._pool.apply(backend._conn.setlimit, (sqlite3.SQLITE_LIMIT_LENGTH, 4096))
    groups_before = backend.groups
    w = store.watch(CM, None, None, store.current_rv())
    outcome = {}

    def create(i, size):
        try:
            outcome[i] = rv_of(store.create(Key(CM, "root", "default", f"c{i}"), cm(f"c{i}", pad="x" * size)))
        except Exception as exc:  # noqa: BLE001 - recorded for the asserts
            outcome[i] = exc

    writers = [gevent.spawn(create, i, 10_000 if i in (3, 7) else 10) for i in range(12)]
    gevent.joinall(writers)
    failed = {i for i, o in outcome.items() if isinstance(o, Exception)}
    assert failed == {3, 7}
    assert all(isinstance(outcome[i], ObjectTooLargeError) for i in failed)
    assert backend.groups - groups_before <= 2  # the others committed together, not one by one
    # The failed writes took no resourceVersion: the others are gapless, in order on the watch.
    good = sorted(o for i, o in outcome.items() if i not in failed)
    assert good == list(range(2, 12))
    assert [e.rv for e in w.take()] == good
    assert store.get(Key(CM, "root", "default", "c3")) is None and store.count(CM) == 11
    # The key is free again: a write that fits goes through.
    assert rv_of(store.create(Key(CM, "root", "default", "c3"), cm("c3"))) == 12
    store.close()
    on_disk = rows(db)
    assert f"{CM}/root/default/c7" not in on_disk and len(on_disk) == 12


def test_writes_to_one_key_wait_for_each_other(db):
    """A write is checked against memory, so a second write to a key waits until the first one's commit is there:
    of two creates one wins, and updates with the rv they read never lose one another."""
    store = Store(SQLiteBackend(db))
    k = Key(CM, "root", "default", "shared")
    results = []

    def create():
        try:
            results.append(rv_of(store.create(k, cm("shared", n=0))))
        except KeyExistsError:
            results.append("exists")

    gevent.joinall([gevent.spawn(create) for _ in range(5)], raise_error=True)
    assert sorted(results, key=str) == [1, "exists", "exists", "exists", "exists"]

    def bump(times):
        for _ in range(times):
            cur = store.get(k)
            store.update(k, cm("shared", n=int(cur["data"]["n"]) + 1))  # no expected rv: must still not be lost

    gevent.joinall([gevent.spawn(bump, 10) for _ in range(10)], raise_error=True)
    # Updates read what was stored before they were queued: some overwrite others (last writer wins), but each
    # is applied after the one before it committed, so the counter only goes up, and the last one is on disk.
    final = store.get(k)
    assert rv_of(final) == 101
    store.close()
    reopened = Store(SQLiteBackend(db))
    assert reopened.get(k)["data"] == final["data"] and rv_of(reopened.get(k)) == 101
    reopened.close()


def test_templates_in_flight_with_writes(db):
    """Clusters made from a template at once (each one write reserving its objects' rvs), with writes in the same
    clusters racing them: every object is there once, with an ADDED event, in rv order."""
    role = {"kind": "ClusterRole", "metadata": {"name": "view", "uid": "", "creationTimestamp": ""}, "rules": []}
    tpl = Template([("rbac/clusterroles", "", "view", role), ("rbac/clusterroles", "", "edit", {
        **role, "metadata": {**role["metadata"], "name": "edit"}})], "kcp.dev/cluster")
    store = Store(SQLiteBackend(db))
    w = store.watch("rbac/clusterroles", None, None, 0)

    def make(i):
        store.instantiate(f"c{i}", tpl, f"uid-{i}", "2026-01-01T00:00:00Z")

    rows_won = set()

    def own_role(i):
        try:
            store.create(Key("rbac/clusterroles", f"c{i}", "", "view"), {"metadata": {"name": "view"}, "rules": [1]})
            rows_won.add(i)
        except KeyExistsError:
            pass  # the template's came first: it is that cluster's "view" now

    greenlets = []
    for i in range(20):  # half the clusters see the row first, half the template
        pair = (make, own_role) if i % 2 else (own_role, make)
        greenlets += [gevent.spawn(fn, i) for fn in pair]
    gevent.joinall(greenlets, raise_error=True)
    assert rows_won == set(range(0, 20, 2))
    events = w.take()
    assert [e.rv for e in events] == sorted(e.rv for e in events) and len({e.rv for e in events}) == len(events)
    for i in range(20):
        mine = [(e.type, e.key.name) for e in events if e.key.cluster == f"c{i}"]
        # The row shadows the template's "view" whichever came first; exactly one ADDED each.
        assert sorted(mine) == [(ADDED, "edit"), (ADDED, "view")]
        view = store.get(Key("rbac/clusterroles", f"c{i}", "", "view"))
        assert view["rules"] == ([1] if i in rows_won else [])
    assert store.count("rbac/clusterroles") == 40
    store.close()
    reopened = Store(SQLiteBackend(db))
    assert reopened.count("rbac/clusterroles") == 40
    assert all(reopened.get(Key("rbac/clusterroles", f"c{i}", "", "edit")) is not None for i in range(20))
    assert [reopened.get(Key("rbac/clusterroles", f"c{i}", "", "view"))["rules"] for i in range(4)] == [[1], [], [1], []]
    reopened.close()


def test_close_commits_what_is_queued(db):
    store = Store(SQLiteBackend(db))
    done = []

    def create(i):
        done.append(rv_of(store.create(Key(CM, "root", "default", f"c{i}"), cm(f"c{i}"))))

    writers = [gevent.spawn(create, i) for i in range(50)]
    gevent.sleep(0)  # all of them queued, the first group in flight
    store.close()
    gevent.joinall(writers)
    assert sorted(done) == list(range(1, len(done) + 1))
    assert len(rows(db)) == len(done) > 0


KILL_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[2])
import gevent
from server.storage import Key, SQLiteBackend, Store
store = Store(SQLiteBackend(sys.argv[1]))

def writer(w):
    i = 0
    while True:
        name = f"cm-{w}-{i}"
        obj = store.create(Key("core/configmaps", "root", "default", name), {"metadata": {"name": name}})
        sys.stdout.write(f"{name} {obj['metadata']['resourceVersion']}\n")  # acknowledged: committed before this
        sys.stdout.flush()
        i += 1

gevent.joinall([gevent.spawn(writer, w) for w in range(24)])
"""


def test_acknowledged_concurrent_writes_survive_kill_9(db, tmp_path):
    script = tmp_path / "writers.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), db, ROOT], stdout=subprocess.PIPE, text=True)
    acked = {}
    try:
        for line in proc.stdout:
            if line.startswith("cm-"):
                name, rv = line.split()
                acked[name] = int(rv)
            if len(acked) >= 2000:
                break
        os.kill(proc.pid, signal.SIGKILL)  # mid-load: two dozen writers with groups in flight
        for line in proc.stdout:
            if line.startswith("cm-") and len(line.split()) == 2:
                name, rv = line.split()
                acked[name] = int(rv)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(set(acked.values())) == len(acked)  # every acknowledgement its own rv
    store = Store(SQLiteBackend(db))
    lost = {n: rv for n, rv in acked.items()
            if (obj := store.get(Key(CM, "root", "default", n))) is None or rv_of(obj) != rv}
    assert not lost
    assert store.current_rv() >= max(acked.values())
    store.close()
