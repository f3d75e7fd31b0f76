"""The in-process ``ShardClient``: embedded virtual workspaces call straight into this shard's registry.

No HTTP, no serialization, no copies: reads return the stored (shared, read-only) objects and a
watch is the registry's own watch, so a virtual workspace's GET costs about what the shard's GET
costs. It keeps the HTTP API's behaviour where it matters: a missing logical cluster is a 404, list
and watch queries are parsed by the shard's parsers (400 for bad selectors), patch types are those
the resource accepts (415), objects are shown in the requested version, and an identity given as
``user`` is authorized by the shard's authorizer first, as the same request over HTTP would be.
"""

from __future__ import annotations

import random
import time
from typing import Any

import orjson
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request, Response

from kcp_virtual.framework import negotiation
from kcp_virtual.framework import errors
from kcp_virtual.framework.authorization import Attributes as VWAttributes, Decision as VWDecision
from kcp_virtual.framework.shardclient import GroupVersionResource, ListQuery, Rules
from server.app import VERSION_INFO, ShardApp
from server.auth.authz import Attributes, forbidden_message
from server.auth.user import UserInfo
from server.endpoints.rest import MIN_WATCH_TIMEOUT
from server.registry.generic import ListOptions, WILDCARD, parse_resource_version
from server.registry.resourcetype import RequestContext, ResourceType
from server.registry.selectors import FieldSelector, LabelSelector

__all__ = ["InProcessShardClient", "PRIVILEGED"]

#: Who acts when a virtual workspace calls with ``user=None`` and the call reaches a custom handler
#: (as the remote client's admin kubeconfig would: a member of ``system:masters``).
PRIVILEGED = UserInfo("system:kcp:virtual-workspaces", groups=("system:masters", "system:authenticated"))
_READS = frozenset({"get", "list", "watch"})
RULES_REVIEWS = GroupVersionResource("authorization.k8s.io", "v1", "selfsubjectrulesreviews")


def _user_info(user: Any) -> UserInfo:
    if isinstance(user, UserInfo):
        return user
    extra = {k: tuple(v) for k, v in (getattr(user, "extra", None) or {}).items()}
    return UserInfo(user.name, getattr(user, "uid", "") or "", tuple(getattr(user, "groups", ()) or ()), extra)


class InProcessShardClient:
    """``kcp_virtual.framework.shardclient.ShardClient`` for virtual workspaces running inside ``app``'s process."""

    def __init__(self, app: ShardApp):
        self.app = app
        self.registry = app.registry
        self.catalog = app.catalog
        #: The registry's own method (no call in between: the apiexport VW asks it on every request).
        self.current_resource_version = self.registry.current_resource_version

    # ------------------------------------------------------------------ plumbing

    def _resource(self, gvr: GroupVersionResource, cluster: str, verb: str, namespace: str = "", name: str = "",
                  subresource: str = "", user: Any = None) -> ResourceType:
        """The served type of ``gvr`` in ``cluster``, after the checks the HTTP path would have made."""
        if user is not None:
            self._authorize(user, verb, gvr, cluster, namespace, name, subresource)
        # reads also see what is replicated of other shards' clusters (an APIExport of a provider elsewhere)
        self.registry.require_cluster(cluster, replicas=verb in _READS)
        rt = self.catalog.lookup(cluster, gvr.group, gvr.version, gvr.path_resource)
        if rt is None:
            raise errors.NotFound.path()
        return rt

    def _authorize(self, user: Any, verb: str, gvr: GroupVersionResource, cluster: str, namespace: str, name: str,
                   subresource: str) -> None:
        attributes = Attributes(user=_user_info(user), verb=verb, cluster=cluster, is_resource=True,
                                api_group=gvr.group, api_version=gvr.version, namespace=namespace,
                                resource=gvr.resource, subresource=subresource, name=name)
        decision = self.app.authorizer.authorize(attributes)
        if not decision.allowed:
            message, details = forbidden_message(attributes, decision.reason)
            raise errors.Forbidden(message, details=details or None)

    @staticmethod
    def _shown(rt: ResourceType, obj: dict) -> dict:
        """``obj`` in the version asked for (CRDs served in several versions store one)."""
        return rt.convert(obj) if rt.convert is not None and obj.get("kind") == rt.kind else obj

    @staticmethod
    def _options(rt: ResourceType, query: ListQuery) -> ListOptions:
        return ListOptions(
            label_selector=LabelSelector.parse(query.label_selector) if query.label_selector else None,
            field_selector=FieldSelector.parse(query.field_selector, rt.field_selectors)
            if query.field_selector else None,
            limit=query.limit, continue_token=query.continue_token, resource_version=query.resource_version,
            resource_version_match=query.resource_version_match)

    # ------------------------------------------------------------------ reads

    def get(self, gvr: GroupVersionResource, cluster: str, namespace: str, name: str, *, user: Any = None) -> dict:
        rt = self._resource(gvr, cluster, "get", namespace, name, user=user)
        return self._shown(rt, self.registry.get(rt, cluster, namespace, name))

    def list(self, gvr: GroupVersionResource, cluster: str, namespace: str, query: ListQuery, *,
             user: Any = None) -> dict:
        rt = self._resource(gvr, cluster, "list", namespace, user=user)
        result = self.registry.list(rt, cluster, namespace, self._options(rt, query))
        if rt.convert is not None:
            result["items"] = [rt.convert(item) for item in result["items"]]
        return result

    def watch(self, gvr: GroupVersionResource, cluster: str, namespace: str, query: ListQuery, *,
              user: Any = None):
        rt = self._resource(gvr, cluster, "watch", namespace, user=user)
        options = self._options(rt, query)
        options.resource_version_match = ""
        if options.resource_version not in ("", "0"):
            parse_resource_version(options.resource_version)
        seconds = query.timeout_seconds if query.timeout_seconds is not None \
            else MIN_WATCH_TIMEOUT * (1 + random.random())
        return self.registry.watch(rt, cluster, namespace, options, send_initial_events=query.send_initial_events,
                                   allow_bookmarks=query.allow_bookmarks, progress_notify=query.progress_notify,
                                   bookmark_interval=self.app.api.bookmark_interval,
                                   deadline=time.monotonic() + max(seconds, 0))

    # ------------------------------------------------------------------ writes

    def _writable(self, rt: ResourceType, verb: str, cluster: str) -> None:
        if cluster == WILDCARD:
            raise errors.MethodNotAllowed.for_verb(verb, rt.plural)

    def create(self, gvr: GroupVersionResource, cluster: str, namespace: str, body: dict, *, dry_run: bool = False,
               user: Any = None) -> dict:
        rt = self._resource(gvr, cluster, "create", namespace, user=user)
        self._writable(rt, "create", cluster)
        handler = rt.handlers.get(("create", ""))
        if handler is not None:  # what a create means is decided there (a ClusterWorkspace's owner and type)
            request = Request(EnvironBuilder(query_string={"dryRun": "All"} if dry_run else None).get_environ())
            _, obj = handler(RequestContext(user=PRIVILEGED if user is None else _user_info(user), cluster=cluster,
                                            namespace=namespace, name="", subresource="",
                                            body=orjson.loads(orjson.dumps(body)), request=request,
                                            services=self.app))
            return self._shown(rt, obj)
        return self._shown(rt, self.registry.create(rt, cluster, namespace, body, dry_run=dry_run))

    def update(self, gvr: GroupVersionResource, cluster: str, namespace: str, name: str, body: dict, *,
               subresource: str = "", dry_run: bool = False, user: Any = None) -> dict:
        rt = self._resource(gvr, cluster, "update", namespace, name, subresource, user=user)
        self._writable(rt, "update", cluster)
        return self._shown(rt, self.registry.update(rt, cluster, namespace, name, body, subresource=subresource,
                                                    dry_run=dry_run))

    def patch(self, gvr: GroupVersionResource, cluster: str, namespace: str, name: str, patch_type: str, patch: Any,
              *, subresource: str = "", dry_run: bool = False, user: Any = None, field_manager: str = "",
              force: bool = False) -> dict:
        rt = self._resource(gvr, cluster, "patch", namespace, name, subresource, user=user)
        self._writable(rt, "patch", cluster)
        negotiation.request_content_kind(patch_type, rt.patch_kinds)  # 415 for what this resource does not take
        return self._shown(rt, self.registry.patch(rt, cluster, namespace, name, patch_type, patch,
                                                   subresource=subresource, dry_run=dry_run,
                                                   field_manager=field_manager or None, force=force))

    def delete(self, gvr: GroupVersionResource, cluster: str, namespace: str, name: str, *,
               options: dict | None = None, user: Any = None) -> dict:
        rt = self._resource(gvr, cluster, "delete", namespace, name, user=user)
        self._writable(rt, "delete", cluster)
        return self._shown(rt, self.registry.delete(rt, cluster, namespace, name, options))

    # ------------------------------------------------------------------ the rest

    def subject_access_review(self, user: Any, attributes: VWAttributes) -> VWDecision:
        decision = self.app.authorizer.authorize(Attributes(
            user=_user_info(user), verb=attributes.verb, cluster=attributes.cluster,
            is_resource=attributes.is_resource, path=attributes.path, api_group=attributes.api_group,
            api_version=attributes.api_version, namespace=attributes.namespace, resource=attributes.resource,
            subresource=attributes.subresource, name=attributes.name))
        return VWDecision(decision.allowed, decision.reason)

    def rules_for(self, user: Any, cluster: str, namespace: str = "") -> Rules:
        """The authorizer's ``rules_for``, behind the check a SelfSubjectRulesReview request would pass."""
        user_info = _user_info(user)
        self._authorize(user_info, "create", RULES_REVIEWS, cluster, "", "", "")
        self.registry.require_cluster(cluster)
        rules_for = getattr(self.app.authorizer, "rules_for", None)
        if rules_for is None:
            return Rules(incomplete=True)
        resource_rules, non_resource_rules = rules_for(user_info, cluster, namespace)
        return Rules(tuple(resource_rules), tuple(non_resource_rules))

    def forward(self, request: Request, user: Any, cluster: str, path: str, prefix: str) -> Response:
        user_info = _user_info(user)
        request.environ["kcp.user"] = user_info
        return self.app.serve_cluster(request, user_info, cluster, path, prefix)

    def version(self) -> dict:
        return VERSION_INFO
