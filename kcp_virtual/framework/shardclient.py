"""How virtual workspaces reach their shard: the ``ShardClient`` protocol and the types it speaks.

Virtual workspaces never import ``server``. They are handed a ShardClient: the in-process one
(``server.shardclient.InProcessShardClient``: direct registry calls, no HTTP, no copies) when they
run inside ``kcp start``, or a remote one (the kubernetes client over TLS) when they run as their own
process. The protocol is the Kubernetes API itself, cut down to what views need, so that a remote
implementation is a thin mapping onto HTTP:

* objects by group/version/resource in one logical cluster or in ``*`` (all of them), namespaced or
  not: get, list, watch, create, update, patch, delete; list and watch take a validated ``ListQuery``
  (the apiserver's query parameters);
* whose permissions apply: ``user=None`` acts with the client's own (privileged) identity; a user
  makes the shard authorize the call as that user (in-process: its authorizer; remote:
  impersonation headers);
* ``subject_access_review``: may this user do that, in that logical cluster;
* ``rules_for``: everything a user may do in a logical cluster, as its SelfSubjectRulesReview
  reports it -- one evaluation that a view checks many objects against (the workspaces view
  matches thousands of names with it instead of asking one review per name);
* ``forward``: hand a whole HTTP request to a logical cluster, as a given user (the proxy kind);
* ``version``: the shard's ``/version``;
* optionally ``informer(gvr, label_selector)``: a watch-fed cache of a resource (``Informer``), for
  clients whose every read -- and every watch -- is a network hop (the remote one). The in-process
  client has none: its reads are memory already.

Failures are ``kcp_virtual.framework.errors`` Status exceptions in every implementation, with the
codes and messages the shard's HTTP API would have answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, NamedTuple, Protocol

from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Request as HTTPRequest, Response

from kcp_virtual.framework import errors, watchstream
from kcp_virtual.framework.authorization import Attributes, Decision

__all__ = ["GroupVersionResource", "User", "ListQuery", "WatchEvent", "Watch", "Rules", "ShardClient", "Informer",
           "NotFresh", "CLUSTER_ANNOTATION", "list_limit", "resource_version_match"]

#: Every object the shard returns names its logical cluster in this annotation (``root:org:team``).
CLUSTER_ANNOTATION = "kcp.dev/cluster"


@dataclass(frozen=True, slots=True)
class GroupVersionResource:
    """A resource of the shard. ``identity`` selects an APIExport's copy of it (its identity hash): the shard
    keeps same-named resources of different exports apart, and serves that copy as ``<resource>:<identity>``.
    """

    group: str
    version: str
    resource: str
    identity: str = ""

    @property
    def path_resource(self) -> str:
        """The resource segment of the shard's URL (and of its catalog)."""
        return f"{self.resource}:{self.identity}" if self.identity else self.resource

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


@dataclass(frozen=True)
class User:
    """An identity a virtual workspace acts as (``server.auth.user.UserInfo`` has the same fields)."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def _flag(args: Mapping[str, str], name: str) -> bool:
    return args.get(name, "").lower() in ("true", "1")


def _and(selector: str, more: str) -> str:
    return f"{selector},{more}" if selector and more else selector or more


def list_limit(args: Mapping[str, str]) -> int:
    """The ``limit`` query parameter (0 when absent); anything but a non-negative integer is a 400."""
    limit = args.get("limit", "")
    try:
        limit_value = int(limit) if limit else 0
        if limit_value < 0:
            raise ValueError
    except ValueError:
        raise errors.BadRequest(f'limit: Invalid value: "{limit}": must be a non-negative integer') from None
    return limit_value


def resource_version_match(args: Mapping[str, str]) -> str:
    """The ``resourceVersionMatch`` query parameter ("" when absent); an unknown value is a 400."""
    match = args.get("resourceVersionMatch", "")
    if match not in ("", "NotOlderThan", "Exact"):
        raise errors.BadRequest(f'resourceVersionMatch: Unsupported value: "{match}": supported values: '
                                '"Exact", "NotOlderThan"')
    return match


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The query of a list or watch, validated as the apiserver validates it (``from_args``).

    Selectors stay strings: the shard parses them (and answers 400 for bad ones), exactly as it would
    for the same request over HTTP.
    """

    label_selector: str = ""
    field_selector: str = ""
    limit: int = 0
    continue_token: str = ""
    resource_version: str = ""
    resource_version_match: str = ""
    # watch only
    allow_bookmarks: bool = False
    send_initial_events: bool | None = None
    timeout_seconds: int | None = None
    #: BOOKMARKs whenever the shard's progress advanced (with ``allow_bookmarks``), also when only other
    #: resources were written: what a watch-fed cache needs to prove it is fresh. Never a client's.
    progress_notify: bool = False

    @classmethod
    def from_args(cls, args: Mapping[str, str] | MultiDict, *, watch: bool = False) -> "ListQuery":
        limit_value = list_limit(args)
        match = resource_version_match(args)
        query = cls(label_selector=args.get("labelSelector", "").strip(),
                    field_selector=args.get("fieldSelector", "").strip(), limit=limit_value,
                    continue_token=args.get("continue", ""), resource_version=args.get("resourceVersion", ""),
                    resource_version_match=match)
        if not watch:
            return query
        send_initial = None
        if "sendInitialEvents" in args:
            send_initial = _flag(args, "sendInitialEvents")
            if send_initial and match != "NotOlderThan":
                raise errors.Invalid("resourceVersionMatch: Forbidden: sendInitialEvents requires setting "
                                     "resourceVersionMatch to NotOlderThan")
        timeout = args.get("timeoutSeconds")
        seconds = None
        if timeout:
            try:
                seconds = int(timeout)
            except ValueError:
                raise errors.BadRequest(f'timeoutSeconds: Invalid value: "{timeout}"') from None
        return replace(query, allow_bookmarks=_flag(args, "allowWatchBookmarks"), send_initial_events=send_initial,
                       timeout_seconds=seconds, resource_version_match="")

    def restricted(self, label_selector: str, field_selector: str = "") -> "ListQuery":
        """This query with ``label_selector`` and ``field_selector`` ANDed to its own (how a view narrows what
        the shard returns)."""
        if not label_selector and not field_selector:
            return self
        return replace(self, label_selector=_and(self.label_selector, label_selector),
                       field_selector=_and(self.field_selector, field_selector))

    def query_params(self) -> dict[str, str]:
        """The query as URL parameters (for a remote client)."""
        params: dict[str, str] = {}
        for key, value in (("labelSelector", self.label_selector), ("fieldSelector", self.field_selector),
                           ("continue", self.continue_token), ("resourceVersion", self.resource_version),
                           ("resourceVersionMatch", self.resource_version_match)):
            if value:
                params[key] = value
        if self.limit:
            params["limit"] = str(self.limit)
        if self.allow_bookmarks:
            params["allowWatchBookmarks"] = "true"
        if self.progress_notify:
            params["progressNotify"] = "true"
        if self.send_initial_events is not None:
            params["sendInitialEvents"] = "true" if self.send_initial_events else "false"
        if self.timeout_seconds is not None:
            params["timeoutSeconds"] = str(self.timeout_seconds)
        return params


class WatchEvent(NamedTuple):
    """One watch event. Implementations may deliver any object with ``type`` and ``object`` attributes, and
    ``encoded()`` when its stream line is serialized once for many watchers (``watchstream.json_line``)."""

    type: str      # ADDED, MODIFIED, DELETED, BOOKMARK, ERROR (object: a Status)
    object: dict


#: A watch is a ``kcp_virtual.framework.watchstream.Watch``: started with a sink, it pushes its events (no
#: greenlet waits through it); iterated, a greenlet pulls them; ``close()`` ends it (and the upstream watch).
#: Like the apiserver's watch, an expired resource version is one ERROR event carrying a 410 Status, not an
#: exception; bad requests (selectors, too-large versions) raise before the first event.
Watch = watchstream.Watch


class Rules(NamedTuple):
    """A user's rules in one logical cluster (and namespace), as ``SelfSubjectRulesReview.status`` has them:
    PolicyRule-shaped dicts (``verbs``, ``apiGroups``, ``resources``, ``resourceNames``; ``verbs``,
    ``nonResourceURLs``). ``incomplete`` says the authorizer could not list everything."""

    resource_rules: tuple[dict, ...] = ()
    non_resource_rules: tuple[dict, ...] = ()
    incomplete: bool = False


class NotFresh(Exception):
    """An ``Informer`` cannot vouch for being as fresh as the caller needs: ask the shard instead."""


class Informer(Protocol):
    """A watch-fed cache of one resource's objects matching one label selector, in every logical cluster.

    ``fresh_as_of`` is a resourceVersion of the shard; an answer is only given when the cache has
    seen everything up to it (else ``NotFresh``). Objects are keyed by (logical cluster, namespace,
    name) and are the shard's, as a live read would return them: shared and read-only.
    """

    def get(self, cluster: str, namespace: str, name: str, fresh_as_of: int) -> dict | None:
        """The object, or None when the cache holds none (the caller asks the shard, whose NotFound tells a
        missing object from a missing logical cluster)."""

    def list(self, cluster: str, namespace: str, fresh_as_of: int) -> dict | None:
        """The list the shard would answer (``cluster`` may be ``*``): its kind, items in the shard's order and
        ``metadata.resourceVersion`` the one they are current at (at least ``fresh_as_of``). None when the cache
        cannot tell (a logical cluster it holds no object of may not exist: the shard answers that)."""

    def watch(self, cluster: str, namespace: str, resource_version: str, fresh_as_of: int, *,
              allow_bookmarks: bool = False, timeout_seconds: int | None = None) -> Watch | None:
        """The watch the shard would serve without selectors of the caller's, served from the cache: from
        ``resource_version`` "" or "0" the current objects as ADDED events (the shard's order), from N the events
        after N; then the changes, BOOKMARKs with ``allow_bookmarks``, until ``timeout_seconds`` or
        ``close()``. Its events may carry ``encoded()``, their stream line shared by every watcher. It ends
        early, without an error, when the cache loses track (the client watches again from what it saw).
        NotFresh (or None, as ``list``) when the cache cannot answer exactly as the shard would: the caller
        watches live."""


class ShardClient(Protocol):
    """See the module docstring. ``cluster`` is a logical cluster path or ``*``; ``namespace`` is ``""`` for
    cluster-scoped resources and for all namespaces. Returned objects are shared and read-only: copy
    before changing them. Optional, so not declared here (``getattr(shard, "informer", None)``):
    ``informer(gvr, label_selector) -> Informer | None``, started on first use; ``current_resource_version()
    -> int``, the shard's resourceVersion now where knowing it costs nothing (in-process): every change of the
    shard's state raises it, so what was read while it said N is current for as long as it still says N."""

    def get(self, gvr: GroupVersionResource, cluster: str, namespace: str, name: str, *,
            user: Any = None) -> dict: ...

    def list(self, gvr: GroupVersionResource, cluster: str, namespace: str, query: ListQuery, *,
             user: Any = None) -> dict: ...

    def watch(self, gvr: GroupVersionResource, cluster: str, namespace: str, query: ListQuery, *,
              user: Any = None) -> Watch:
        """A push ``Watch`` (see ``Watch`` above); its consumer closes it when the client leaves."""

    def create(self, gvr: GroupVersionResource, cluster: str, namespace: str, body: dict, *,
               dry_run: bool = False, user: Any = None) -> dict: ...

    def update(self, gvr: GroupVersionResource, cluster: str, namespace: str, name: str, body: dict, *,
               subresource: str = "", dry_run: bool = False, user: Any = None) -> dict: ...

    def patch(self, gvr: GroupVersionResource, cluster: str, namespace: str, name: str, patch_type: str,
              patch: Any, *, subresource: str = "", dry_run: bool = False, user: Any = None,
              field_manager: str = "", force: bool = False) -> dict:
        """``patch_type`` is the media type (``negotiation.MERGE_PATCH``...); ``patch`` the decoded body.
        ``field_manager`` (required for ``APPLY_PATCH``) and ``force`` are the PatchOptions of server-side apply."""

    def delete(self, gvr: GroupVersionResource, cluster: str, namespace: str, name: str, *,
               options: dict | None = None, user: Any = None) -> dict:
        """``options`` is a ``DeleteOptions`` body (preconditions, propagationPolicy, dryRun)."""

    def subject_access_review(self, user: Any, attributes: Attributes) -> Decision:
        """Whether ``user`` may do ``attributes`` in logical cluster ``attributes.cluster``."""

    def rules_for(self, user: Any, cluster: str, namespace: str = "") -> Rules:
        """``user``'s rules in ``cluster`` (``namespace`` "": the cluster-scoped ones), evaluated now, as the
        SelfSubjectRulesReview that user would POST there: Forbidden when the user may not use ``cluster`` at
        all, NotFound when it does not exist."""

    def forward(self, request: HTTPRequest, user: Any, cluster: str, path: str, prefix: str) -> Response:
        """Serve ``request`` as if it had been sent to ``/clusters/<cluster><path>`` by ``user``.
        ``prefix`` is the URL prefix the client used (for URLs in responses such as OpenAPI's)."""

    def version(self) -> dict: ...
