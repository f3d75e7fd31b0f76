"""The ``apiexport`` virtual workspace: a provider's controllers see exactly the objects of its exported APIs.

URL: ``/services/apiexport/<export-cluster>/<export-name>/clusters/<cluster|*>/...`` -- the base of it
is what the shard publishes in ``APIExport.status.virtualWorkspaces[].url``. It serves the export's
resources (every served version of its latest schemas, with their OpenAPI schemas, printer columns
and ``status``) and, read-only, the APIBindings that point at the export:

* ``clusters/*``: list and watch across every logical cluster bound to the export; objects carry
  ``kcp.dev/cluster``. Before the first binding that is an empty list and an open watch; objects of
  a cluster that unbinds reach watchers as DELETED (the shard moves them out of the identity's view).
* ``clusters/<name>``: every verb, ``status`` included, when ``<name>`` has a Bound APIBinding to the
  export; otherwise 403 ("could not find suitable APIBinding"), for everyone, checked before the
  shard is asked so that an unbound cluster never looks like a missing resource.

Authorization (kcp's ``apiExportsContentAuthorizer``): the request's verb on ``apiexports/content``
named ``<export-name>`` in ``<export-cluster>``, asked of the shard as a SubjectAccessReview -- for
discovery and OpenAPI as well, so a consumer without that grant learns nothing about the export.
Once allowed, the virtual workspace acts with its own identity: the grant and the binding are the gate.
Writes are validated by the shard against the schema, as in the consumer workspace itself.
"""

from __future__ import annotations

import re
from typing import Any

from kcp_virtual.apiexport.exports import GROUP, VERSION, Exports
from kcp_virtual.framework.authorization import Attributes, Decision, forbidden
from kcp_virtual.framework.resource import ResourceHandler
from kcp_virtual.framework.shardclient import ShardClient
from kcp_virtual.framework.virtualworkspace import (SERVICES_PREFIX, Context, Request,
                                                    VirtualWorkspace, cluster_path_resolver, is_cluster_name)

__all__ = ["NAME", "url_path", "resolve", "content_attributes", "apiexport", "NOT_BOUND"]

NAME = "apiexport"
NOT_BOUND = "could not find suitable APIBinding in target logical cluster"
_EXPORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _export_values(segments: list[str]) -> dict[str, str] | None:
    """A valid export cluster and export name, else None (the path is not this virtual workspace's)."""
    export_cluster, export_name = segments
    if not is_cluster_name(export_cluster) or len(export_name) > 253 or not _EXPORT_NAME.fullmatch(export_name):
        return None
    return {"export_cluster": export_cluster, "export_name": export_name}


#: The common ``.../clusters/<cluster|*>`` shape, with a valid export cluster and export name.
resolve = cluster_path_resolver(NAME, 2, values=_export_values)


def url_path(export_cluster: str, export_name: str) -> str:
    """``/services/apiexport/<export-cluster>/<export-name>``: append ``/clusters/<cluster|*>``."""
    return f"{SERVICES_PREFIX}/{NAME}/{export_cluster}/{export_name}"


def _export(context: Context) -> tuple[str, str]:
    return context.values["export_cluster"], context.values["export_name"]


def content_attributes(verb: str, export_cluster: str, export_name: str) -> Attributes:
    """``<verb>`` on ``apiexports/content`` named the export, in the export's workspace."""
    return Attributes(verb=verb, cluster=export_cluster, is_resource=True, api_group=GROUP, api_version=VERSION,
                      resource="apiexports", subresource="content", name=export_name)


class _BoundOnly:
    """The resource handler behind the binding check: a concrete cluster must bind the export. The check and
    the export's definitions are one lookup (``Exports.served``), handed to the handler."""

    def __init__(self, exports: Exports, handler: ResourceHandler):
        self.exports = exports
        self.handler = handler

    def __call__(self, request: Request):
        context, info = request.context, request.info
        values = context.values
        served, definitions = self.exports.served(context.cluster, values["export_cluster"], values["export_name"])
        if info.is_resource and not served:
            raise forbidden(request.user, Attributes.from_request_info(info, context.cluster), NOT_BOUND)
        return self.handler.serve(request, definitions)


def apiexport(shard: ShardClient) -> VirtualWorkspace:
    """The stock factory: an entry point of group ``kcp_virtual.virtual_workspaces`` (setup.cfg), so ``kcp start``
    and ``kcp virtual-workspaces`` serve it."""
    exports = Exports(shard)

    def authorize(user: Any, attributes: Attributes, context: Context) -> Decision:
        export_cluster, export_name = _export(context)
        allowed, reason = shard.subject_access_review(user, content_attributes(attributes.verb, export_cluster,
                                                                                  export_name))
        if allowed:
            return Decision(True)
        needed = f'it needs {attributes.verb} on apiexports/content "{export_name}" in workspace "{export_cluster}"'
        return Decision(False, f"{needed}: {reason}" if reason else needed)

    handler = ResourceHandler(lambda context: exports.definitions(*_export(context)), version=shard.version)
    return VirtualWorkspace(name=NAME, resolve=resolve, authorize=authorize, handler=_BoundOnly(exports, handler))
