"""The watch of ``workspaces``: the caller's view kept current as workspaces and permissions change.

A list answers from the live state once; a watch must also notice when the *view* changes, not
only the objects in it. So one client watch is several shard watches merged: the ClusterWorkspaces of
``<org>`` with the client's selectors, and the ClusterRoles and ClusterRoleBindings of ``<org>`` (the
caller's content rules) and of its parent (whether the caller may enter ``<org>`` at all). They push
their events into it (``framework.watchstream``); what arrived is handled, in order of version, in a
greenlet that exists only while there is something to handle (a recomputation asks the shard), so an
idle watch holds none. Then, per event:

* a workspace event is passed on when the workspace is in the view, as ADDED the first time the
  client hears of it, DELETED when it leaves (deleted, or relabelled out of the selectors);
* an RBAC event that may concern the caller -- a binding that names it (before or after), a role
  bound to it (``BoundRoles``) -- makes the view be recomputed from one rules review; names that
  became visible are sent as ADDED, names that stopped being visible as DELETED. The many RBAC
  writes about other users (every workspace grants its owner a role) cost a lookup, no review.

Resource versions are the shard's: a workspace event carries the workspace's own version, an
RBAC-caused event the version of the RBAC write that caused it, and all versions a client sees
only grow. A bookmark follows each bookmark of the workspaces watch, at the version every merged
watch has reached (or the last one sent, if that is higher). A watch from a version
resumes: the client's state then is assumed to be the view with today's rules, which holds unless
a relevant RBAC write happened after that version -- then the watch ends with 410 Expired and the
client relists (what the apiserver does when it cannot replay history either). Events from before
the resume point whose effect on the client is unknowable are sent anyway (an ADDED the client
may already hold, a DELETED of a workspace it may never have seen): clients apply those as no-ops.
"""

from __future__ import annotations

import random
from typing import Any, Iterator


from kcp_virtual.framework import errors
from kcp_virtual.framework.authorization import is_master
from kcp_virtual.framework.shardclient import GroupVersionResource, ListQuery, WatchEvent
from kcp_virtual.framework.virtualworkspace import Request
from kcp_virtual.framework.watchstream import Watch, as_watch
from kcp_virtual.workspaces import projection
from kcp_virtual.workspaces.projection import CLUSTER_WORKSPACES
from kcp_virtual.workspaces.visibility import BoundRoles

__all__ = ["WorkspaceWatch", "CLUSTER_ROLES", "CLUSTER_ROLE_BINDINGS"]

RBAC_GROUP = "rbac.authorization.k8s.io"
CLUSTER_ROLES = GroupVersionResource(RBAC_GROUP, "v1", "clusterroles")
CLUSTER_ROLE_BINDINGS = GroupVersionResource(RBAC_GROUP, "v1", "clusterrolebindings")
MIN_WATCH_TIMEOUT = 1800.0      # as the apiserver: a watch without timeoutSeconds ends after 30-60 minutes
NAMED_LOOKUPS = 64              # up to this many changed names, get them; more, list the org once
_OBJECT_EVENTS = ("ADDED", "MODIFIED", "DELETED")
_WORKSPACES = "workspaces"


def _rv(obj: dict) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def _name(obj: dict) -> str:
    return (obj.get("metadata") or {}).get("name") or ""


class _Upstream:
    """The sink of one merged shard watch: its events reach the client watch tagged with where they come from."""

    __slots__ = ("watch", "tag")

    def __init__(self, watch: "WorkspaceWatch", tag: tuple):
        self.watch = watch
        self.tag = tag

    def events(self, events) -> None:
        self.watch._arrived([(self.tag, event) for event in events])

    def ended(self) -> None:
        self.watch._arrived([(self.tag, None)])


class WorkspaceWatch(Watch):
    """One client watch (a push ``Watch``); ``open`` does everything that can fail with a status before the
    response starts."""

    def __init__(self, storage, request: Request, query: ListQuery):
        super().__init__()
        self.storage = storage
        self.shard = storage.shard
        self.request = request
        self.query = query
        self.org = request.context.cluster
        self.shown: dict[str, dict] = {}       # what the client holds (as far as we can know): name -> object
        self.bound: dict[str, BoundRoles] = {}  # logical cluster -> the caller's ClusterRoles there
        self.progress: dict[tuple, int] = {}
        self.last_rv = 0                       # the highest resourceVersion sent to the client
        self.uncertain_until = 0               # workspace events up to here predate what we know of the client
        self.rbac_window_until = 0             # a relevant RBAC event up to here makes the resume impossible
        self.initial: list[dict] = []
        self.upstream: list[tuple[tuple, Any]] = []  # (tag, shard watch)
        self.pending: list[tuple] = []  # (tag, event or None: that watch ended) not handled yet

    @classmethod
    def open(cls, storage, request: Request, query: ListQuery) -> "WorkspaceWatch":
        """The watch, its upstream watches open (not started yet: nothing is lost until the client's starts)."""
        watch = cls(storage, request, query)
        watch._begin()
        return watch

    # ------------------------------------------------------------------ start

    def _selectors(self, **more) -> ListQuery:
        return ListQuery(label_selector=self.query.label_selector, field_selector=self.query.field_selector, **more)

    def _begin(self) -> None:
        query, storage, request = self.query, self.storage, self.request
        requested = query.resource_version
        initial = query.send_initial_events if query.send_initial_events is not None else requested in ("", "0")
        self.timeout = float(query.timeout_seconds) if query.timeout_seconds is not None \
            else MIN_WATCH_TIMEOUT * (1 + random.random())
        if initial:
            # The org first, then the rules: RBAC writes after the list are replayed by the watches below.
            listed = storage.list_org(request, self._selectors(resource_version=requested))
            self.view = storage.view(request)
            self._load_bindings()
            start = _rv(listed)
            self.shown = {_name(obj): obj for obj in self.view.filter(listed["items"])}
            self.initial = list(self.shown.values())
        else:
            try:
                start = int(requested)
                if start < 0:
                    raise ValueError
            except ValueError:
                raise errors.BadRequest(f'resourceVersion: Invalid value: "{requested}": must be a non-negative '
                                        "integer") from None
            # The rules first: RBAC writes before they were read and after ``start`` cannot be undone.
            self.view = storage.view(request)
            self.rbac_window_until = self._load_bindings()
            listed = storage.list_org(request, self._selectors())
            self.uncertain_until = _rv(listed)
            self.shown = {_name(obj): obj for obj in self.view.filter(listed["items"])}
        self.start_rv = self.last_rv = start
        self._open(start)

    def _parent(self) -> str:
        return self.org.rpartition(":")[0]

    def _load_bindings(self) -> int:
        """The caller's ClusterRoles in the org and its parent; returns the resourceVersion they were read at."""
        if is_master(self.request.user):
            return 0
        rv = 0
        for cluster in filter(None, (self.org, self._parent())):
            try:
                listed = self.shard.list(CLUSTER_ROLE_BINDINGS, cluster, "", ListQuery())
            except errors.NotFound:
                listed = {"metadata": {}, "items": []}
            self.bound[cluster] = BoundRoles(self.request.user, listed["items"])
            rv = max(rv, _rv(listed))
        return rv

    def _open(self, start: int) -> None:
        seconds = int(self.timeout) + 5  # outlive this watch, which ends them
        common = dict(resource_version=str(start), allow_bookmarks=True, timeout_seconds=seconds)
        try:
            self.upstream.append(((_WORKSPACES, self.org), as_watch(
                self.shard.watch(CLUSTER_WORKSPACES, self.org, "", self._selectors(**common)))))
            for cluster in self.bound:
                for gvr in (CLUSTER_ROLES, CLUSTER_ROLE_BINDINGS):
                    self.upstream.append(((gvr.resource, cluster),
                                          as_watch(self.shard.watch(gvr, cluster, "", ListQuery(**common)))))
        except BaseException:
            self._stop()
            raise
        self.progress = {tag: start for tag in self._tags()}

    def _tags(self) -> list[tuple]:
        tags = [(_WORKSPACES, self.org)]
        for cluster in self.bound:
            tags += [(CLUSTER_ROLES.resource, cluster), (CLUSTER_ROLE_BINDINGS.resource, cluster)]
        return tags

    # ------------------------------------------------------------------ the stream

    def _run(self) -> None:
        initial, self.initial = self.initial, []
        events = [WatchEvent("ADDED", projection.to_workspace(obj)) for obj in initial]
        if self.query.send_initial_events:
            events.append(WatchEvent("BOOKMARK", projection.bookmark(self.start_rv, initial_events_end=True)))
        self._emit(events)
        for tag, watch in self.upstream:
            if self.closed:
                return
            watch.start(_Upstream(self, tag))
        if not self.closed:
            self._after(self.timeout)

    def _timer_fired(self) -> None:  # the deadline
        self._end()

    def _stop(self) -> None:
        for _, watch in self.upstream:
            try:
                watch.close()
            except Exception:  # noqa: BLE001 - already finished, or a connection already gone
                pass
        self.pending = []

    def _arrived(self, batch: list[tuple]) -> None:
        """Upstream events (from their producers: must not block): handled in a worker greenlet, together with
        whatever else arrives before it runs."""
        if self.closed:
            return
        if not self.pending:
            self.call_soon(self._process)
        self.pending.extend(batch)

    def _process(self) -> None:
        batch, self.pending = self.pending, []
        out = []
        for event in self._handle(batch):
            if self.closed:
                return
            if event is None:
                self._emit(out)
                self._end()
                return
            out.append(event)
        self._emit(out)

    def _handle(self, batch: list[tuple]) -> Iterator[WatchEvent | None]:
        """Events for the client from one batch of upstream events; None ends the watch."""
        ordered = []
        for tag, event in batch:
            if event is None:
                ordered.append((float("inf"), 1, tag, None))
            elif event.type == "ERROR":
                ordered.append((-1, 0, tag, event))
            else:
                ordered.append((_rv(event.object), 0, tag, event))
        ordered.sort(key=lambda item: (item[0], item[1]))
        recompute_at = 0
        bookmarked = False
        for rv, _, tag, event in ordered:
            if event is None:
                break
            if event.type == "ERROR":
                yield event
                yield None
                return
            self.progress[tag] = max(self.progress.get(tag, 0), rv)
            if event.type == "BOOKMARK":
                bookmarked = bookmarked or tag[0] == _WORKSPACES  # one bookmark per bookmark of the workspaces
                continue
            if event.type not in _OBJECT_EVENTS:
                continue
            kind, cluster = tag
            if kind == _WORKSPACES:
                if recompute_at:
                    yield from self._recompute(recompute_at)
                    recompute_at = 0
                yield from self._workspace_event(event.type, event.object, rv)
            elif self._concerns_caller(kind, cluster, event):
                if rv <= self.rbac_window_until:
                    yield WatchEvent("ERROR", errors.Gone(
                        f"too old resource version: {self.start_rv}: the permissions of the caller in "
                        f"{cluster} changed since").status())
                    yield None
                    return
                recompute_at = rv
        if recompute_at:
            yield from self._recompute(recompute_at)
        if any(event is None for _, _, _, event in ordered):
            yield None
            return
        if bookmarked and self.query.allow_bookmarks:
            self.last_rv = max(self.last_rv, min(self.progress.values()))
            yield WatchEvent("BOOKMARK", projection.bookmark(self.last_rv))

    def _concerns_caller(self, kind: str, cluster: str, event) -> bool:
        bound = self.bound.get(cluster)
        if bound is None:
            return False
        if kind == CLUSTER_ROLE_BINDINGS.resource:
            return bound.binding_event(event.type, event.object)
        return bound.binds(_name(event.object))

    def _label(self, rv: int) -> int:
        self.last_rv = max(rv, self.last_rv)
        return self.last_rv

    def _workspace_event(self, event_type: str, obj: dict, rv: int) -> Iterator[WatchEvent]:
        name = _name(obj)
        uncertain = rv <= self.uncertain_until
        shows = self.view.shows(obj)
        if event_type == "DELETED":
            if self.shown.pop(name, None) is not None or (uncertain and shows):
                yield WatchEvent("DELETED", projection.to_workspace(obj, self._label(rv)))
            return
        if shows:
            known = name in self.shown
            self.shown[name] = obj
            shown_type = event_type if uncertain else ("MODIFIED" if known else "ADDED")
            yield WatchEvent(shown_type, projection.to_workspace(obj, self._label(rv)))
        elif self.shown.pop(name, None) is not None:
            yield WatchEvent("DELETED", projection.to_workspace(obj, self._label(rv)))

    def _recompute(self, rv: int) -> Iterator[WatchEvent]:
        """The view again from a fresh rules review; the difference to what the client holds, as events."""
        names = self.storage.current_names(self.view)
        changed = self.view.names.changed(names)
        self.view = self.view.with_names(names)
        if changed is not None and not changed:
            return
        selective = bool(self.query.label_selector or self.query.field_selector)
        if changed is not None and len(changed) <= NAMED_LOOKUPS and not selective:
            for name in sorted(changed):
                if name not in names:
                    gone = self.shown.pop(name, None)
                    if gone is not None:
                        yield WatchEvent("DELETED", projection.to_workspace(gone, self._label(rv)))
                    continue
                if name in self.shown:
                    continue
                try:
                    obj = self.shard.get(CLUSTER_WORKSPACES, self.org, "", name)
                except errors.NotFound:
                    continue
                if self.view.shows(obj):
                    self.shown[name] = obj
                    yield WatchEvent("ADDED", projection.to_workspace(obj, self._label(rv)))
            return
        try:
            listed = self.shard.list(CLUSTER_WORKSPACES, self.org, "", self._selectors())["items"]
        except errors.NotFound:
            listed = []
        current = {_name(obj): obj for obj in listed}
        for name in sorted(set(current) | set(self.shown)):
            obj = current.get(name)
            now = obj is not None and self.view.shows(obj)
            if now and name not in self.shown:
                self.shown[name] = obj
                yield WatchEvent("ADDED", projection.to_workspace(obj, self._label(rv)))
            elif not now and name in self.shown:
                gone = self.shown.pop(name)
                yield WatchEvent("DELETED", projection.to_workspace(gone, self._label(rv)))
