"""The shard's ``/services/*`` forwarding at the edges (``server/http/forwarding.py``).

Most forwarded requests take the raw path (bytes relayed below the WSGI stack); what it leaves to the
WSGI path -- oversized and chunked bodies, HEAD, HTTP/1.0, failed authentication -- must answer
exactly as before, and keep-alive connections must stay usable across both.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
import uuid

import pytest

from kcp_virtual.transport import http2

from server.shard import ShardConfig
from tests.topologies import running_topology
from tests.vw_demo import DEMO_VIRTUAL_WORKSPACES

CONFIGMAPS = "/services/demo/clusters/root/api/v1/namespaces/default/configmaps"


@pytest.fixture(scope="module")
def shard():
    with running_topology("forwarded", ShardConfig(virtual_workspaces=DEMO_VIRTUAL_WORKSPACES)) as (_, running, _):
        yield running


def connect(shard, *, cert: bool = True) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=shard.ca_file)
    if cert:
        context.load_cert_chain(str(shard.shard.pki.admin_cert_path), str(shard.shard.pki.admin_key_path))
    return http.client.HTTPSConnection("127.0.0.1", shard.shard.port, context=context, timeout=10)


def configmap(name: str, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"demo": "true"}},
            "data": data}


def exchange(connection: http.client.HTTPSConnection, method: str, path: str, body=None, headers=None):
    connection.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    return response, response.read()


def test_keep_alive_requests_through_the_raw_path(shard):
    connection = connect(shard)
    name = f"ka-{uuid.uuid4().hex[:6]}"
    response, body = exchange(connection, "POST", CONFIGMAPS, json.dumps(configmap(name, a="1")))
    assert response.status == 201, body
    for _ in range(3):
        response, body = exchange(connection, "GET", f"{CONFIGMAPS}/{name}")
        assert response.status == 200 and json.loads(body)["data"] == {"a": "1"}
        assert len(response.headers.get_all("Date")) == 1
        assert response.headers.get("Transfer-Encoding") is None and response.headers.get("Content-Length")
    response, body = exchange(connection, "GET", f"{CONFIGMAPS}/nothing-here")
    assert response.status == 404 and json.loads(body)["reason"] == "NotFound"
    connection.close()


def test_what_the_raw_path_leaves_to_wsgi_answers_as_before(shard):
    connection = connect(shard)
    too_big = json.dumps(configmap("big", blob="x" * (4 * 1024 * 1024)))
    response, body = exchange(connection, "POST", CONFIGMAPS, too_big)
    assert response.status == 413 and json.loads(body)["kind"] == "Status"

    name = f"chunked-{uuid.uuid4().hex[:6]}"
    payload = json.dumps(configmap(name, b="2")).encode()
    connection = connect(shard)
    connection.request("POST", CONFIGMAPS, body=iter([payload[:10], payload[10:]]),
                       headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                       encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 201, response.read()
    response.read()

    connection.request("HEAD", f"{CONFIGMAPS}/{name}")
    response = connection.getresponse()
    assert response.status == 200 and response.read() == b""
    response, body = exchange(connection, "GET", f"{CONFIGMAPS}/{name}")  # the connection is still good
    assert response.status == 200 and json.loads(body)["data"] == {"b": "2"}

    anonymous = connect(shard, cert=False)
    response, body = exchange(anonymous, "GET", CONFIGMAPS, headers={"Authorization": "Bearer not-a-token"})
    assert response.status == 401 and json.loads(body)["reason"] == "Unauthorized"


def test_an_http_1_0_client_is_answered_and_closed(shard):
    connection = connect(shard)
    connection._http_vsn, connection._http_vsn_str = 10, "HTTP/1.0"
    response, body = exchange(connection, "GET", CONFIGMAPS)
    assert response.status == 200 and json.loads(body)["kind"] == "ConfigMapList"
    assert response.version == 11 and response.will_close


def test_a_forwarded_request_is_logged_and_counted_once_with_its_virtual_workspace(shard):
    metrics = shard.shard.metrics

    def counted() -> int:
        return sum(n for key, n in metrics._requests.counts.items() if key[3] == "demo")

    before, deadline = None, time.monotonic() + 5  # an earlier test's last line may still be on its way
    while before != counted() or metrics.inflight_requests:
        assert time.monotonic() < deadline
        before = counted()
        time.sleep(0.1)
    connection = connect(shard)
    for _ in range(5):
        assert exchange(connection, "GET", CONFIGMAPS)[0].status == 200
    deadline = time.monotonic() + 2  # the line is written just after the response
    while counted() - before < 5:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.1)
    assert counted() - before == 5
    assert metrics.inflight_requests == 0


def _parked(shard) -> int:
    """Parked forwarded watches (every watch on the shard is parked: the external process's own too)."""
    return sum(1 for parked in shard.shard.server._server.kcp_parked.values()
               if isinstance(getattr(parked.on_gone, "__self__", None), http2.Stream))  # on_gone: its interrupt


def _forwarded_watches(metrics) -> int:
    return sum(n for key, n in metrics._requests.counts.items() if key[0] == "WATCH" and key[3] == "demo")


def test_a_forwarded_watch_is_parked_and_its_connection_serves_on_when_it_ends(shard):
    """A forwarded watch goes on without a greenlet (``server.http.parking``): every event arrives, the stream
    ends with its terminating chunk, and the same keep-alive connection answers the next request."""
    name = f"pw-{uuid.uuid4().hex[:6]}"
    writer = connect(shard)
    assert exchange(writer, "POST", CONFIGMAPS, json.dumps(configmap(name, n="0")))[0].status == 201
    metrics = shard.shard.metrics
    watches = _forwarded_watches(metrics)
    connection = connect(shard)
    connection.request("GET", f"{CONFIGMAPS}?watch=true&timeoutSeconds=2&fieldSelector=metadata.name%3D{name}")
    response = connection.getresponse()
    assert response.status == 200 and response.headers.get("Transfer-Encoding") == "chunked"
    assert json.loads(response.readline())["type"] == "ADDED"
    assert _parked(shard) == 1
    for n in ("1", "2"):
        merge = {"Content-Type": "application/merge-patch+json"}
        assert exchange(writer, "PATCH", f"{CONFIGMAPS}/{name}", json.dumps({"data": {"n": n}}), merge)[0].status == 200
        event = json.loads(response.readline())
        assert event["type"] == "MODIFIED" and event["object"]["data"] == {"n": n}
    assert response.read() == b""  # the watch's timeout: the stream ends cleanly
    response, body = exchange(connection, "GET", f"{CONFIGMAPS}/{name}")  # same connection, resumed
    assert response.status == 200 and json.loads(body)["data"] == {"n": "2"}
    deadline = time.monotonic() + 2
    while _parked(shard) or _forwarded_watches(metrics) != watches + 1:  # logged and counted at its end
        assert time.monotonic() < deadline
        time.sleep(0.01)
    connection.close()
    writer.close()


def test_many_parked_watches_come_and_go(shard):
    """Concurrent forwarded watches whose clients vanish mid-stream: the others keep their events, every
    parked stream ends, and every HTTP/2 stream to the external process is reset."""
    connection = connect(shard)
    rv = json.loads(exchange(connection, "GET", CONFIGMAPS)[1])["metadata"]["resourceVersion"]
    watches = []
    for _ in range(40):
        watch = connect(shard)
        watch.request("GET", f"{CONFIGMAPS}?watch=true&resourceVersion={rv}")
        response = watch.getresponse()
        assert response.status == 200
        watches.append((watch, response))
    leaving, staying = watches[:20], watches[20:]
    for watch, _ in leaving:
        watch.sock.close()  # without a word
        watch.close()
    name = f"many-{uuid.uuid4().hex[:6]}"
    assert exchange(connection, "POST", CONFIGMAPS, json.dumps(configmap(name, a="1")))[0].status == 201
    for _, response in staying:
        event = json.loads(response.readline())
        assert event["type"] == "ADDED" and event["object"]["metadata"]["name"] == name
    forwarder = shard.shard.app.services
    streams = lambda: sum(len(conn.streams) for conn in forwarder.streams._connections)  # noqa: E731
    deadline = time.monotonic() + 5
    while _parked(shard) != 20 or streams() != 20:
        assert time.monotonic() < deadline, (_parked(shard), streams())
        time.sleep(0.01)
    for watch, _ in staying:
        watch.sock.close()
        watch.close()
    while _parked(shard) or streams():
        assert time.monotonic() < deadline + 5, (_parked(shard), streams())
        time.sleep(0.01)
    connection.close()
