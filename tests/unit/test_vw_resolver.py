"""The common root path resolver: which ``/services/...`` paths a virtual workspace accepts, and how it splits them.

Resolvers see the decoded request path (as kcp's see Go's ``URL.Path``): ``%2A`` and ``%3A`` arrive as
``*`` and ``:`` (see test_vw_framework for the HTTP side), so an undecoded escape is not a cluster name.
"""

from __future__ import annotations

import pytest

from kcp_virtual import Context, cluster_path_resolver

demo = cluster_path_resolver("demo")
export = cluster_path_resolver("apiexport", 2)


@pytest.mark.parametrize("path, prefix, cluster", [
    ("/services/demo/clusters/root/api/v1/configmaps", "/services/demo/clusters/root", "root"),
    ("/services/demo/clusters/root:org:team/apis", "/services/demo/clusters/root:org:team", "root:org:team"),
    ("/services/demo/clusters/*/api/v1/configmaps", "/services/demo/clusters/*", "*"),
    ("/services/demo/clusters/root", "/services/demo/clusters/root", "root"),
    ("/services/demo/clusters/root/", "/services/demo/clusters/root", "root"),
    ("/services/demo/clusters/*/", "/services/demo/clusters/*", "*"),
    ("/services/demo/clusters/root/api/v1/", "/services/demo/clusters/root", "root"),
    ("/services/demo/clusters/a-1:b-2/openapi/v3", "/services/demo/clusters/a-1:b-2", "a-1:b-2"),
])
def test_accepted(path, prefix, cluster):
    accepted, got_prefix, context = demo(path)
    assert accepted
    assert got_prefix == prefix and path.startswith(got_prefix)
    assert context == Context(cluster=cluster, api_domain_key="")
    assert context.wildcard is (cluster == "*")


@pytest.mark.parametrize("path", [
    "/services/demo",
    "/services/demo/",
    "/services/demo/clusters",
    "/services/demo/clusters/",
    "/services/demo/clusters//api/v1",
    "/services/demo/cluster/root/api",
    "/services/demo/root/api/v1",
    "/services/demox/clusters/root/api",
    "/services/other/clusters/root/api",
    "/clusters/root/api/v1",
    "/services/demo/clusters/Root/api",            # not a logical cluster name
    "/services/demo/clusters/root:/api",
    "/services/demo/clusters/:root/api",
    "/services/demo/clusters/root::org/api",
    "/services/demo/clusters/-root/api",
    "/services/demo/clusters/ro ot/api",
    "/services/demo/clusters/**/api",
    "/services/demo/clusters/%2A/api",             # still encoded: not decoded by the server, not "*"
    "/services/demo/clusters/root%3Aorg/api",
    "/services/demo/clusters/../clusters/root/api",
    "/services/demo/clusters/./api",
    "/services/demo/clusters/root/../../other/clusters/root/api",
    "/services/demo/clusters/root/api/../apis",
    "/services/demo/clusters/root/./api",
    "/services/demo/clusters/root/api/v1/..",
])
def test_rejected(path):
    accepted, _, _ = demo(path)
    assert not accepted


def test_segments_become_the_api_domain_key():
    accepted, prefix, context = export("/services/apiexport/root:org/widgets/clusters/*/apis/example.com/v1/widgets")
    assert accepted
    assert prefix == "/services/apiexport/root:org/widgets/clusters/*"
    assert context.api_domain_key == "root:org/widgets" and context.cluster == "*"


@pytest.mark.parametrize("path", [
    "/services/apiexport/root/clusters/*/apis",               # a segment short
    "/services/apiexport//widgets/clusters/*/apis",           # empty segment
    "/services/apiexport/root/../clusters/*/apis",            # dot segment
    "/services/apiexport/root/./clusters/*/apis",
    "/services/apiexport/root/widgets/extra/clusters/*/apis",  # a segment too many
    "/services/apiexport/root/widgets/clusters",
])
def test_segments_rejected(path):
    assert not export(path)[0]


def test_custom_key_and_keeping_the_cluster_in_the_path():
    resolve = cluster_path_resolver("init", 1, api_domain_key=lambda segments: segments[0].upper(),
                                    keep_cluster_in_path=True)
    accepted, prefix, context = resolve("/services/init/root:t/clusters/root:org/api/v1/namespaces")
    assert accepted
    assert prefix == "/services/init/root:t"  # the handler sees /clusters/root:org/api/v1/namespaces
    assert context == Context(cluster="root:org", api_domain_key="ROOT:T")


def test_without_segments_the_name_alone_prefixes():
    resolve = cluster_path_resolver("content", keep_cluster_in_path=True)
    accepted, prefix, context = resolve("/services/content/clusters/root/api")
    assert accepted and prefix == "/services/content" and context.cluster == "root"


def test_values_check_the_segments_and_become_the_context_values():
    calls = []

    def values(segments):
        calls.append(segments)
        return {"team": segments[0]} if segments[0] != "bad" else None

    resolve = cluster_path_resolver("teams", 1, values=values)
    accepted, prefix, context = resolve("/services/teams/red/clusters/root:org/api/v1/configmaps")
    assert accepted and prefix == "/services/teams/red/clusters/root:org"
    assert context == Context(cluster="root:org", api_domain_key="red", values={"team": "red"})
    with pytest.raises(TypeError):
        context.values["team"] = "blue"  # shared by every request of that prefix: read-only
    assert not resolve("/services/teams/bad/clusters/root/api")[0]
    assert not resolve("/services/teams/red/clusters/Root/api")[0]  # the cluster is checked before values


def test_resolutions_are_memoized_per_segments_and_cluster():
    calls = []
    resolve = cluster_path_resolver("memo", 1, values=lambda segments: calls.append(segments) or {"n": len(calls)})
    first = resolve("/services/memo/a/clusters/root/api/v1/configmaps/x")
    again = resolve("/services/memo/a/clusters/root/apis/example.io/v1/widgets")
    assert first == again and calls == [["a"]]
    other = resolve("/services/memo/a/clusters/root:org/api")
    assert other.context.cluster == "root:org" and other.prefix == "/services/memo/a/clusters/root:org"
    assert calls == [["a"], ["a"]]
    assert not resolve("/services/memo/a/clusters/root/../x/api")[0]  # dot segments: refused before the memo
