"""A watch client that closes its connection is noticed at once on every watch path (issue 19).

For each path -- the shard directly (a built-in resource and a CRD), each virtual workspace (demo, its
transforming view, workspaces, apiexport, initializingworkspaces, syncer), in each topology (embedded, external process, forwarded), over
HTTP/1.1 and, to the external process, HTTP/2 -- a watch is opened, its client leaves (a TLS close_notify,
or a bare TCP half-close), and within ``DEADLINE`` the server must have closed its side, written nothing
after the close_notify, and let go of the watch: the shard registry's watcher count and the open-watch
gauges drop back.
"""

from __future__ import annotations

import gc
import os
import socket
import ssl
import time
import uuid

import gevent
import greenlet
import pytest
import requests
from kubernetes import client

from server.shard import ShardConfig
from tests.e2e.test_apibinding import bind, provide, wait_bound
from tests.topologies import TOPOLOGIES, running_topology
from tests.vw_demo import DEMO_PLUGINS

DEADLINE = 0.2
IDLE_WATCHES = 5
CONFIGMAPS = "/api/v1/configmaps"


@pytest.fixture(scope="module", params=TOPOLOGIES)
def topology(request, demo_plugins):
    config = ShardConfig(virtual_workspaces=("workspaces", "apiexport", "initializingworkspaces", "syncer",
                                             *DEMO_PLUGINS))
    with running_topology(request.param, config) as running:
        yield running


def _context(shard) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=shard.ca_file)
    pki = shard.shard.pki
    context.load_cert_chain(str(pki.admin_cert_path), str(pki.admin_key_path))
    return context


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def open_watch(shard, url: str, path: str) -> ssl.SSLSocket:
    """A TLS connection with a watch request on it, its response head read (the watch is established)."""
    sock = _context(shard).wrap_socket(socket.create_connection(("127.0.0.1", _port(url)), timeout=10),
                                       server_hostname="127.0.0.1")
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(65536)
        assert data, head
        head += data
    assert head.startswith(b"HTTP/1.1 200"), head
    sock.settimeout(0.1)  # read the initial events: only what the server writes after the client left counts
    try:
        while sock.recv(65536):
            pass
    except (TimeoutError, socket.timeout):
        pass
    return sock


def wait(predicate, timeout: float = 10.0) -> float:
    """Seconds until ``predicate()``; sleeping lets this thread's greenlets run (the HTTP/2 client's reader)."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "timed out"
        gevent.sleep(0.005)
    return time.monotonic() - start


def settle(gauges, quiet: float = 0.2, timeout: float = 10.0) -> None:
    """Until no gauge moved for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    values = [gauge() for gauge in gauges]
    while time.monotonic() < deadline:
        gevent.sleep(quiet)
        now = [gauge() for gauge in gauges]
        if now == values:
            return
        values = now
    raise AssertionError(f"the gauges never settled: {values}")


def watchers(shard) -> int:
    return shard.shard.store.open_watchers


def leave_with_close_notify(sock: ssl.SSLSocket) -> float:
    """The client's TLS shutdown: close_notify, then wait for the server to end the connection; its duration.
    Whatever the server writes after the close_notify fails the test (``APPLICATION_DATA_AFTER_CLOSE_NOTIFY``)."""
    start = time.monotonic()
    sock.settimeout(5)
    try:
        raw = sock.unwrap()  # sends close_notify; returns when the server answered or closed
    except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
        raw = None  # the server closed the TCP connection without a close_notify: fine, it wrote nothing
    except ssl.SSLError as exc:
        pytest.fail(f"the server wrote after the client's close_notify: {exc!r}")
    if raw is not None:
        assert raw.recv(1) == b""
        raw.close()
    else:
        sock.close()
    return time.monotonic() - start


def leave_with_half_close(sock: ssl.SSLSocket) -> float:
    """The client shuts its TCP side (no TLS goodbye); the duration until the server closed its side."""
    start = time.monotonic()
    dup = socket.socket(fileno=os.dup(sock.fileno()))
    dup.shutdown(socket.SHUT_WR)
    dup.close()
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
    except (ssl.SSLError, ConnectionResetError):
        pass
    sock.close()
    return time.monotonic() - start


LEAVE = {"close_notify": leave_with_close_notify, "half_close": leave_with_half_close}


def assert_let_go(shard, sock, leave, *, gauges=(), what: str = "") -> None:
    """After ``leave`` the server closed ``sock``'s other side within DEADLINE, and each of ``gauges`` (callable,
    value before the watch) is back there within DEADLINE."""
    closed_after = leave(sock)
    assert closed_after < DEADLINE, f"{what}: the server closed its side after {closed_after:.3f} s"
    for i, (gauge, before) in enumerate(gauges):
        try:
            took = wait(lambda: gauge() == before, timeout=2)
        except AssertionError:
            raise AssertionError(f"{what}: gauge {i} stays at {gauge()}, not {before}") from None
        assert took < DEADLINE, f"{what}: gauge {i} dropped after {took:.3f} s"


def counted(shard, open_, extra=()):
    """Open a watch with ``open_()``; wait until the shard's watcher count (and each gauge of ``extra``) rose."""
    before = [(lambda: watchers(shard), watchers(shard))] + [(gauge, gauge()) for gauge in extra]
    sock = open_()
    wait(lambda: watchers(shard) > before[0][1])
    for gauge, value in before[1:]:
        wait(lambda: gauge() > value)
    return sock, before


def external_watches(shard, external) -> float:
    """The external process's own open-watch gauge."""
    pki = shard.shard.pki
    text = requests.get(f"{external.url}/metrics", cert=(str(pki.admin_cert_path), str(pki.admin_key_path)),
                        verify=shard.ca_file, timeout=5).text
    for line in text.splitlines():
        if line.startswith("apiserver_open_watches "):
            return float(line.split()[1])
    raise AssertionError(text)


# ---------------------------------------------------------------------- the shard itself

@pytest.mark.parametrize("how", sorted(LEAVE))
def test_direct_watches(topology, how):
    vw, shard, _ = topology
    if vw.name != "embedded":
        pytest.skip("the shard's own watch path is the same in every topology")
    for path in (f"/clusters/root{CONFIGMAPS}?watch=true&allowWatchBookmarks=true",
                 "/clusters/root/apis/apiextensions.k8s.io/v1/customresourcedefinitions?watch=true",
                 f"/clusters/root{CONFIGMAPS}?watch=true&labelSelector=a%3Db"):
        gauge = lambda: shard.shard.metrics.open_watches  # noqa: E731
        sock, before = counted(shard, lambda: open_watch(shard, shard.url, path), [gauge])
        assert_let_go(shard, sock, LEAVE[how], gauges=before, what=path)


# ---------------------------------------------------------------------- through the virtual workspaces

def _workspace(shard, prefix: str) -> str:
    cluster = f"root:{prefix}-{uuid.uuid4().hex[:6]}"
    shard.run(shard.shard.registry.ensure_logical_cluster, cluster)
    return cluster


def _new_vw_paths(shard) -> list[str]:
    """Watches of the initializingworkspaces view (a WorkspaceType with an initializer) and of the syncer view
    (a SyncTarget), each of every workspace and of one."""
    types = _workspace(shard, "gone-types")
    objects = client.CustomObjectsApi(shard.cluster_client(types))
    objects.create_cluster_custom_object("tenancy.kcp.dev", "v1alpha1", "workspacetypes",
                                         {"metadata": {"name": "db"}, "spec": {"initializer": True}})
    objects.create_cluster_custom_object("workload.kcp.dev", "v1alpha1", "synctargets", {
        "apiVersion": "workload.kcp.dev/v1alpha1", "kind": "SyncTarget", "metadata": {"name": "t"}})
    uid = objects.get_cluster_custom_object("workload.kcp.dev", "v1alpha1", "synctargets", "t")["metadata"]["uid"]
    initializing = f"/services/initializingworkspaces/{types}:db/clusters"
    syncer = f"/services/syncer/{types}/t/{uid}/clusters"
    return [f"{initializing}/*/apis/tenancy.kcp.dev/v1alpha1/clusterworkspaces?watch=true",
            f"{syncer}/*/apis/apps/v1/deployments?watch=true",
            f"{syncer}/{types}{CONFIGMAPS}?watch=true&allowWatchBookmarks=true"]


def _vw_paths(vw, shard) -> list[str]:
    cluster = _workspace(shard, "gone")
    provider = _workspace(shard, "gone-provider")
    provide(shard, provider)
    bind(shard, cluster, provider)
    wait_bound(shard, cluster)
    return [f"/services/demo/clusters/*{CONFIGMAPS}?watch=true",                       # from the informer
            f"/services/demo/clusters/{cluster}{CONFIGMAPS}?watch=true&labelSelector=x%3Dy",  # live
            f"/services/demo-view/clusters/*{CONFIGMAPS}?watch=true",                  # transformed
            "/services/workspaces/root/all/apis/tenancy.kcp.dev/v1beta1/workspaces?watch=true",
            f"/services/apiexport/{provider}/widgets/clusters/*/apis/example.io/v1/widgets?watch=true",
            *_new_vw_paths(shard)]


@pytest.mark.parametrize("how", sorted(LEAVE))
def test_virtual_workspace_watches(topology, how):
    vw, shard, external = topology
    gauges = [lambda: shard.shard.metrics.open_watches] if vw.name != "external" else []
    if external is not None:
        gauges.append(lambda: external_watches(shard, external))
    for path in _vw_paths(vw, shard):
        base = vw.base_url
        # a first watch starts what stays (the external process's informer and its watch of the shard)
        leave_with_half_close(open_watch(shard, base, path))
        settle(gauges)
        before = [(gauge, gauge()) for gauge in gauges]
        sock = open_watch(shard, base, path)
        for gauge, value in before:
            wait(lambda: gauge() > value)
        registry_before = watchers(shard)
        assert_let_go(shard, sock, LEAVE[how], gauges=before, what=path)
        # the shard lets go of what the watch held there (a live upstream watch), or held nothing
        assert wait(lambda: watchers(shard) <= registry_before, timeout=2) < DEADLINE


def _live_greenlets() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead)


def test_idle_watches_hold_no_greenlet(topology):
    """ARCHITECTURE.md "Watches: pushed, and parked": idle watches of every virtual workspace path served in this
    process add no live greenlet (a watch served from a generator would hold one each)."""
    vw, shard, _ = topology
    if vw.name != "embedded":
        pytest.skip("the virtual workspaces run in this process only when embedded")
    for path in _vw_paths(vw, shard):
        leave_with_half_close(open_watch(shard, vw.base_url, path))  # starts what stays
        settle([_live_greenlets])
        before = _live_greenlets()
        socks = [open_watch(shard, vw.base_url, path) for _ in range(IDLE_WATCHES)]
        settle([_live_greenlets])
        assert _live_greenlets() - before < IDLE_WATCHES, path
        for sock in socks:
            leave_with_half_close(sock)


def test_http2_streams_to_the_external_process(topology):
    """The shard's forwarder talks HTTP/2 to the external process: a stream reset, or the connection's end, is
    the client leaving each of its watches."""
    from kcp_virtual.transport import http2, httpclient

    vw, shard, external = topology
    if vw.name != "external":
        pytest.skip("the external process's HTTP/2 server")
    pki = shard.shard.pki
    pool = http2.Pool(external.url, httpclient.client_context(  # gevent's TLS: the pool's reader is a greenlet
        ca_file=shard.ca_file, cert_file=str(pki.admin_cert_path), key_file=str(pki.admin_key_path), alpn=["h2"]))
    paths = [f"/services/demo/clusters/*{CONFIGMAPS}?watch=true", *_new_vw_paths(shard)]
    before = external_watches(shard, external)
    streams = [pool.request("GET", path) for path in paths for _ in range(2)]
    assert [s.status for s in streams] == [200] * len(streams)
    wait(lambda: external_watches(shard, external) == before + len(streams))
    for i, stream in enumerate(streams[::2]):  # RST_STREAM: one watch of each path
        stream.close()
        assert wait(lambda: external_watches(shard, external) == before + len(streams) - i - 1, timeout=2) < DEADLINE
    pool.close()  # the connection ends: the other watch of each path
    for stream in streams[1::2]:
        stream.close()
    assert wait(lambda: external_watches(shard, external) == before, timeout=2) < DEADLINE


def test_the_forwarder_lets_go_of_the_upstream_stream(topology):
    vw, shard, external = topology
    if vw.name != "forwarded":
        pytest.skip("the shard's forwarder")
    gauges = (lambda: external_watches(shard, external), lambda: shard.shard.metrics.open_watches)
    for path in (f"/services/demo/clusters/*{CONFIGMAPS}?watch=true", *_new_vw_paths(shard)):
        leave_with_half_close(open_watch(shard, shard.url, path))  # starts what stays (the views' informers)
        settle(gauges)
        before_ext = external_watches(shard, external)
        before_shard = shard.shard.metrics.open_watches
        sock = open_watch(shard, shard.url, path)
        wait(lambda: external_watches(shard, external) == before_ext + 1)
        assert leave_with_close_notify(sock) < DEADLINE, path
        assert wait(lambda: external_watches(shard, external) == before_ext, timeout=2) < DEADLINE, path
        assert wait(lambda: shard.shard.metrics.open_watches == before_shard, timeout=2) < DEADLINE, path
