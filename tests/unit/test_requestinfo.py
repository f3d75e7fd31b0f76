"""Request attributes from paths, as kube's RequestInfoFactory computes them."""

import pytest

from kcp_virtual.framework.requestinfo import parse_request_info


@pytest.mark.parametrize("method,path,query,expected", [
    ("GET", "/api/v1/namespaces", {}, dict(verb="list", resource="namespaces", namespace="", name="")),
    ("GET", "/api/v1/namespaces/foo", {}, dict(verb="get", resource="namespaces", namespace="foo", name="foo")),
    ("PUT", "/api/v1/namespaces/foo/status", {}, dict(verb="update", resource="namespaces", name="foo",
                                                      subresource="status")),
    ("GET", "/api/v1/namespaces/ns/configmaps", {"watch": "true"}, dict(verb="watch", resource="configmaps",
                                                                         namespace="ns")),
    ("GET", "/api/v1/configmaps", {}, dict(verb="list", resource="configmaps", namespace="")),
    ("DELETE", "/api/v1/namespaces/ns/configmaps", {}, dict(verb="deletecollection", resource="configmaps")),
    ("DELETE", "/api/v1/namespaces/ns/configmaps/c", {}, dict(verb="delete", name="c")),
    ("PATCH", "/apis/apps/v1/namespaces/ns/deployments/d/status", {}, dict(
        verb="patch", group="apps", version="v1", resource="deployments", name="d", subresource="status")),
    ("POST", "/apis/coordination.k8s.io/v1/namespaces/ns/leases", {}, dict(verb="create", resource="leases",
                                                                             group="coordination.k8s.io")),
    ("GET", "/apis/apps/v1/namespaces/ns/deployments/d", {"watch": "1"}, dict(verb="watch", name="d")),
])
def test_resource_paths(method, path, query, expected):
    info = parse_request_info(method, path, query)
    assert info.is_resource
    for key, value in expected.items():
        assert getattr(info, key) == value, key


@pytest.mark.parametrize("path", ["/api", "/apis", "/apis/apps", "/apis/apps/v1", "/api/v1", "/healthz",
                                  "/openapi/v3", "/api/v1/namespaces/ns/configmaps/c/x/y"])
def test_non_resource_paths(path):
    assert not parse_request_info("GET", path, {}).is_resource


@pytest.mark.parametrize("method,query,selected", [
    ("GET", {"fieldSelector": "metadata.name=a"}, "a"),
    ("GET", {"fieldSelector": "metadata.name==a", "watch": "true"}, "a"),
    ("GET", {"fieldSelector": "metadata.namespace=x, metadata.name = a"}, "a"),
    ("GET", {"fieldSelector": "metadata.name!=a"}, ""),
    ("GET", {"fieldSelector": "metadata.name=a/b"}, ""),
    ("GET", {"fieldSelector": "metadata.name=.."}, ""),
    ("GET", {"fieldSelector": "spec.nodeName=a"}, ""),
    ("DELETE", {"fieldSelector": "metadata.name=a"}, ""),
])
def test_a_list_or_watch_of_one_name_is_authorized_on_that_name(method, query, selected):
    """kube's RequestInfoFactory: ``fieldSelector=metadata.name=x`` makes a list or watch one of ``x`` for RBAC
    ``resourceNames``; the path's name stays empty (it is still a list)."""
    info = parse_request_info(method, "/apis/workload.kcp.dev/v1alpha1/synctargets", query)
    assert info.name == "" and info.selected_name == selected and info.authorized_name == selected
