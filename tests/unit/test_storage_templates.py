"""Template objects (server.storage.templates): shared default content that behaves as each cluster's own rows.

Every test reopens the SQLite file at least once, because what the store serves after a restart must be what it
served before: the same uid, creationTimestamp and resourceVersion of each object, deletes and updates kept.
"""

from __future__ import annotations

import uuid

import pytest

from server.storage import ADDED, DELETED, MODIFIED, Key, KeyExistsError, SQLiteBackend, Store
from server.storage.templates import Template

ROLES, NS = "rbac/clusterroles", "core/namespaces"


def template() -> Template:
    role = {"kind": "ClusterRole", "metadata": {"name": "view", "uid": "", "creationTimestamp": "",
                                                 "annotations": {"a": "b"},
                                                 "managedFields": [{"manager": "kcp", "time": ""}]},
            "rules": [{"verbs": ["get"]}]}
    return Template([(NS, "", "default", {"kind": "Namespace", "metadata": {"name": "default"}}),
                     (ROLES, "", "admin", {**role, "metadata": {**role["metadata"], "name": "admin"}}),
                     (ROLES, "", "view", role)], "kcp.dev/cluster")


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "t.db")


def open_store(path) -> Store:
    return Store(SQLiteBackend(path))


def test_instance_objects_look_like_rows_and_survive_restart(path):
    store = open_store(path)
    store.create(Key(ROLES, "root", "", "other"), {"metadata": {"name": "other", "uid": "u"}})
    before = store.current_rv()
    w = store.watch(ROLES, None, None, before)
    uid = str(uuid.uuid4())
    store.instantiate("c1", template(), uid, "2026-01-01T00:00:00Z")
    store.instantiate("c2", template(), str(uuid.uuid4()), "2026-01-02T00:00:00Z")
    with pytest.raises(KeyExistsError):
        store.instantiate("c1", template(), uid, "2026-01-01T00:00:00Z")
    view = store.get(Key(ROLES, "c1", "", "view"))
    assert view["metadata"]["creationTimestamp"] == "2026-01-01T00:00:00Z"
    assert view["metadata"]["annotations"] == {"a": "b", "kcp.dev/cluster": "c1"}
    assert view["metadata"]["managedFields"][0]["time"] == "2026-01-01T00:00:00Z"
    assert view["rules"] == [{"verbs": ["get"]}]
    uids = {store.get(Key(r, c, "", n))["metadata"]["uid"] for r, n in ((ROLES, "view"), (ROLES, "admin"), (NS, "default"))
            for c in ("c1", "c2")}
    assert len(uids) == 6
    # Every object its own resourceVersion, all at most the store's, each delivered once as ADDED in rv order.
    events = w.take()
    assert [(e.type, e.key.cluster, e.key.name) for e in events] == [
        (ADDED, "c1", "admin"), (ADDED, "c1", "view"), (ADDED, "c2", "admin"), (ADDED, "c2", "view")]
    rvs = [e.rv for e in events]
    assert rvs == sorted(set(rvs)) and all(before < rv <= store.current_rv() for rv in rvs)
    assert [int(e.obj["metadata"]["resourceVersion"]) for e in events] == rvs
    items, _ = store.list(ROLES)
    assert [((o["metadata"].get("annotations") or {}).get("kcp.dev/cluster"), o["metadata"]["name"]) for o in items] == [
        ("c1", "admin"), ("c1", "view"), ("c2", "admin"), ("c2", "view"), (None, "other")]
    assert store.count(ROLES) == 5 and store.count(NS) == 2
    seen = {(o["metadata"]["name"], o["metadata"]["uid"], o["metadata"]["resourceVersion"]) for o in items}
    store.close()

    store = open_store(path)
    assert {(o["metadata"]["name"], o["metadata"]["uid"], o["metadata"]["resourceVersion"])
            for o in store.list(ROLES)[0]} == seen
    assert store.count(ROLES) == 5
    store.close()


def test_update_and_delete_are_copy_on_write(path):
    store = open_store(path)
    store.instantiate("c1", template(), str(uuid.uuid4()), "2026-01-01T00:00:00Z")
    store.instantiate("c2", template(), str(uuid.uuid4()), "2026-01-01T00:00:00Z")
    view = store.get(Key(ROLES, "c1", "", "view"))
    w = store.watch(ROLES, "c1", None, store.current_rv())
    changed = {**view, "rules": [{"verbs": ["list"]}]}
    updated = store.update(Key(ROLES, "c1", "", "view"), changed, int(view["metadata"]["resourceVersion"]))
    assert updated["metadata"]["uid"] == view["metadata"]["uid"]
    assert int(updated["metadata"]["resourceVersion"]) > int(view["metadata"]["resourceVersion"])
    gone = store.delete(Key(ROLES, "c1", "", "admin"))
    assert gone["metadata"]["name"] == "admin"
    assert [(e.type, e.key.name) for e in w.take()] == [(MODIFIED, "view"), (DELETED, "admin")]
    assert store.get(Key(ROLES, "c1", "", "admin")) is None
    assert store.get(Key(ROLES, "c2", "", "view"))["rules"] == [{"verbs": ["get"]}]  # the other cluster's unchanged
    assert store.count(ROLES) == 3
    store.close()

    store = open_store(path)
    assert store.get(Key(ROLES, "c1", "", "admin")) is None
    assert store.get(Key(ROLES, "c1", "", "view"))["rules"] == [{"verbs": ["list"]}]
    assert [o["metadata"]["name"] for o in store.list(ROLES, "c1")[0]] == ["view"]
    assert store.count(ROLES) == 3
    # A new object under the deleted one's name is a row of its own; deleting it hides the template again.
    again = store.create(Key(ROLES, "c1", "", "admin"), {"metadata": {"name": "admin", "uid": "new"}})
    assert store.get(Key(ROLES, "c1", "", "admin"))["metadata"]["uid"] == "new"
    assert int(again["metadata"]["resourceVersion"]) == store.current_rv()
    store.delete(Key(ROLES, "c1", "", "admin"))
    store.close()

    store = open_store(path)
    assert store.get(Key(ROLES, "c1", "", "admin")) is None
    assert store.count(ROLES) == 3
    store.close()


def test_drop_instance_deletes_what_it_showed_and_a_new_instance_starts_clean(path):
    store = open_store(path)
    store.instantiate("c1", template(), str(uuid.uuid4()), "2026-01-01T00:00:00Z")
    store.delete(Key(ROLES, "c1", "", "admin"))
    view = store.get(Key(ROLES, "c1", "", "view"))
    w = store.watch(ROLES, None, None, store.current_rv())
    store.drop_instance("c1")
    events = w.take()
    assert [(e.type, e.key.name) for e in events] == [(DELETED, "view")]
    assert events[0].obj["metadata"]["uid"] == view["metadata"]["uid"]
    assert int(events[0].obj["metadata"]["resourceVersion"]) == events[0].rv > int(view["metadata"]["resourceVersion"])
    assert store.list(ROLES)[0] == [] and store.count() == 0
    store.instantiate("c1", template(), str(uuid.uuid4()), "2026-02-01T00:00:00Z")
    assert [o["metadata"]["name"] for o in store.list(ROLES, "c1")[0]] == ["admin", "view"]
    store.close()

    store = open_store(path)
    assert [o["metadata"]["name"] for o in store.list(ROLES, "c1")[0]] == ["admin", "view"]
    assert store.get(Key(ROLES, "c1", "", "view"))["metadata"]["creationTimestamp"] == "2026-02-01T00:00:00Z"
    store.close()


def test_a_row_written_before_the_instance_wins(path):
    store = open_store(path)
    store.create(Key(ROLES, "c1", "", "view"), {"metadata": {"name": "view", "uid": "mine"}})
    w = store.watch(ROLES, None, None, store.current_rv())
    store.instantiate("c1", template(), str(uuid.uuid4()), "2026-01-01T00:00:00Z")
    assert [e.key.name for e in w.take()] == ["admin"]
    assert store.get(Key(ROLES, "c1", "", "view"))["metadata"]["uid"] == "mine"
    assert store.count(ROLES) == 2
    store.close()
