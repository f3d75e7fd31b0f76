"""Bad, oversized, unauthenticated and concurrent input gets a clear metav1.Status, never a crash or lost data."""

from __future__ import annotations

import json
import ssl
import threading
import uuid
from pathlib import Path

import pytest
import urllib3


class Raw:
    """A bare HTTPS client with the admin certificate, to send what well-behaved clients never send."""

    def __init__(self, shard, cert: bool = True):
        root = Path(shard.root_directory)
        kwargs = {"cert_reqs": "CERT_REQUIRED", "ca_certs": str(root / "ca.crt")}
        if cert:
            kwargs.update(cert_file=str(root / "admin.crt"), key_file=str(root / "admin.key"))
        self.pool = urllib3.PoolManager(**kwargs)
        self.base = shard.url

    def request(self, method, path, body=None, headers=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
        response = self.pool.request(method, self.base + path, body=body, headers=headers, retries=False)
        data = response.data
        return response.status, (json.loads(data) if data[:1] in (b"{", b"[") else data), response


@pytest.fixture(scope="module")
def raw(kcp_shard_module):
    return Raw(kcp_shard_module)


CM = "/clusters/root/api/v1/namespaces/default/configmaps"


def assert_status(body, code, reason):
    assert body["kind"] == "Status" and body["apiVersion"] == "v1"
    assert body["status"] == "Failure" and body["code"] == code and body["reason"] == reason, body


def test_malformed_json_is_400(raw):
    status, body, _ = raw.request("POST", CM, b'{"metadata": {"name": ')
    assert status == 400
    assert_status(body, 400, "BadRequest")


def test_invalid_name_is_422_with_field_cause(raw):
    status, body, _ = raw.request("POST", CM, {"metadata": {"name": "Bad_Name"}})
    assert status == 422
    assert_status(body, 422, "Invalid")
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    assert body["details"]["causes"][0]["reason"] == "FieldValueInvalid"  # metav1.StatusCause JSON
    assert "RFC 1123" in body["message"]


def test_missing_name_is_422(raw):
    status, body, _ = raw.request("POST", CM, {"metadata": {}})
    assert status == 422 and body["reason"] == "Invalid"


def test_oversized_body_is_413(raw):
    big = {"metadata": {"name": "big"}, "data": {"x": "a" * (3 * 1024 * 1024 + 10)}}
    status, body, _ = raw.request("POST", CM, big)
    assert status == 413
    assert_status(body, 413, "RequestEntityTooLarge")
    status, _, _ = raw.request("GET", CM + "/big")
    assert status == 404


def test_unknown_paths_and_resources_are_404(raw):
    for path in ("/nope", "/clusters/root/apis/example.com/v1/widgets", "/clusters/root/api/v1/nothings"):
        status, body, _ = raw.request("GET", path)
        assert status == 404, path
        assert_status(body, 404, "NotFound")


def test_missing_object_404_message(raw):
    status, body, _ = raw.request("GET", CM + "/absent")
    assert status == 404
    assert body["message"] == 'configmaps "absent" not found'
    assert body["details"] == {"name": "absent", "kind": "configmaps"}


def test_unsupported_verb_is_405(raw):
    status, body, _ = raw.request("POST", CM + "/x", {"metadata": {"name": "x"}})
    assert status == 405
    assert_status(body, 405, "MethodNotAllowed")


def test_namespace_must_exist(raw):
    status, body, _ = raw.request("POST", "/clusters/root/api/v1/namespaces/nowhere/configmaps",
                                  {"metadata": {"name": "x"}})
    assert status == 404 and body["message"] == 'namespaces "nowhere" not found'


def test_create_conflict_is_409_already_exists(raw):
    name = f"dup-{uuid.uuid4().hex[:6]}"
    assert raw.request("POST", CM, {"metadata": {"name": name}})[0] == 201
    status, body, _ = raw.request("POST", CM, {"metadata": {"name": name}})
    assert status == 409 and body["reason"] == "AlreadyExists"


def test_wrong_kind_and_body_type_are_400(raw):
    status, body, _ = raw.request("POST", CM, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "k"}})
    assert status == 400
    status, body, _ = raw.request("POST", CM, [1, 2, 3])
    assert status == 400 and body["kind"] == "Status"
    status, body, _ = raw.request("POST", CM, {"metadata": "nope"})
    assert status in (400, 422) and body["kind"] == "Status"


def test_bad_query_parameters_are_400(raw):
    for query in ("labelSelector=%3D%3D%3D", "limit=-1", "limit=abc", "resourceVersion=abc&watch=true",
                  "fieldSelector=bogus"):
        status, body, _ = raw.request("GET", CM + "?" + query)
        assert status == 400, query
        assert body["kind"] == "Status"


def test_unauthenticated_is_401_but_health_is_open(kcp_shard_module):
    anonymous = Raw(kcp_shard_module, cert=False)
    status, body, _ = anonymous.request("GET", CM)
    assert status == 401
    assert_status(body, 401, "Unauthorized")
    for path in ("/healthz", "/livez", "/readyz", "/version"):
        assert anonymous.request("GET", path)[0] == 200, path
    status, body, _ = anonymous.request("GET", CM, headers={"Authorization": "Bearer forged"})
    assert status == 401


def test_wildcard_cluster_is_list_and_watch_only(raw):
    status, body, _ = raw.request("POST", "/clusters/*/api/v1/namespaces/default/configmaps",
                                  {"metadata": {"name": "x"}})
    assert status == 405


def test_concurrent_updates_never_lose_writes(raw):
    """Many clients patching the same object: every merge-patch lands exactly once (server-side retries)."""
    name = f"counter-{uuid.uuid4().hex[:6]}"
    assert raw.request("POST", CM, {"metadata": {"name": name}, "data": {}})[0] == 201
    errors = []

    def writer(i):
        status, body, _ = raw.request("PATCH", f"{CM}/{name}", {"data": {f"k{i}": str(i)}},
                                      headers={"Content-Type": "application/merge-patch+json"})
        if status != 200:
            errors.append((status, body))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    _, body, _ = raw.request("GET", f"{CM}/{name}")
    assert body["data"] == {f"k{i}": str(i) for i in range(40)}


def test_concurrent_creates_of_one_name_one_wins(raw):
    name = f"race-{uuid.uuid4().hex[:6]}"
    results = []
    threads = [threading.Thread(target=lambda: results.append(raw.request("POST", CM, {"metadata": {"name": name}})[0]))
               for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [201] + [409] * 19


def test_server_survives_a_client_dropping_a_watch(kcp_shard_module, raw):
    root = Path(kcp_shard_module.root_directory)
    context = ssl.create_default_context(cafile=str(root / "ca.crt"))
    context.load_cert_chain(str(root / "admin.crt"), str(root / "admin.key"))
    import socket

    host, port = kcp_shard_module.url.removeprefix("https://").rsplit(":", 1)
    for _ in range(5):
        sock = context.wrap_socket(socket.create_connection((host, int(port))), server_hostname="127.0.0.1")
        sock.sendall(f"GET {CM}?watch=true HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        sock.recv(100)
        sock.close()
    assert raw.request("GET", "/readyz")[0] == 200


def test_delete_retries_past_concurrent_writes(raw):
    """A controller writing the object while it is deleted must not turn the delete into a 409."""
    name = f"busy-{uuid.uuid4().hex[:6]}"
    assert raw.request("POST", CM, {"metadata": {"name": name, "finalizers": ["example.com/hold"]}})[0] == 201
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            raw.request("PATCH", f"{CM}/{name}", {"data": {"i": str(i)}},
                        headers={"Content-Type": "application/merge-patch+json"})
            i += 1

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        statuses = [raw.request("DELETE", f"{CM}/{name}")[0] for _ in range(5)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert statuses == [200] * 5
    _, body, _ = raw.request("GET", f"{CM}/{name}")
    assert body["metadata"]["deletionTimestamp"]
    raw.request("PATCH", f"{CM}/{name}", {"metadata": {"finalizers": None}},
                headers={"Content-Type": "application/merge-patch+json"})
    assert raw.request("GET", f"{CM}/{name}")[0] == 404


def test_no_new_finalizers_once_deleting(raw):
    name = f"fin-{uuid.uuid4().hex[:6]}"
    assert raw.request("POST", CM, {"metadata": {"name": name, "finalizers": ["example.com/a"]}})[0] == 201
    assert raw.request("DELETE", f"{CM}/{name}")[0] == 200
    status, body, _ = raw.request("PATCH", f"{CM}/{name}", {"metadata": {"finalizers": ["example.com/a", "example.com/b"]}},
                                  headers={"Content-Type": "application/merge-patch+json"})
    assert status == 422
    assert ('metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, '
            'found new finalizers []string{"example.com/b"}') in body["message"]
    raw.request("PATCH", f"{CM}/{name}", {"metadata": {"finalizers": None}},
                headers={"Content-Type": "application/merge-patch+json"})
