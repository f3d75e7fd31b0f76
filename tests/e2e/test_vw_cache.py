"""The external virtual-workspace process reading from its informers, in the forwarded topology.

A read through a virtual workspace may come from the external process's watch-fed cache only when
the shard vouched for how fresh "now" is (``X-Kcp-Shard-Resource-Version``, believed only from the
shard's proxy certificate) and the cache has seen that far. Whether the shard was asked is read from
the shard's own request metrics: the external process's live reads are the shard's plain GETs.

The external process's demo virtual workspace reads through ``RemoteShardClient``, whose
``informer`` gives it the cache.
"""

from __future__ import annotations

import time
import uuid

import orjson
import pytest
import requests

from kcp_virtual import VirtualWorkspace, cluster_path_resolver
from kcp_virtual.framework.negotiation import json_response
from server.shard import ShardConfig
from tests.topologies import running_topology
from tests.vw_demo import demo

NAMESPACE = "default"
CONFIGMAPS = f"/clusters/root/api/v1/namespaces/{NAMESPACE}/configmaps"
SHARD_RV = "X-Kcp-Shard-Resource-Version"


def fresh_echo(shard) -> VirtualWorkspace:
    """Answers every request with the freshness the external process believed for it."""
    return VirtualWorkspace("fresh-echo", cluster_path_resolver("fresh-echo"), lambda *_: (True, ""),
                            lambda request: json_response({"freshAsOf": request.fresh_as_of}))


@pytest.fixture(scope="module")
def topology():
    config = ShardConfig(virtual_workspaces=(demo, fresh_echo))
    with running_topology("forwarded", config) as running:
        yield running


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def admin(shard) -> tuple[str, str]:
    return str(shard.shard.pki.admin_cert_path), str(shard.shard.pki.admin_key_path)


def proxy(shard) -> tuple[str, str]:
    return str(shard.shard.pki.shard_proxy_cert_path), str(shard.shard.pki.shard_proxy_key_path)


def current_rv(shard) -> int:
    return shard.run(shard.shard.registry.current_resource_version)


def as_the_shards_proxy(shard, rv: int | None = None) -> dict:
    """What the shard's forwarder asserts: an identity and (``rv``, default now) the shard's resourceVersion."""
    return {"X-Remote-User": "cache-test", "X-Remote-Group": "system:masters",
            SHARD_RV: str(current_rv(shard) if rv is None else rv)}


def call(base: str, shard, path: str, *, cert, headers: dict | None = None, method: str = "GET",
         body: dict | None = None) -> requests.Response:
    return requests.request(method, base + path, cert=cert, headers=headers or {}, verify=shard.ca_file, timeout=10,
                            data=orjson.dumps(body) if body is not None else None)


def live_gets(shard) -> float:
    """The shard's GETs of single ConfigMaps outside virtual workspaces, whatever their answer: the external
    process's live reads (the test's own reads go through the virtual workspace)."""
    return sum(sample.value for metric in shard.shard.metrics.registry.collect() for sample in metric.samples
               if sample.name == "apiserver_request_total" and sample.labels.get("verb") == "GET"
               and sample.labels.get("resource") == "configmaps" and not sample.labels.get("virtual_workspace"))


def write(shard, name: str, value: str, *, create: bool = False, demo: str = "true") -> dict:
    """A demo ConfigMap (unless ``demo`` says otherwise) written straight to the shard."""
    body = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": value},
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"demo": demo}}}
    response = call(shard.url, shard, CONFIGMAPS + ("" if create else f"/{name}"), cert=admin(shard),
                    method="POST" if create else "PUT", body=body, headers={"Content-Type": "application/json"})
    assert response.status_code in (200, 201), response.text
    return response.json()


#: The shard counts a request once it has written the answer, so a live read may show up a moment after the
#: virtual workspace answered (the shard's thread waiting for the GIL): this long without it, there was none.
SETTLE = 0.05


def settled_live_gets(shard) -> float:
    """``live_gets`` once every read before has been counted."""
    count = live_gets(shard)
    while True:
        time.sleep(SETTLE)
        count, before = live_gets(shard), count
        if count == before:
            return count


def read_live_since(shard, before: float) -> bool:
    deadline = time.monotonic() + SETTLE
    while live_gets(shard) == before:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def served_from_cache(shard, read) -> tuple[requests.Response, bool]:
    before = settled_live_gets(shard)
    response = read()
    return response, not read_live_since(shard, before)


def wait_for_cache(shard, read, timeout: float = 10.0) -> requests.Response:
    deadline = time.monotonic() + timeout
    while True:
        response, cached = served_from_cache(shard, read)
        if cached:
            return response
        assert time.monotonic() < deadline, "the informer never answered"
        time.sleep(0.05)


# ---------------------------------------------------------------------- whom the external process believes

def test_the_shards_resource_version_is_believed_only_from_its_proxy(topology):
    _, shard, external = topology
    echo = "/services/fresh-echo/clusters/root/api/v1/namespaces"
    spoofed = {SHARD_RV: "1"}
    straight = call(external.url, shard, echo, cert=admin(shard), headers=spoofed)
    assert straight.status_code == 200 and straight.json() == {"freshAsOf": None}
    asserted = call(external.url, shard, echo, cert=proxy(shard), headers=as_the_shards_proxy(shard, 42))
    assert asserted.json() == {"freshAsOf": 42}
    malformed = call(external.url, shard, echo, cert=proxy(shard),
                     headers={**as_the_shards_proxy(shard), SHARD_RV: "-1"})
    assert malformed.json() == {"freshAsOf": None}
    # through the shard: the caller's value is dropped, the shard's own is sent
    before = current_rv(shard)
    forwarded = call(shard.url, shard, echo, cert=admin(shard), headers=spoofed).json()["freshAsOf"]
    assert forwarded is not None, "the shard's forwarder did not send X-Kcp-Shard-Resource-Version"
    assert before <= forwarded <= current_rv(shard)


def test_a_spoofed_resource_version_does_not_reach_the_cache(topology):
    """A client calling the external process directly with a low resourceVersion gets a live read."""
    _, shard, external = topology
    name = unique("spoof")
    write(shard, name, "v1", create=True)
    path = f"/services/demo{CONFIGMAPS}/{name}"
    wait_for_cache(shard, lambda: call(external.url, shard, path, cert=proxy(shard),
                                       headers=as_the_shards_proxy(shard)))
    _, cached = served_from_cache(shard, lambda: call(external.url, shard, path, cert=admin(shard),
                                                      headers={SHARD_RV: "1"}))
    assert not cached


# ---------------------------------------------------------------------- what the cache answers

def without_age(table: dict) -> dict:
    """A Table without its Age cells: they are computed at answer time (two answers may straddle a second)."""
    age = [c["name"] for c in table["columnDefinitions"]].index("Age")
    rows = [{**row, "cells": row["cells"][:age] + row["cells"][age + 1:]} for row in table["rows"]]
    return {**table, "rows": rows}


def test_cached_reads_are_the_shards_answers(topology):
    _, shard, external = topology
    name = unique("same")
    write(shard, name, "v1", create=True)
    path = f"/services/demo{CONFIGMAPS}"

    def get(headers: dict, cert=proxy(shard)) -> requests.Response:
        return call(external.url, shard, f"{path}/{name}", cert=cert, headers=headers)

    cached = wait_for_cache(shard, lambda: get(as_the_shards_proxy(shard)))
    live = get({}, admin(shard))
    assert (cached.status_code, cached.headers["Content-Type"], cached.content) == \
        (live.status_code, live.headers["Content-Type"], live.content)
    ahead = as_the_shards_proxy(shard, current_rv(shard) + 1000)  # newer than the cache can have seen
    stale, was_cached = served_from_cache(shard, lambda: get(ahead))
    assert not was_cached and stale.content == live.content
    table = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}
    cached, was_cached = served_from_cache(shard, lambda: get({**as_the_shards_proxy(shard), **table}))
    assert was_cached and without_age(cached.json()) == without_age(get(table, admin(shard)).json())

    listed = call(external.url, shard, path, cert=proxy(shard), headers=as_the_shards_proxy(shard)).json()
    live = call(external.url, shard, path, cert=admin(shard)).json()
    assert listed["items"] == live["items"] and name in {i["metadata"]["name"] for i in listed["items"]}
    assert int(listed["metadata"]["resourceVersion"]) <= int(live["metadata"]["resourceVersion"])

    missing, cached_missing = served_from_cache(
        shard, lambda: call(external.url, shard, f"{path}/{unique('missing')}", cert=proxy(shard),
                            headers=as_the_shards_proxy(shard)))
    assert missing.status_code == 404 and not cached_missing  # the shard tells which 404 it is
    nowhere = call(external.url, shard, f"/services/demo/clusters/root:nowhere/api/v1/namespaces/{NAMESPACE}/"
                                        f"configmaps/{name}", cert=proxy(shard), headers=as_the_shards_proxy(shard))
    assert nowhere.status_code == 404 and "logical cluster" in nowhere.json()["message"]


@pytest.mark.parametrize("route", ["forwarded by the shard", "as the shard's proxy"])
def test_read_your_writes(topology, route):
    """Write straight to the shard, then read through the virtual workspace: the write is always seen, from the
    cache when it has caught up, else from the shard."""
    _, shard, external = topology
    name = unique("ryw")
    write(shard, name, "0", create=True)
    path = f"/services/demo{CONFIGMAPS}/{name}"
    def read() -> requests.Response:
        if route == "forwarded by the shard":
            return call(shard.url, shard, path, cert=admin(shard))
        return call(external.url, shard, path, cert=proxy(shard), headers=as_the_shards_proxy(shard))

    wait_for_cache(shard, read)
    cached = 0
    for i in range(1, 51):
        before = settled_live_gets(shard)
        write(shard, name, str(i))
        if i % 2:
            time.sleep(0.05)  # time for the event to arrive: these reads may come from the cache
        response = read()  # the even ones right after the write: mostly from the shard
        assert response.status_code == 200 and response.json()["data"] == {"k": str(i)}, (i, response.text)
        cached += not read_live_since(shard, before)
    assert 10 <= cached, f"only {cached} of 50 reads came from the cache"


# ---------------------------------------------------------------------- watches from the cache

WATCHES = 50


def open_watch(shard, path: str, **params) -> requests.Response:
    """A watch through the shard, its headers read; ``iter_lines`` reads its events."""
    response = requests.get(shard.url + path, params={"watch": "true", **params}, cert=admin(shard),
                            verify=shard.ca_file, stream=True, timeout=10)
    assert response.status_code == 200, response.text
    return response


def open_watches_settle_at(shard, expected: int) -> None:
    """The shard's ``apiserver_open_watches`` reaches ``expected`` and stays there a while."""
    metrics = shard.shard.metrics
    deadline = time.monotonic() + 10
    while metrics.open_watches != expected:
        assert time.monotonic() < deadline, f"{metrics.open_watches} open watches, expected {expected}"
        time.sleep(0.02)
    time.sleep(0.5)
    assert metrics.open_watches == expected


def warm_cache(shard) -> None:
    """The external process's informer of the demo view is synced and has seen everything written so far."""
    name = unique("warm")
    write(shard, name, "v", create=True)
    wait_for_cache(shard, lambda: call(shard.url, shard, f"/services/demo{CONFIGMAPS}/{name}", cert=admin(shard)))


def test_watches_through_the_shard_open_no_watch_on_it(topology):
    """Each client watch through the shard is the forwarded one only: the external process serves it from its
    informer, with no upstream watch of its own (which would be a second open watch on the shard)."""
    _, shard, _ = topology
    warm_cache(shard)
    before = shard.shard.metrics.open_watches
    watches = [open_watch(shard, f"/services/demo{CONFIGMAPS}", timeoutSeconds="60") for _ in range(WATCHES)]
    streams = [watch.iter_lines() for watch in watches]  # kept: a dropped one closes its connection
    try:
        open_watches_settle_at(shard, before + WATCHES)
        name = unique("fan-out")
        written = write(shard, name, "v", create=True)
        for events in streams:
            event = orjson.loads(next(events))
            while event["object"]["metadata"]["name"] != name:  # the initial ADDED events first
                event = orjson.loads(next(events))
            assert event == {"type": "ADDED", "object": written}
        assert shard.shard.metrics.open_watches == before + WATCHES
    finally:
        for watch in watches:
            watch.close()


def test_a_watch_resumed_through_the_shard_is_the_shards_own(topology):
    _, shard, _ = topology
    warm_cache(shard)
    since = current_rv(shard)
    names = [unique("resume") for _ in range(2)]
    for name in names:
        write(shard, name, "1", create=True)
    write(shard, names[0], "2")
    write(shard, names[1], "2", demo="false")  # leaves the view: DELETED
    write(shard, unique("outside"), "1", create=True, demo="false")
    warm_cache(shard)
    before = shard.shard.metrics.open_watches
    through_vw = open_watch(shard, f"/services/demo{CONFIGMAPS}", resourceVersion=str(since), timeoutSeconds="2")
    try:
        open_watches_settle_at(shard, before + 1)  # the forwarded watch only
        cached = through_vw.raw.read()
    finally:
        through_vw.close()
    direct = open_watch(shard, CONFIGMAPS, resourceVersion=str(since), timeoutSeconds="1", labelSelector="demo=true")
    assert cached == direct.raw.read()
    events = [(e["type"], e["object"]["metadata"]["name"]) for e in map(orjson.loads, cached.splitlines())]
    assert events[:4] == [("ADDED", names[0]), ("ADDED", names[1]), ("MODIFIED", names[0]), ("DELETED", names[1])]


def external_open_watches(shard, external) -> float:
    text = call(external.url, shard, "/metrics", cert=admin(shard)).text
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith("apiserver_open_watches "))


def test_a_client_leaving_a_watch_from_the_cache_frees_it_in_both_processes(topology):
    _, shard, external = topology
    warm_cache(shard)
    before, external_before = shard.shard.metrics.open_watches, external_open_watches(shard, external)
    watch = open_watch(shard, f"/services/demo{CONFIGMAPS}")
    open_watches_settle_at(shard, before + 1)
    assert external_open_watches(shard, external) == external_before + 1
    watch.close()  # the client leaves without a word
    deadline = time.monotonic() + 10
    while (shard.shard.metrics.open_watches, external_open_watches(shard, external)) != (before, external_before):
        assert time.monotonic() < deadline, "the watch outlived its client"
        time.sleep(0.05)
