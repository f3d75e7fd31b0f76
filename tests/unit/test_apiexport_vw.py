"""The apiexport virtual workspace's pure parts: its URL, the names it shares with the shard, schema forms."""

from __future__ import annotations

import pytest

from kcp_virtual.apiexport.exports import export_label_value, version_schema
from kcp_virtual.apiexport.virtualworkspace import content_attributes, resolve, url_path
from server.apis.apis_kcp import export_label_value as shard_export_label_value
from server.controllers.apiexport import virtual_workspace_url


def test_resolves_export_and_cluster():
    accepted, prefix, context = resolve("/services/apiexport/root:org/widgets/clusters/*/apis/example.io/v1/widgets")
    assert accepted and prefix == "/services/apiexport/root:org/widgets/clusters/*"
    assert context.cluster == "*" and context.api_domain_key == "root:org/widgets"
    assert dict(context.values) == {"export_cluster": "root:org", "export_name": "widgets"}
    accepted, prefix, context = resolve("/services/apiexport/root/w.example.io/clusters/root:c/api")
    assert accepted and context.cluster == "root:c" and context.values["export_name"] == "w.example.io"


@pytest.mark.parametrize("path", [
    "/services/apiexport/root/widgets",                       # no clusters part
    "/services/apiexport/root/widgets/clusters/",             # empty cluster
    "/services/apiexport//widgets/clusters/*/api",            # empty export cluster
    "/services/apiexport/Root/widgets/clusters/*/api",        # not a cluster name
    "/services/apiexport/root/Widgets/clusters/*/api",        # not an object name
    "/services/apiexport/root/widgets/clusters/a b/api",
    "/services/apiexport/root/widgets/clusters/*/../x",
    "/services/apiexports/root/widgets/clusters/*/api",
])
def test_rejects_malformed_paths(path):
    assert not resolve(path)[0]


def test_the_published_url_is_this_virtual_workspace():
    assert virtual_workspace_url("https://h:6443/", "root:p", "widgets") == "https://h:6443" + url_path("root:p",
                                                                                                         "widgets")


def test_export_label_is_the_shards():
    assert export_label_value("root:p", "widgets") == shard_export_label_value("root:p", "widgets")


def test_both_schema_forms():
    schema = {"type": "object"}
    assert version_schema({"schema": schema}) == schema
    assert version_schema({"schema": {"openAPIV3Schema": schema}}) == schema
    assert version_schema({}) is None


def test_content_attributes():
    attributes = content_attributes("watch", "root:p", "widgets")
    assert (attributes.verb, attributes.cluster, attributes.api_group, attributes.resource, attributes.subresource,
            attributes.name) == ("watch", "root:p", "apis.kcp.dev", "apiexports", "content", "widgets")
