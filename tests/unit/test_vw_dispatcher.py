"""The ``/services/`` dispatcher with virtual workspaces made of plain functions (no shard needed)."""

from __future__ import annotations

import orjson
import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request as HTTPRequest, Response

from kcp_virtual import Context, User, VirtualWorkspace, cluster_path_resolver, errors
from kcp_virtual.framework.dispatcher import Dispatcher

ADMIN = User("admin", groups=("system:masters", "system:authenticated"))
ALICE = User("alice", groups=("system:authenticated",))


def http(path: str, method: str = "GET", query: str = "") -> HTTPRequest:
    return HTTPRequest(EnvironBuilder(path=path, method=method, query_string=query).get_environ())


class Recorder:
    """A virtual workspace of plain functions that remembers what it was given."""

    def __init__(self, name: str, *, allow: bool = True, ready: bool = True, resolve=None):
        self.calls: list = []
        self.authorized: list = []
        self.allow = allow
        self.is_ready = ready
        self.vw = VirtualWorkspace(name=name, resolve=resolve or cluster_path_resolver(name),
                                   authorize=self.authorize, handler=self.handle, ready=lambda: self.is_ready)

    def authorize(self, user, attributes, context):
        self.authorized.append((user, attributes, context))
        return (True, "") if self.allow else (False, "not today")

    def handle(self, request):
        self.calls.append(request)
        return Response(self.vw.name)


def test_duplicate_names_are_rejected_at_construction():
    with pytest.raises(ValueError, match="duplicate virtual workspace 'a'"):
        Dispatcher([Recorder("a").vw, Recorder("b").vw, Recorder("a").vw])


def test_invalid_names_are_rejected():
    with pytest.raises(ValueError):
        Dispatcher([Recorder("a/b", resolve=lambda path: (False, "", None)).vw])


def test_first_acceptance_wins_in_registration_order():
    everything = lambda path: (True, "/services", Context(cluster="root"))  # noqa: E731 - accepts any path
    first, second = Recorder("first", resolve=everything), Recorder("second", resolve=everything)
    dispatcher = Dispatcher([first.vw, second.vw])
    assert dispatcher(http("/services/x/api"), ADMIN).get_data() == b"first"
    assert not second.calls
    dispatcher = Dispatcher([second.vw, first.vw])
    assert dispatcher(http("/services/x/api"), ADMIN).get_data() == b"second"


def test_later_workspaces_are_tried_when_earlier_ones_decline():
    a, b = Recorder("a"), Recorder("b")
    dispatcher = Dispatcher([a.vw, b.vw])
    assert dispatcher(http("/services/b/clusters/root/api"), ADMIN).get_data() == b"b"
    assert not a.calls


@pytest.mark.parametrize("path", ["/services/", "/services", "/services/c/clusters/root/api",
                                  "/services/a/clusters/Bad/api", "/services/a/clusters/root/../x"])
def test_nothing_accepted_is_a_404_status(path):
    with pytest.raises(errors.NotFound) as exc:
        Dispatcher([Recorder("a").vw, Recorder("b").vw])(http(path), ADMIN)
    status = orjson.loads(exc.value.get_response().get_data())
    assert status["kind"] == "Status" and status["code"] == 404 and status["reason"] == "NotFound"


def test_an_empty_dispatcher_serves_nothing():
    with pytest.raises(errors.NotFound):
        Dispatcher([])(http("/services/a/clusters/root/api"), ADMIN)


def test_the_handler_gets_the_stripped_request():
    a = Recorder("a")
    Dispatcher([a.vw])(http("/services/a/clusters/root:org/api/v1/namespaces/ns/configmaps/x", query="watch=1"),
                       ALICE)
    request = a.calls[0]
    assert request.user is ALICE
    assert request.prefix == "/services/a/clusters/root:org"
    assert request.path == "/api/v1/namespaces/ns/configmaps/x"
    assert request.context == Context(cluster="root:org")
    assert (request.info.verb, request.info.namespace, request.info.resource, request.info.name) == \
        ("watch", "ns", "configmaps", "x")
    assert request.http.args["watch"] == "1"


def test_the_cluster_root_is_the_path_slash():
    a = Recorder("a")
    Dispatcher([a.vw])(http("/services/a/clusters/root"), ADMIN)
    assert a.calls[0].path == "/"


def test_the_authorizer_sees_attributes_of_the_stripped_path():
    a = Recorder("a")
    Dispatcher([a.vw])(http("/services/a/clusters/*/apis/apps/v1/deployments", method="GET"), ALICE)
    user, attributes, context = a.authorized[0]
    assert user is ALICE and context.wildcard
    assert (attributes.verb, attributes.cluster, attributes.api_group, attributes.api_version,
            attributes.resource, attributes.is_resource) == ("list", "*", "apps", "v1", "deployments", True)


def test_a_denial_is_the_apiservers_403_and_the_handler_never_runs():
    a = Recorder("a", allow=False)
    with pytest.raises(errors.Forbidden) as exc:
        Dispatcher([a.vw])(http("/services/a/clusters/root/api/v1/namespaces/default/configmaps/x",
                                method="DELETE"), ALICE)
    assert exc.value.message == ('configmaps "x" is forbidden: User "alice" cannot delete resource "configmaps" in '
                                 'API group "" in the namespace "default" in workspace "root": not today')
    assert exc.value.code == 403 and not a.calls


def test_non_resource_denials_name_the_path():
    with pytest.raises(errors.Forbidden) as exc:
        Dispatcher([Recorder("a", allow=False).vw])(http("/services/a/clusters/root/apis"), ALICE)
    assert exc.value.message == 'forbidden: User "alice" cannot get path "/apis": not today'


def test_system_masters_skip_the_authorizer():
    a = Recorder("a", allow=False)
    assert Dispatcher([a.vw])(http("/services/a/clusters/root/api"), ADMIN).status_code == 200
    assert not a.authorized


@pytest.mark.parametrize("path", ["/healthz", "/livez", "/readyz", "/readyz/"])
def test_health_paths_are_always_allowed(path):
    a = Recorder("a", allow=False)
    response = Dispatcher([a.vw])(http("/services/a/clusters/root" + path), ALICE)
    assert response.status_code == 200 and response.get_data() == b"ok"
    assert not a.authorized and not a.calls


def test_readiness_is_one_check_per_virtual_workspace():
    a, b = Recorder("a"), Recorder("b", ready=False)
    dispatcher = Dispatcher([a.vw, b.vw])
    checks = dispatcher.readiness()
    assert list(checks) == ["virtual-workspace:a", "virtual-workspace:b"]
    assert checks["virtual-workspace:a"]() is True and checks["virtual-workspace:b"]() is False
    response = dispatcher(http("/services/b/clusters/root/readyz"), ALICE)
    assert response.status_code == 500 and response.get_data() == b"virtual-workspace:b failed"
    assert dispatcher(http("/services/b/clusters/root/healthz"), ALICE).status_code == 200
    b.is_ready = True
    assert dispatcher(http("/services/b/clusters/root/readyz"), ALICE).status_code == 200


def test_a_crashing_readiness_probe_is_not_ready():
    def broken():
        raise RuntimeError("boom")

    vw = VirtualWorkspace("a", cluster_path_resolver("a"), lambda *_: (True, ""), lambda r: Response(), broken)
    assert Dispatcher([vw])(http("/services/a/clusters/root/readyz"), ALICE).status_code == 500
