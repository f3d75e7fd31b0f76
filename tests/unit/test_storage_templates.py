"""Template objects (server.storage.templates): shared default content that behaves as each cluster's own rows.

Every test reopens the SQLite file at least once, because what the store serves after a restart must be what it
served before: the same uid, creationTimestamp and resourceVersion of each object, deletes and updates kept.
"""

from __future__ import annotations

import uuid

import pytest

from server.storage import ADDED, DELETED, MODIFIED, Key, KeyExistsError, ResourceExpiredError, SQLiteBackend, Store
from server.storage.templates import NAME, OWNER, Template

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


# -- named templates: many instances in one cluster, each naming its objects and its owner

BINDINGS = "rbac/clusterrolebindings"


def grants(version: str = "1") -> Template:
    grant = "owner:" + NAME
    return Template([
        (ROLES, "", grant, {"kind": "ClusterRole", "metadata": {"name": grant, "uid": "", "creationTimestamp": ""},
                            "rules": [{"verbs": ["admin"], "resourceNames": [NAME]}], "v": version}),
        (BINDINGS, "", grant, {"kind": "ClusterRoleBinding", "metadata": {"name": grant},
                               "roleRef": {"kind": "ClusterRole", "name": grant},
                               "subjects": [{"kind": "User", "name": OWNER}]})], "kcp.dev/cluster", named="grants")


def test_named_instances_are_objects_of_their_own_in_one_cluster(path):
    store = open_store(path)
    store.instantiate("org", template(), str(uuid.uuid4()), "2026-01-01T00:00:00Z")
    store.create(Key(ROLES, "org", "", "zz-real"), {"metadata": {"name": "zz-real", "uid": "r"}})
    before = store.current_rv()
    w = store.watch(BINDINGS, "org", None, before)
    store.instantiate("org", grants(), str(uuid.uuid4()), "2026-01-03T00:00:00Z", "alice", "a")
    store.instantiate("org", grants(), str(uuid.uuid4()), "2026-01-03T00:00:00Z", 'bob "the" \\ owner', "b")
    with pytest.raises(KeyExistsError):
        store.instantiate("org", grants(), str(uuid.uuid4()), "2026-01-03T00:00:00Z", "eve", "a")
    with pytest.raises(ValueError):
        store.instantiate("org2", grants(), str(uuid.uuid4()), "2026-01-03T00:00:00Z", "eve")
    role = store.get(Key(ROLES, "org", "", "owner:a"))
    assert role["metadata"]["name"] == "owner:a" and role["rules"] == [{"verbs": ["admin"], "resourceNames": ["a"]}]
    assert role["metadata"]["annotations"] == {"kcp.dev/cluster": "org"}
    binding = store.get(Key(BINDINGS, "org", "", "owner:b"))
    assert binding["roleRef"]["name"] == "owner:b" and binding["subjects"] == [{"kind": "User", "name": 'bob "the" \\ owner'}]
    assert store.get(Key(ROLES, "org", "", "owner:c")) is None and store.get(Key(ROLES, "org", "", "owner:")) is None
    assert store.get(Key(ROLES, "other", "", "owner:a")) is None
    assert grants().prefixes and store.has_instance("org", "grants", "a") and not store.has_instance("org", "grants", "c")
    items = store.list(ROLES, "org")[0]
    assert [o["metadata"]["name"] for o in items] == ["admin", "owner:a", "owner:b", "view", "zz-real"]
    uids = {o["metadata"]["uid"] for o in items}
    rvs = [int(o["metadata"]["resourceVersion"]) for o in items]
    assert len(uids) == 5 and len(set(rvs)) == 5 and all(rv <= store.current_rv() for rv in rvs)
    assert store.count(ROLES) == 5 and store.count(BINDINGS) == 2
    events = w.take()
    assert [(e.type, e.key.name) for e in events] == [(ADDED, "owner:a"), (ADDED, "owner:b")]
    replay = store.watch(BINDINGS, "org", None, events[0].rv).take()  # resuming from an older resourceVersion
    assert [(e.key.name, e.rv, e.obj) for e in replay] == [("owner:b", events[1].rv, events[1].obj)]
    assert [int(e.obj["metadata"]["resourceVersion"]) for e in events] == [e.rv for e in events]
    assert events[0].obj["subjects"] == [{"kind": "User", "name": "alice"}]
    seen = {(o["metadata"]["name"], o["metadata"]["uid"], o["metadata"]["resourceVersion"]) for o in items}
    store.close()

    store = open_store(path)
    assert {(o["metadata"]["name"], o["metadata"]["uid"], o["metadata"]["resourceVersion"])
            for o in store.list(ROLES, "org")[0]} == seen
    assert store.count(ROLES) == 5
    with pytest.raises(ResourceExpiredError):  # the history is memory: from before the restart is 410, as kube's
        store.watch(BINDINGS, "org", None, before)
    store.close()


def test_a_named_instance_is_copy_on_write_and_drops_alone(path):
    store = open_store(path)
    for name, owner in (("a", "alice"), ("b", "bob")):
        store.instantiate("org", grants(), str(uuid.uuid4()), "2026-01-03T00:00:00Z", owner, name)
    role = store.get(Key(ROLES, "org", "", "owner:a"))
    w = store.watch(ROLES, "org", None, store.current_rv())
    store.update(Key(ROLES, "org", "", "owner:a"), {**role, "rules": []}, int(role["metadata"]["resourceVersion"]))
    store.delete(Key(BINDINGS, "org", "", "owner:a"))
    store.delete(Key(ROLES, "org", "", "owner:b"))
    assert store.get(Key(BINDINGS, "org", "", "owner:a")) is None
    assert store.get(Key(ROLES, "org", "", "owner:a"))["rules"] == []
    assert store.get(Key(ROLES, "org", "", "owner:a"))["metadata"]["uid"] == role["metadata"]["uid"]
    assert [(e.type, e.key.name) for e in w.take()] == [(MODIFIED, "owner:a"), (DELETED, "owner:b")]
    store.close()

    store = open_store(path)
    assert [o["metadata"]["name"] for o in store.list(ROLES, "org")[0]] == ["owner:a"]
    assert store.get(Key(ROLES, "org", "", "owner:a"))["rules"] == []
    assert [o["metadata"]["name"] for o in store.list(BINDINGS, "org")[0]] == ["owner:b"]
    w = store.watch(BINDINGS, "org", None, store.current_rv())
    store.drop_instance("org", "grants", "b")
    assert [(e.type, e.key.name) for e in w.take()] == [(DELETED, "owner:b")]
    assert store.list(BINDINGS, "org")[0] == [] and store.has_instance("org", "grants", "a")
    store.drop_instance("org", "grants", "a")  # its tombstone goes with it; the tenant's row stays
    assert [o["metadata"]["name"] for o in store.list(ROLES, "org")[0]] == ["owner:a"]
    assert store.count(ROLES) == 1 and store.count(BINDINGS) == 0
    store.close()

    store = open_store(path)
    assert store.count(ROLES) == 1 and store.count(BINDINGS) == 0 and not store.has_instance("org", "grants", "a")
    assert [k for k, _, _ in store._backend.load() if "tombstone" in k or "instances" in k] == []
    store.close()


def test_a_named_instance_of_an_older_version_is_still_found_and_dropped(path):
    store = open_store(path)
    store.instantiate("org", grants("1"), str(uuid.uuid4()), "2026-01-03T00:00:00Z", "alice", "a")
    store.instantiate("org", grants("2"), str(uuid.uuid4()), "2026-01-03T00:00:00Z", "bob", "b")
    assert store.get(Key(ROLES, "org", "", "owner:a"))["v"] == "1"
    assert store.get(Key(ROLES, "org", "", "owner:b"))["v"] == "2"
    with pytest.raises(KeyExistsError):
        store.instantiate("org", grants("2"), str(uuid.uuid4()), "2026-01-03T00:00:00Z", "alice", "a")
    store.close()
    store = open_store(path)
    assert store.get(Key(ROLES, "org", "", "owner:a"))["v"] == "1"
    store.drop_instances("org")
    assert store.count() == 0 and store.list(ROLES)[0] == []
    store.close()


def test_names_are_the_listed_objects_without_making_them(path):
    store = open_store(path)
    store.instantiate("org", template(), str(uuid.uuid4()), "2026-01-01T00:00:00Z")
    for name in ("a", "b"):
        store.instantiate("org", grants(), str(uuid.uuid4()), "2026-01-03T00:00:00Z", "alice", name)
    store.create(Key(ROLES, "org", "", "zz"), {"metadata": {"name": "zz"}})
    store.delete(Key(ROLES, "org", "", "owner:b"))
    store.delete(Key(ROLES, "org", "", "view"))
    listed = [("", o["metadata"]["name"]) for o in store.list(ROLES, "org")[0]]
    assert listed == [("", "admin"), ("", "owner:a"), ("", "zz")]
    assert store.names(ROLES, "org") == set(listed)
    assert store.names(ROLES, "other") == set()
    store.close()


def test_a_list_of_some_fields_makes_template_objects_with_those_only(path):
    store = open_store(path)
    store.instantiate("org", grants(), str(uuid.uuid4()), "2026-01-03T00:00:00Z", "alice", "a")
    store.create(Key(BINDINGS, "org", "", "real"), {"metadata": {"name": "real", "uid": "u"}, "subjects": []})
    full = store.list(BINDINGS, "org")[0]
    some = store.list(BINDINGS, "org", fields=("roleRef", "subjects"))[0]
    assert some[0] == {"metadata": {"name": "owner:a"}, "roleRef": full[0]["roleRef"],
                       "subjects": [{"kind": "User", "name": "alice"}]}
    assert some[1] is full[1]  # a row is handed out whole
    store.close()
