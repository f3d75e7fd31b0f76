"""What must hold whichever topology serves the virtual workspaces, and what only the two-process ones have.

In every topology (embedded, external process, shard forwarding to it) a caller is who its own
credentials say -- client certificate, static token, a service-account token bound to its workspace,
impersonation -- and the demo virtual workspace authorizes it exactly as the shard would. The
forwarded topology must survive its external process being killed and restarted (503 Status meanwhile,
no shard restart), must close the upstream of a watch whose client left, and the external process
must ignore requestheaders from anybody but the shard's proxy certificate.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import subprocess
import threading
import time

import pytest
import requests
from kubernetes import client

from server.shard import ShardConfig
from tests.e2e.test_authn import (bind, issue_cert, new_workspace, request_token, sa_subject, service_account, unique,
                                  user_subject)
from tests.topologies import TOPOLOGIES, running_topology
from tests.vw_demo import DEMO_PLUGINS

STATIC_TOKEN = "static-token-of-carol-topologies"
LIST = "/api/v1/namespaces/default/configmaps"


@pytest.fixture(scope="module", params=TOPOLOGIES)
def topology(request, tmp_path_factory, demo_plugins):
    token_file = tmp_path_factory.mktemp("tokens") / "tokens.csv"
    token_file.write_text(f'{STATIC_TOKEN},carol,carol-uid,"ops"\n')
    config = ShardConfig(virtual_workspaces=DEMO_PLUGINS, token_auth_file=str(token_file),
                         bookmark_interval=1.0)
    with running_topology(request.param, config) as running:
        yield running


forwarded_only = pytest.mark.parametrize("topology", ["forwarded"], indirect=True)


def call(base: str, shard, path: str, *, cert=None, token: str | None = None, headers: dict | None = None,
         method: str = "GET") -> requests.Response:
    """One HTTPS request to ``base + path`` with exactly these credentials and headers."""
    sent = dict(headers or {})
    if token:
        sent["Authorization"] = f"Bearer {token}"
    return requests.request(method, base + path, cert=cert, headers=sent, verify=shard.ca_file, timeout=10)


def demo(cluster: str) -> str:
    return f"/services/demo/clusters/{cluster}{LIST}"


def assert_forbidden_for(response: requests.Response, user: str) -> None:
    assert response.status_code == 403, response.text
    assert f'User "{user}" cannot list resource "configmaps"' in response.json()["message"]


def admin(shard) -> tuple[str, str]:
    return str(shard.shard.pki.admin_cert_path), str(shard.shard.pki.admin_key_path)


# ---------------------------------------------------------------------- every topology

def test_callers_are_who_their_credentials_say(topology):
    vw, shard, _ = topology
    name = unique("alice")
    alice = issue_cert(shard, name, ("devs",))
    assert_forbidden_for(call(vw.base_url, shard, demo("root"), cert=alice), name)
    bind(shard, "root", "view", user_subject(name), namespace="default")
    assert call(vw.base_url, shard, demo("root"), cert=alice).status_code == 200
    assert_forbidden_for(call(vw.base_url, shard, demo("root"), token=STATIC_TOKEN), "carol")
    assert call(vw.base_url, shard, demo("root"), token=STATIC_TOKEN + "x").status_code == 401
    assert call(vw.base_url, shard, demo("root")).status_code == 401


def test_service_account_tokens_stay_in_their_workspace(topology):
    vw, shard, _ = topology
    org = new_workspace(shard)
    sa = service_account(shard, org)
    token = request_token(shard, sa).status.token
    user = f"system:serviceaccount:default:{sa['name']}"
    assert_forbidden_for(call(vw.base_url, shard, demo(org), token=token), user)
    bind(shard, org, "view", sa_subject(sa["name"]), namespace="default")
    assert call(vw.base_url, shard, demo(org), token=token).status_code == 200
    assert_forbidden_for(call(vw.base_url, shard, demo("root"), token=token), user)  # not its workspace


def test_impersonation(topology):
    vw, shard, _ = topology
    target = unique("target")
    response = call(vw.base_url, shard, demo("root"), cert=admin(shard), headers={"Impersonate-User": target})
    assert_forbidden_for(response, target)
    response = call(vw.base_url, shard, demo("root"), cert=admin(shard),
                    headers={"Impersonate-User": target, "Impersonate-Group": "system:masters"})
    assert response.status_code == 200
    name = unique("eve")
    response = call(vw.base_url, shard, demo("root"), cert=issue_cert(shard, name),
                    headers={"Impersonate-User": "kcp-admin", "Impersonate-Group": "system:masters"})
    assert response.status_code == 403
    assert (f'users "kcp-admin" is forbidden: User "{name}" cannot impersonate resource "users" in API group "" '
            "at the cluster scope") in response.json()["message"]


def test_the_proxy_kind_serves_a_whole_workspace(topology):
    """The proxy kind (``ShardClient.forward``): discovery, OpenAPI (whose URLs must name the virtual
    workspace, not the shard), writes and a watch, as the proxy's own identity."""
    vw, shard, _ = topology
    proxy = "demo-proxy/clusters/root"
    name = unique("proxied")
    assert f"configmap/{name} created" in vw.kubectl(proxy, "create", "configmap", name, "--from-literal=k=v").stdout
    explained = vw.kubectl(proxy, "explain", "configmaps.data").stdout
    assert "FIELD: data <map[string]string>" in explained
    openapi = call(vw.base_url, shard, f"/services/{proxy}/openapi/v3", cert=admin(shard)).json()
    assert openapi["paths"]["api/v1"]["serverRelativeURL"].startswith(f"/services/{proxy}/openapi/v3/api/v1?hash=")
    response = call(vw.base_url, shard, f"/services/{proxy}/api/v1/namespaces/default/configmaps"
                                        f"?watch=true&fieldSelector=metadata.name={name}&timeoutSeconds=1",
                    cert=admin(shard))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in map(json.loads, response.text.splitlines())] == [
        ("ADDED", name)]
    member = unique("member")
    denied = call(vw.base_url, shard, f"/services/{proxy}/api/v1/namespaces", cert=issue_cert(shard, member))
    assert denied.status_code == 403 and "only members of demo:proxy" in denied.json()["message"]
    allowed = call(vw.base_url, shard, f"/services/{proxy}/api/v1/namespaces",
                   cert=issue_cert(shard, member, ("demo:proxy",)))
    assert "default" in {item["metadata"]["name"] for item in allowed.json()["items"]}


# ---------------------------------------------------------------------- the external process and forwarding

@forwarded_only
def test_spoofed_requestheaders_are_ignored_without_the_proxy_certificate(topology):
    _, shard, external = topology
    pki = shard.shard.pki
    spoof = {"X-Remote-User": "kcp-admin", "X-Remote-Group": "system:masters"}
    straight = external.url
    assert call(straight, shard, demo("root"), headers=spoof).status_code == 401
    name = unique("mallory")
    mallory = issue_cert(shard, name)
    assert_forbidden_for(call(straight, shard, demo("root"), cert=mallory, headers=spoof), name)
    # the requestheader CA, but not an allowed name; an allowed name, but not from the requestheader CA
    intruder = issue_cert(shard, "intruder", ca=pki.requestheader_ca)
    assert call(straight, shard, demo("root"), cert=intruder, headers=spoof).status_code == 401
    impostor = issue_cert(shard, "kcp-shard-proxy")
    assert_forbidden_for(call(straight, shard, demo("root"), cert=impostor, headers=spoof), "kcp-shard-proxy")
    # through the shard the caller's own headers are dropped too
    assert_forbidden_for(call(shard.url, shard, demo("root"), cert=mallory, headers=spoof), name)
    # the shard's proxy certificate is believed
    proxy = (str(pki.shard_proxy_cert_path), str(pki.shard_proxy_key_path))
    asserted = unique("asserted")
    assert_forbidden_for(call(straight, shard, demo("root"), cert=proxy, headers={"X-Remote-User": asserted}),
                         asserted)
    assert call(straight, shard, demo("root"), cert=proxy, headers=spoof).status_code == 200


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


def _wait(predicate, timeout: float = 10.0) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.05)
    return time.monotonic() - start


def _open_watch(shard, base_port: int, path: str, headers: dict | None = None) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=shard.ca_file)
    context.load_cert_chain(*admin(shard))
    connection = http.client.HTTPSConnection("127.0.0.1", base_port, context=context, timeout=20)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    assert response.status == 200
    connection.watch_response = response
    return connection


@forwarded_only
def test_a_forwarded_watch_closes_upstream_when_the_client_leaves(topology):
    _, shard, external = topology
    metrics = shard.shard.metrics

    def external_watches() -> float:
        text = call(external.url, shard, "/metrics", cert=admin(shard)).text
        return _metric(text, "apiserver_open_watches")

    before = metrics.open_watches
    # a selector of the caller's, so the external process watches the shard (it serves others from its informer)
    connection = _open_watch(shard, shard.shard.port,
                             demo("*").replace("/namespaces/default", "") + "?watch=true&labelSelector=demo%3Dtrue")
    _wait(lambda: metrics.open_watches == before + 2)  # the client's, forwarded, and the external process's own
    assert external_watches() == 1
    connection.sock.close()  # the client leaves without a word
    connection.close()
    assert _wait(lambda: external_watches() == 0) < 3
    assert _wait(lambda: metrics.open_watches == before) < 5


@forwarded_only
def test_forwarding_while_the_external_process_is_killed_and_restarted(topology):
    vw, shard, external = topology
    core = client.CoreV1Api(vw.api_client("demo/clusters/root"))
    assert core.list_namespaced_config_map("default").kind == "ConfigMapList"
    connection = _open_watch(shard, shard.shard.port, demo("root") + "?watch=true")
    impersonating = _open_watch(shard, shard.shard.port, demo("root") + "?watch=true",  # the WSGI path
                                headers={"Impersonate-User": "someone", "Impersonate-Group": "system:masters"})
    ended = threading.Event()
    received: dict[str, bytes] = {}

    def drain(name, connection):
        data = b""
        try:
            while piece := connection.watch_response.read1(65536):
                data += piece
        except (OSError, http.client.HTTPException):
            pass
        received[name] = data
        if len(received) == 2:
            ended.set()

    for name, watching in (("parked", connection), ("wsgi", impersonating)):
        threading.Thread(target=drain, args=(name, watching), daemon=True).start()
    external.kill()
    assert ended.wait(5), "the forwarded watch did not end with its upstream"
    for name, data in received.items():  # ended the way kube ends a watch on a server error, so clients can tell
        event = json.loads(data.splitlines()[-1])
        assert event["type"] == "ERROR", (name, data)
        assert (event["object"]["code"], event["object"]["reason"]) == (503, "ServiceUnavailable"), (name, event)
        assert event["object"]["message"].startswith("the watch ended early: "), (name, event)
    connection.close()
    impersonating.close()
    started = time.monotonic()
    response = call(shard.url, shard, demo("root"), cert=admin(shard))
    assert time.monotonic() - started < 1
    status = response.json()
    assert (response.status_code, status["kind"], status["reason"]) == (503, "Status", "ServiceUnavailable")
    assert "connection refused" in status["message"] and external.url in status["message"]
    assert shard.kubectl("get", "namespaces").returncode == 0  # the shard itself is fine
    external.start()
    assert core.list_namespaced_config_map("default").kind == "ConfigMapList"  # no shard restart needed
    assert vw.kubectl("demo/clusters/root", "get", "configmaps", "-n", "default").returncode == 0


@forwarded_only
def test_kubectl_watching_through_a_dying_external_process_exits_with_an_error(topology):
    vw, shard, external = topology
    watch = subprocess.Popen(vw.kubectl_command("demo/clusters/root", "get", "configmaps", "-n", "default", "-w"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=vw.kubectl_env())
    try:
        _wait(lambda: shard.shard.metrics.open_watches >= 1)
        external.kill()
        _, stderr = watch.communicate(timeout=20)
    finally:
        if watch.poll() is None:
            watch.kill()
        external.start()
    assert watch.returncode != 0, stderr
    # kubectl reports the ERROR event, or (relisting after it) the 503 of the process now gone; never a clean end
    assert "Error from server (ServiceUnavailable)" in stderr and "the virtual workspace server at" in stderr, stderr
