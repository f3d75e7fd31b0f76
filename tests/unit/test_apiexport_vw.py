"""The apiexport virtual workspace's pure parts: its URL, the names it shares with the shard, schema forms."""

from __future__ import annotations

import pytest

from kcp_virtual.apiexport.exports import APIEXPORTS, Exports, export_label_value, version_schema
from kcp_virtual.framework import errors
from kcp_virtual.apiexport.virtualworkspace import content_attributes, resolve
from server.apis.apis_kcp import export_label_value as shard_export_label_value


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


class _RemoteShard:
    """A shard with one export and its bindings, counting reads; no free resourceVersion (as a remote one)."""

    def __init__(self):
        self.reads, self.bound = 0, False

    def get(self, gvr, cluster, namespace, name, user=None):
        self.reads += 1
        if gvr == APIEXPORTS:
            return {"metadata": {"name": name}, "status": {"identityHash": "abc"}, "spec": {}}
        raise errors.NotFound("no")

    def list(self, gvr, cluster, namespace, query, user=None):
        self.reads += 1
        status = {"phase": "Bound", "apiExportClusterName": "root:p"} if self.bound else {}
        return {"items": [{"status": status}]}


class _Shard(_RemoteShard):
    """The same in-process: its resourceVersion is known for free."""

    def __init__(self, rv: int):
        super().__init__()
        self.rv = rv

    def current_resource_version(self) -> int:
        return self.rv


def test_export_answers_are_reused_only_while_the_shard_has_not_changed():
    shard = _Shard(rv=7)
    exports = Exports(shard)
    assert not exports.binds("root:c", "root:p", "widgets")
    assert exports.definitions("root:p", "widgets")
    reads = shard.reads
    assert not exports.binds("root:c", "root:p", "widgets") and exports.definitions("root:p", "widgets")
    assert shard.reads == reads  # nothing written since: the same answers without reading
    shard.bound, shard.rv = True, 8  # a write
    assert exports.binds("root:c", "root:p", "widgets")
    assert shard.reads == reads + 1


def test_without_a_free_resource_version_every_answer_is_read():
    shard = _RemoteShard()
    exports = Exports(shard)
    exports.binds("root:c", "root:p", "widgets")
    exports.binds("root:c", "root:p", "widgets")
    assert shard.reads == 2


def test_served_is_the_binding_check_and_the_definitions_in_one_answer():
    shard = _Shard(rv=7)
    exports = Exports(shard)
    served, definitions = exports.served("root:c", "root:p", "widgets")
    assert not served and definitions == exports.definitions("root:p", "widgets")
    reads = shard.reads
    assert exports.served("root:c", "root:p", "widgets") == (False, definitions)
    assert shard.reads == reads  # the same resourceVersion: the same answer, nothing read
    shard.bound, shard.rv = True, 8  # a write anywhere on the shard: the next request reads again
    assert exports.served("root:c", "root:p", "widgets")[0]
    shard.bound, shard.rv = False, 9  # unbound: refused at once
    assert not exports.served("root:c", "root:p", "widgets")[0]
    lists = shard.reads
    assert exports.served("*", "root:p", "widgets")[0]  # the wildcard needs no binding of its own
    assert shard.reads == lists  # the definitions of this resourceVersion, and no APIBinding list


def test_served_without_a_free_resource_version_reads_every_time():
    shard = _RemoteShard()
    exports = Exports(shard)
    assert not exports.served("root:c", "root:p", "widgets")[0]
    shard.bound = True
    assert exports.served("root:c", "root:p", "widgets")[0]
