"""``--audit-log-path``: one kube ``audit.k8s.io/v1`` Event per request, enough to answer "who read tenant X"."""

from __future__ import annotations

import json
import time

import pytest
import requests

from server.shard import ShardConfig
from server.testing import running_shard
from tests.e2e.test_authn import admin_cert, bind, issue_cert, raw, unique, user_subject

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    path = tmp_path_factory.mktemp("audit") / "audit.log"
    with running_shard(ShardConfig(audit_log_path=str(path))) as running:
        running.audit_path = path
        yield running


def events(shard, predicate, count: int = 1, timeout: float = 5.0) -> list[dict]:
    """The audit events matching ``predicate``, once at least ``count`` of them are written."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in map(json.loads, shard.audit_path.read_text().splitlines()) if predicate(e)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def by_uri(fragment: str):
    return lambda event: fragment in event["requestURI"]


def test_an_allowed_and_a_forbidden_request_say_who_what_where_the_decision_and_why(shard):
    name = unique("auditee")
    alice = issue_cert(shard, name, ("auditors",))
    bind(shard, "root", "view", user_subject(name), namespace="default")
    marker = unique("m")
    assert raw(shard, "GET", f"/clusters/root{CONFIGMAPS}?labelSelector={marker}", cert=alice,
               headers={"User-Agent": "audit-test/1"}).status_code == 200
    assert raw(shard, "DELETE", f"/clusters/root{CONFIGMAPS}/{marker}", cert=alice).status_code == 403
    [listed] = events(shard, by_uri(f"labelSelector={marker}"))
    assert listed["kind"] == "Event" and listed["apiVersion"] == "audit.k8s.io/v1"
    assert (listed["level"], listed["stage"], listed["verb"]) == ("Metadata", "ResponseComplete", "list")
    assert listed["user"] == {"username": name, "groups": ["auditors", "system:authenticated"]}
    assert listed["objectRef"] == {"resource": "configmaps", "namespace": "default", "apiVersion": "v1"}
    assert listed["responseStatus"]["code"] == 200 and listed["userAgent"] == "audit-test/1"
    assert listed["sourceIPs"] == ["127.0.0.1"] and listed["auditID"]
    annotations = listed["annotations"]
    assert annotations["tenancy.kcp.dev/workspace"] == "root"
    assert annotations["authorization.k8s.io/decision"] == "allow" and annotations["authorization.k8s.io/reason"]
    [denied] = events(shard, lambda e: e["requestURI"].endswith(f"/configmaps/{marker}"))
    assert denied["verb"] == "delete" and denied["objectRef"]["name"] == marker
    assert denied["responseStatus"]["code"] == 403
    assert denied["annotations"]["authorization.k8s.io/decision"] == "forbid"


def test_impersonation_names_both_users_and_401s_and_health_probes(shard):
    marker = unique("imp")
    response = raw(shard, "GET", f"/clusters/root{CONFIGMAPS}?labelSelector={marker}", cert=admin_cert(shard),
                   headers={"Impersonate-User": "bob", "Impersonate-Group": "devs"})
    assert response.status_code == 403
    [event] = events(shard, by_uri(marker))
    assert event["user"]["username"] == "kcp-admin" and "system:masters" in event["user"]["groups"]
    assert event["impersonatedUser"]["username"] == "bob" and "devs" in event["impersonatedUser"]["groups"]
    assert event["annotations"]["authorization.k8s.io/decision"] == "forbid"
    nobody = unique("anon")
    assert requests.get(f"{shard.url}/clusters/root{CONFIGMAPS}?labelSelector={nobody}", verify=shard.ca_file,
                        timeout=10).status_code == 401
    [unauthenticated] = events(shard, by_uri(nobody))
    assert unauthenticated["responseStatus"]["code"] == 401 and "user" not in unauthenticated
    assert requests.get(f"{shard.url}/readyz", verify=shard.ca_file, timeout=10).status_code == 200
    assert not events(shard, lambda e: e["requestURI"] in ("/readyz", "/healthz"), timeout=0.2)


def test_a_watch_is_audited_when_it_starts_and_when_it_ends(shard):
    marker = unique("w")
    with requests.get(f"{shard.url}/clusters/root{CONFIGMAPS}?watch=true&labelSelector={marker}&timeoutSeconds=1",
                      cert=admin_cert(shard), verify=shard.ca_file, stream=True, timeout=10) as response:
        assert response.status_code == 200
        [started] = events(shard, by_uri(marker))
        assert (started["stage"], started["verb"]) == ("ResponseStarted", "watch")
        response.content  # the watch ends after timeoutSeconds
    stages = [e["stage"] for e in events(shard, by_uri(marker), count=2)]
    assert stages == ["ResponseStarted", "ResponseComplete"]


def test_a_virtual_workspace_request_names_the_virtual_workspace_and_its_decision(shard):
    name = unique("vwuser")
    cert = issue_cert(shard, name)
    response = raw(shard, "GET", f"/services/workspaces/root/all/apis/tenancy.kcp.dev/v1beta1/workspaces"
                   f"?labelSelector={name}", cert=cert)
    assert response.status_code in (200, 403), response.text
    [event] = events(shard, by_uri(name))
    assert event["annotations"]["kcp.dev/virtual-workspace"] == "workspaces"
    assert event["objectRef"]["resource"] == "workspaces" and event["user"]["username"] == name
    assert event["annotations"]["authorization.k8s.io/decision"] == ("allow" if response.status_code == 200 else "forbid")


def test_who_read_a_tenants_objects_is_one_filter_over_the_log(shard):
    tenant = f"root:{unique('tenant')}"
    shard.run(shard.shard.registry.ensure_logical_cluster, tenant)
    reader = unique("reader")
    bind(shard, tenant, "view", user_subject(reader), namespace="default")
    # entering a workspace also needs access in its parent
    bind(shard, "root", unique("access"), user_subject(reader), rules=[{
        "api_groups": ["tenancy.kcp.dev"], "resources": ["clusterworkspaces/content"], "verbs": ["access"],
        "resource_names": [tenant.split(":")[1]]}])
    cert = issue_cert(shard, reader)
    assert raw(shard, "GET", f"/clusters/{tenant}{CONFIGMAPS}", cert=cert).status_code == 200
    assert raw(shard, "GET", f"/clusters/{tenant}/api/v1/namespaces/default/secrets", cert=cert).status_code == 403
    reads = events(shard, lambda e: e.get("annotations", {}).get("tenancy.kcp.dev/workspace") == tenant
                   and e["verb"] in ("get", "list", "watch")
                   and e["annotations"].get("authorization.k8s.io/decision") == "allow", count=1)
    assert [(e["user"]["username"], e["objectRef"]["resource"]) for e in reads] == [(reader, "configmaps")]
