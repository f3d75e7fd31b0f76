"""What only the etcd backend does: prefix claims and fencing, list at a revision and compaction, writes behind
the shard's back, lost connections, writes left in doubt, revision progress, TLS. A real etcd process
(``server.testing.EtcdProcess``); ``test_storage.py`` runs the common storage suite on it too."""

from __future__ import annotations

import time

import gevent
import pytest

from server import pki
from server.storage import (ConflictError, EtcdBackend, Key, ObjectTooLargeError, PrefixInUseError,
                            ResourceExpiredError, StorageUnavailableError, Store)
from server.testing import EtcdProcess, running_etcd

CM = "core/configmaps"


def cm(name: str, **data) -> dict:
    return {"metadata": {"name": name, "namespace": "default"}, "data": {k: str(v) for k, v in data.items()}}


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    with running_etcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture
def prefix(request):
    return f"/claims/{request.node.name}/{time.monotonic_ns()}"


def backend(etcd, prefix, owner="one", **options):
    return EtcdBackend(etcd.servers, prefix=prefix, owner=owner, probe_interval=0.05, **options)


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        gevent.sleep(0.02)


# -- claims ----------------------------------------------------------------------------------

def test_a_prefix_of_another_shard_is_refused(etcd, prefix):
    first = backend(etcd, prefix, owner="one")
    with pytest.raises(PrefixInUseError, match=rf'etcd prefix "{prefix}/" belongs to shard "one", not "two"'):
        backend(etcd, prefix, owner="two")
    with pytest.raises(PrefixInUseError, match=rf'overlaps prefix "{prefix}/" of shard "one"'):
        backend(etcd, prefix + "/inner", owner="two")
    with pytest.raises(PrefixInUseError, match="overlaps prefix"):
        backend(etcd, prefix.rpartition("/")[0], owner="two")  # a prefix around the first one
    neighbour = backend(etcd, prefix + "x", owner="two")   # /a/ and /ax/ do not overlap
    first.close()
    neighbour.close()


def test_a_prefix_with_data_nobody_claimed_is_refused(etcd, prefix):
    raw = backend(etcd, prefix + "-raw", owner="writer")
    raw._gateway.call("/v3/kv/put", {"key": "L2ZvcmVpZ24vYQ==", "value": ""})  # /foreign/a, outside it: fine
    raw.close()
    foreign = backend(etcd, "/other-tool", owner="x")
    foreign.write("a/b/c/d", b"{}", 0)
    foreign._gateway.call("/v3/kv/deleterange", {"key": "AGtjcC12aXJ0dWFsL2V0Y2QtcHJlZml4ZXMvL290aGVyLXRvb2wv"})
    foreign.close()
    with pytest.raises(PrefixInUseError, match='etcd prefix "/other-tool/" already holds 1 keys that no kcp shard'):
        backend(etcd, "/other-tool", owner="y")


def test_a_new_process_of_the_shard_fences_the_old_one_out(etcd, prefix):
    old = Store(backend(etcd, prefix, owner="one"))
    old.create(Key(CM, "root", "default", "a"), cm("a"))
    new = Store(backend(etcd, prefix, owner="one"))  # a restart while the old process still runs
    assert new.get(Key(CM, "root", "default", "a")) is not None
    with pytest.raises(StorageUnavailableError, match="taken over by another kcp process"):
        old.create(Key(CM, "root", "default", "b"), cm("b"))
    assert not old.healthy()
    new.create(Key(CM, "root", "default", "b"), cm("b"))
    old.close()
    new.close()


# -- history ---------------------------------------------------------------------------------

def test_list_at_a_past_revision_until_compacted(etcd, prefix):
    store = Store(backend(etcd, prefix))
    k = Key(CM, "root", "default", "a")
    store.create(k, cm("a", v=1))
    store.create(Key(CM, "root:other", "default", "b"), cm("b"))
    before = store.current_rv()
    store.update(k, cm("a", v=2))
    store.create(Key(CM, "root", "default", "c"), cm("c"))
    store.delete(Key(CM, "root:other", "default", "b"))

    past = store.list_at(CM, None, None, before)
    assert [(o["metadata"]["name"], o["data"]) for o in past] == [("a", {"v": "1"}), ("b", {})]
    assert int(past[0]["metadata"]["resourceVersion"]) < before
    assert [o["metadata"]["name"] for o in store.list_at(CM, "root", None, before)] == ["a"]
    assert [o["metadata"]["name"] for o in store.list_at(CM, "root", "default", store.current_rv())] == ["a", "c"]
    assert store.list_at(CM, None, "nope", before) == []

    store._backend.compact(store.current_rv())
    with pytest.raises(ResourceExpiredError, match="compacted"):
        store.list_at(CM, None, None, before)
    store.close()


def test_a_write_behind_the_shards_back_is_a_conflict_and_adopted(etcd, prefix):
    store = Store(backend(etcd, prefix))
    k = Key(CM, "root", "default", "a")
    store.create(k, cm("a", v=1))
    w = store.watch(CM, None, None, store.current_rv())
    intruder = store._backend
    # Someone (etcdctl) rewrites the key without the store knowing.
    rv = intruder.write("core/configmaps/root/default/a", b'{"metadata":{"name":"a"},"data":{"v":"etcdctl"}}',
                        int(store.get(k)["metadata"]["resourceVersion"]))
    with pytest.raises(ConflictError, match="changed in etcd behind this shard"):
        store.update(k, cm("a", v=2))
    assert store.get(k)["data"] == {"v": "etcdctl"} and store.get(k)["metadata"]["resourceVersion"] == str(rv)
    assert [(e.type, e.rv) for e in w.next(0)] == [("MODIFIED", rv)]
    store.update(k, cm("a", v=3), expected_rv=rv)  # from there on as usual
    store.close()


def test_the_store_follows_etcds_revision_while_idle(etcd, prefix):
    quiet = Store(backend(etcd, prefix + "-quiet"))
    busy = Store(backend(etcd, prefix + "-busy", owner="two"))
    w = quiet.watch(CM, None, None, quiet.current_rv())
    written = busy.create(Key(CM, "root", "default", "x"), cm("x"))
    wait_for(lambda: quiet.current_rv() >= int(written["metadata"]["resourceVersion"]))
    assert w.progress_rv() == quiet.current_rv() and w.next(0) == []
    # and its own writes still come after everything it announced
    mine = quiet.create(Key(CM, "root", "default", "y"), cm("y"))
    assert int(mine["metadata"]["resourceVersion"]) > int(written["metadata"]["resourceVersion"])
    quiet.close()
    busy.close()


def test_an_object_too_large_for_etcd(etcd, prefix):
    store = Store(backend(etcd, prefix))
    for size in (1_600_000, 2_200_000):  # above etcd's request limit; above the gateway's message limit
        with pytest.raises(ObjectTooLargeError, match="too large|larger than max"):
            store.create(Key(CM, "root", "default", "big"), cm("big", blob="x" * size))
    assert store.count() == 0 and store.healthy()
    store.close()


# -- faults ----------------------------------------------------------------------------------

def test_lost_connection_then_reconnect(tmp_path, prefix):
    etcd = EtcdProcess(tmp_path / "etcd").start()
    try:
        store = Store(backend(etcd, prefix, request_timeout=2.0))
        store.create(Key(CM, "root", "default", "a"), cm("a"))
        etcd.stop()
        with pytest.raises(StorageUnavailableError, match="etcd is unavailable") as info:
            store.create(Key(CM, "root", "default", "b"), cm("b"))
        assert not info.value.in_doubt  # refused: surely not written
        assert store.get(Key(CM, "root", "default", "a")) is not None  # memory still serves reads
        wait_for(lambda: not store.healthy())
        etcd.start()
        wait_for(store.healthy)
        store.create(Key(CM, "root", "default", "b"), cm("b"))  # reconnected by itself
        store.close()
        reopened = Store(backend(etcd, prefix))
        assert reopened.count() == 2
        reopened.close()
    finally:
        etcd.stop()


class LostAnswers:
    """Writes land in etcd, but the answer is 'lost' (as when the connection drops right after the commit)."""

    def __init__(self, inner: EtcdBackend):
        self.inner = inner
        self.lose = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def write(self, key, value, prev_rv):
        rv = self.inner.write(key, value, prev_rv)
        if self.lose:
            self.lose -= 1
            raise StorageUnavailableError("connection reset", in_doubt=True)
        return rv

    def read(self, key):
        if self.lose:
            self.lose -= 1
            raise StorageUnavailableError("still unreachable")
        return self.inner.read(key)


def test_a_write_left_in_doubt_is_settled_before_the_next(etcd, prefix):
    flaky = LostAnswers(backend(etcd, prefix))
    store = Store(flaky)
    w = store.watch(CM, None, None, store.current_rv())
    flaky.lose = 2  # this write's answer, and the first attempt to find out
    with pytest.raises(StorageUnavailableError) as info:
        store.create(Key(CM, "root", "default", "a"), cm("a"))
    assert info.value.in_doubt and store.get(Key(CM, "root", "default", "a")) is None
    # found out in the background, announced as the write it was
    events = w.next(5)
    assert [(e.type, e.key.name) for e in events] == [("ADDED", "a")]
    assert store.get(Key(CM, "root", "default", "a"))["metadata"]["resourceVersion"] == str(events[0].rv)
    store.create(Key(CM, "root", "default", "b"), cm("b"))
    store.close()


def test_tls_with_client_certificates(tmp_path, prefix):
    ca = pki.CA.create("etcd-test-ca")
    with running_etcd(tmp_path / "etcd", tls=ca) as etcd:
        store = Store(backend(etcd, prefix, ca_file=etcd.ca_file, cert_file=etcd.client_cert,
                              key_file=etcd.client_key))
        store.create(Key(CM, "root", "default", "a"), cm("a"))
        store.close()
        with pytest.raises(StorageUnavailableError, match="etcd"):
            backend(etcd, prefix, ca_file=etcd.ca_file)  # no client certificate: refused
