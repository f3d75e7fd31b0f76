"""The storage of ``workspaces``: ClusterWorkspaces of ``<org>`` narrowed, per request, to what the caller sees.

Every request computes the caller's view from the live state -- a list of the org's ClusterWorkspaces
and one rules review of the caller in the org (``visibility``) -- so nothing it answers can be
staler than the request itself. Who may do what:

* list, watch and get need the caller to be able to enter ``<org>`` at all (the shard's tenancy rule;
  ``root`` has no parent, so every authenticated user may): otherwise 403. That is the same gate the
  rules review itself passes, so it costs nothing extra. ``personal`` narrows the view to workspaces
  whose owner annotation names the caller.
* get and delete of a workspace outside the view are a 404, whether or not it exists.
* create needs ``create`` on ``clusterworkspaces`` in ``<org>`` (a SubjectAccessReview); the
  ClusterWorkspace is created with the caller as owner, so the owner grants follow.
* delete needs ``delete`` on that ClusterWorkspace (owners have it); patch (labels and annotations
  only, ``patching.py``) needs ``patch`` on it.

The shard is called with the virtual workspace's own identity once the caller has been checked
here (so the shard's answers are about the objects, never about the caller's rights).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from typing import Any

import gevent.pool
import orjson

from kcp_virtual.framework import errors
from kcp_virtual.framework.authorization import Attributes, forbidden, is_master
from kcp_virtual.framework.shardclient import ListQuery, ShardClient
from kcp_virtual.framework.virtualworkspace import Request
from kcp_virtual.workspaces import patching, projection
from kcp_virtual.workspaces.projection import CLUSTER_WORKSPACES, GROUP, KIND, PLURAL, VERSION
from kcp_virtual.workspaces.visibility import EVERYTHING, NOTHING, Visibility, visibility
from kcp_virtual.workspaces.watch import WorkspaceWatch

__all__ = ["WorkspaceStorage", "View", "PERSONAL", "ALL"]

ALL, PERSONAL = "all", "personal"
LIST_KIND = f"{KIND}List"
_WRITE_ATTEMPTS = _DELETE_ATTEMPTS = 8
NAMED_LIST_LIMIT = 500      # up to this many visible names, a list fetches them by name
NAMED_CONCURRENCY = 16


def _as_workspace_invalid(exc: errors.Invalid) -> errors.Invalid:
    """The shard's 422 about the ClusterWorkspace, told about the Workspace the caller wrote."""
    details = exc.details or {}
    if not details.get("causes"):
        return exc
    return errors.Invalid.for_fields(KIND, GROUP, details.get("name") or "", details["causes"])


@dataclass(frozen=True, slots=True)
class View:
    """What one caller sees of one org: the names it may enter, and, for ``personal``, only what it owns."""

    user: Any
    org: str
    personal: bool
    names: Visibility

    def filter(self, cluster_workspaces: list[dict]) -> list[dict]:
        """Those of ``cluster_workspaces`` in the view (the list's hot loop: 10,000 names per request)."""
        names = self.names
        if names.everything:
            shown = cluster_workspaces
        else:
            wanted = names.names
            shown = [obj for obj in cluster_workspaces if obj["metadata"]["name"] in wanted]
        if self.personal:
            shown = [obj for obj in shown if projection.owner_name(obj) == self.user.name]
        return shown

    def shows(self, cluster_workspace: dict) -> bool:
        meta = cluster_workspace.get("metadata") or {}
        if meta.get("name") not in self.names:
            return False
        return not self.personal or projection.owner_name(cluster_workspace) == self.user.name

    def with_names(self, names: Visibility) -> "View":
        return replace(self, names=names)


def _encode_continue(rv: str, name: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"rv": rv, "start": name})).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[str, str]:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return str(data["rv"]), str(data["start"])
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise errors.BadRequest("continue key is not valid: malformed continue token") from None


class WorkspaceStorage:
    """See the module docstring; the watch lives in ``watch.py``."""

    verbs = frozenset({"get", "list", "watch", "create", "delete", "patch"})
    subresources: dict = {}

    def __init__(self, shard: ShardClient):
        self.shard = shard

    # ------------------------------------------------------------------ the view

    def names(self, user: Any, org: str) -> Visibility:
        """The names ``user`` may enter in ``org`` now: one rules review. Forbidden if it may not enter ``org``."""
        if is_master(user):
            return EVERYTHING
        return visibility(self.shard.rules_for(user, org).resource_rules)

    def view(self, request: Request) -> View:
        """The caller's view, or the 403 of a caller that may not see workspaces of ``<org>`` at all."""
        org = request.context.cluster
        try:
            names = self.names(request.user, org)
        except errors.Forbidden:
            raise forbidden(request.user, Attributes.from_request_info(request.info, org),
                            f'it may not enter workspace "{org}"') from None
        return View(request.user, org, request.context.api_domain_key == PERSONAL, names)

    def current_names(self, view: View) -> Visibility:
        """``view``'s names now; NOTHING once the caller may no longer enter the org (or it is gone)."""
        try:
            return self.names(view.user, view.org)
        except (errors.Forbidden, errors.NotFound):
            return NOTHING

    def list_org(self, request: Request, query: ListQuery) -> dict:
        """ClusterWorkspaces of ``<org>`` matching the caller's selectors (and ``limit``; never the caller's
        ``continue``, which is this view's own). A missing org is a 404 only for
        those who could enter it if it existed (the shard's order: authorize, then look the cluster up)."""
        upstream = ListQuery(label_selector=query.label_selector, field_selector=query.field_selector,
                             resource_version=query.resource_version,
                             resource_version_match=query.resource_version_match, limit=query.limit)
        try:
            return self.shard.list(CLUSTER_WORKSPACES, request.context.cluster, "", upstream)
        except errors.NotFound:
            self.view(request)
            raise

    def _not_found(self, name: str) -> errors.NotFound:
        return errors.NotFound.for_resource(PLURAL, GROUP, name)

    def _visible(self, request: Request, view: View, name: str) -> dict:
        """The ClusterWorkspace ``name`` if the caller sees it; otherwise a 404, as if it did not exist."""
        if name not in view.names:
            raise self._not_found(name)
        try:
            obj = self.shard.get(CLUSTER_WORKSPACES, view.org, "", name)
        except errors.NotFound:
            raise self._not_found(name) from None
        if not view.shows(obj):
            raise self._not_found(name)
        return obj

    # ------------------------------------------------------------------ reads

    def get(self, request: Request, namespace: str, name: str) -> dict:
        return projection.to_workspace(self._visible(request, self.view(request), name))

    def list(self, request: Request, namespace: str, query: ListQuery, *, encoded: bool = False) -> dict:
        """The caller's workspaces. The org is listed before the rules are read, so a watch from the returned
        resourceVersion replays every RBAC change the rules may not include. ``limit``/``continue`` page
        the filtered result; a continued list shows the current state, as the shard's does. (``encoded``, the
        storage protocol's permission to return pre-serialized items, is not used: the items are dicts.)"""
        start = ""
        if query.continue_token:
            token_rv, start = _decode_continue(query.continue_token)
            query = replace(query, resource_version="", resource_version_match="")
        rv, items = self._list_visible(request, query)
        if query.continue_token:
            rv = token_rv
        if start:
            items = [obj for obj in items if obj["metadata"]["name"] > start]
        metadata: dict = {"resourceVersion": rv}
        if query.limit and len(items) > query.limit:
            metadata["continue"] = _encode_continue(rv, items[query.limit - 1]["metadata"]["name"])
            metadata["remainingItemCount"] = len(items) - query.limit
            items = items[:query.limit]
        return {"kind": LIST_KIND, "apiVersion": projection.API_VERSION, "metadata": metadata,
                "items": [projection.to_workspace(obj) for obj in items]}

    def _list_visible(self, request: Request, query: ListQuery) -> tuple[str, list[dict]]:
        """``(resourceVersion, the visible ClusterWorkspaces by name)``.

        When the caller may enter a few named workspaces (the usual case: grants name workspaces) and the
        list has no selectors, those are fetched by name rather than matched against a list of the whole
        org: a 10,000-workspace org then costs what its caller sees. The resourceVersion comes from a
        one-item list made first, so a watch from it replays whatever changed while the names were fetched.
        """
        selective = query.label_selector or query.field_selector or query.resource_version_match
        if selective:
            listed = self.list_org(request, replace(query, limit=0))
            return listed["metadata"].get("resourceVersion", ""), self.view(request).filter(listed["items"])
        head = self.list_org(request, replace(query, limit=1))
        rv = head["metadata"].get("resourceVersion", "")
        view = self.view(request)
        if view.names.everything or len(view.names.names) > NAMED_LIST_LIMIT:
            listed = self.list_org(request, replace(query, limit=0, resource_version=""))
            return rv, view.filter(listed["items"])
        return rv, view.filter([obj for obj in self._get_all(view.org, sorted(view.names.names)) if obj is not None])

    def _get_all(self, org: str, names: list[str]) -> list[dict | None]:
        """The ClusterWorkspaces ``names`` (None for missing ones), fetched concurrently (a remote shard is
        one round trip per name; in-process the greenlets never wait)."""
        def get(name: str) -> dict | None:
            try:
                return self.shard.get(CLUSTER_WORKSPACES, org, "", name)
            except errors.NotFound:
                return None

        if len(names) <= 1:
            return [get(name) for name in names]
        return list(gevent.pool.Pool(NAMED_CONCURRENCY).imap(get, names))

    def watch(self, request: Request, namespace: str, query: ListQuery) -> WorkspaceWatch:
        return WorkspaceWatch.open(self, request, query)

    # ------------------------------------------------------------------ writes

    def _authorize(self, request: Request, verb: str, name: str = "") -> None:
        """A SubjectAccessReview of ``verb`` on clusterworkspaces in ``<org>``; the 403 names the workspace."""
        user, org = request.user, request.context.cluster
        if is_master(user):
            return
        decision = self.shard.subject_access_review(user, Attributes(
            verb=verb, cluster=org, is_resource=True, api_group=GROUP, api_version=CLUSTER_WORKSPACES.version,
            resource=CLUSTER_WORKSPACES.resource, name=name))
        if not decision.allowed:
            raise forbidden(user, Attributes(verb=verb, cluster=org, is_resource=True, api_group=GROUP,
                                             api_version=VERSION, resource=PLURAL, name=name), decision.reason)

    def create(self, request: Request, namespace: str, body: dict, *, dry_run: bool = False) -> dict:
        user = request.user
        given = ((body.get("metadata") or {}).get("annotations") or {}) if isinstance(body, dict) else {}
        owner = projection.owner_annotation(user)
        if is_master(user) and isinstance(given, dict) and isinstance(given.get(projection.OWNER_ANNOTATION), str):
            owner = given[projection.OWNER_ANNOTATION]  # a privileged client creating on someone's behalf
        obj = projection.to_cluster_workspace(body, owner)
        self._authorize(request, "create")
        try:
            created = self.shard.create(CLUSTER_WORKSPACES, request.context.cluster, "", obj, dry_run=dry_run)
        except errors.Invalid as exc:
            raise _as_workspace_invalid(exc) from None
        except errors.AlreadyExists:
            raise errors.AlreadyExists.for_resource(PLURAL, GROUP, obj["metadata"].get("name", "")) from None
        return projection.to_workspace(created)

    def patch(self, request: Request, namespace: str, name: str, patch_type: str, patch: Any, *,
              subresource: str = "", dry_run: bool = False) -> dict:
        """Labels and annotations only (``patching.py``); needs ``patch`` on that ClusterWorkspace."""
        view = self.view(request)
        for attempt in range(_WRITE_ATTEMPTS):
            current = self._visible(request, view, name)
            if not attempt:
                self._authorize(request, "patch", name)
            labels, annotations, pinned = patching.patched_metadata(projection.to_workspace(current), patch_type,
                                                                    patch)
            body = {**current, "metadata": {**current["metadata"], "labels": labels, "annotations": annotations}}
            try:
                updated = self.shard.update(CLUSTER_WORKSPACES, view.org, "", name, body, dry_run=dry_run)
            except errors.Conflict:
                if pinned:
                    raise errors.Conflict.modified(PLURAL, GROUP, name) from None
                continue  # the controller wrote it meanwhile: patch the new version
            except errors.NotFound:
                raise self._not_found(name) from None
            except errors.Invalid as exc:
                raise _as_workspace_invalid(exc) from None
            return projection.to_workspace(updated)
        raise errors.Conflict.modified(PLURAL, GROUP, name)

    def delete(self, request: Request, namespace: str, name: str, options: dict | None = None) -> dict:
        current = self._visible(request, self.view(request), name)
        self._authorize(request, "delete", name)
        options = dict(options or {})
        given = dict(options.get("preconditions") or {})
        options["preconditions"] = {"uid": current["metadata"].get("uid"), **given}
        for attempt in range(_DELETE_ATTEMPTS):
            try:
                result = self.shard.delete(CLUSTER_WORKSPACES, request.context.cluster, "", name, options=options)
                break
            except errors.NotFound:
                raise self._not_found(name) from None
            except errors.Conflict:
                # the controller wrote it meanwhile; without a version of the client's own, try again
                if given.get("resourceVersion") or attempt == _DELETE_ATTEMPTS - 1:
                    raise
        if result.get("kind") == "Status":
            details = result.get("details")
            if isinstance(details, dict):
                result = {**result, "details": {**details, "group": GROUP, "kind": PLURAL}}
            return result
        return projection.to_workspace(result)
