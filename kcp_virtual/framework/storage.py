"""The storage behind a resource of a resource virtual workspace: the shard's objects, seen through a view.

``ForwardingStorage`` reads and writes one resource of the shard through a ``ShardClient`` and
narrows it to a view (kcp's ``forwardingregistry`` with its wrappers):

* **label restriction**: only objects carrying all of ``labels`` exist in the view. The shard
  filters lists and watches (so an object that loses a label reaches a watcher as DELETED, one
  that gains it as ADDED); a get, update, patch or delete of an object outside the view is a 404;
  creates and updates get the labels when they lack them and are refused (422) when they set
  another value, so a write never produces an object its writer cannot see.
* **field restriction**: ``fields`` (e.g. ``{"type": "kubernetes.io/tls"}`` for Secrets) narrow the view
  the same way through the shard's field selectors, for reads (a view restricted by fields is read-only:
  a write could move an object out of it). Such views read live, never from an informer.
* **identity**: the ``GroupVersionResource`` may name an APIExport identity, and ``act_as``
  chooses whose permissions the shard applies: the virtual workspace's own (privileged, the
  default) or the caller's.
* **transformation** (optional): objects are rewritten on the way out (reads and watch events)
  and on the way in (writes), e.g. the syncer's per-target view of a Deployment.

**Reads from a cache.** A get or list acting as the virtual workspace itself may be answered by the
shard client's informer of the view (``ShardClient.informer(gvr, selector)``, the remote client's),
but only for a request the shard vouched for (``Request.fresh_as_of``) and only when the informer has
seen everything up to then: the answer is then the one the shard would have given (a read with
resourceVersion "" must be most recent). A miss is not answered from the cache: the shard says
whether the object or its whole logical cluster is missing, and those are different 404s. Lists come
from the cache only when the shard would answer the whole resource (no selectors of the caller's, no
``continue``, no ``limit`` unless resourceVersion is "0", which kube serves whole from its cache).
Watches too, under the same conditions, when the caller sets no selector and no ``sendInitialEvents``:
then the informer streams them (``Informer.watch``), so they cost the shard nothing; whatever it cannot
answer exactly as the shard would (a resourceVersion outside its history...) is watched live.
Writes always read live.

``verbs`` is what the storage offers, and therefore exactly what discovery advertises; the
resource handler answers 405 for anything else. Writes check the view and then write pinned to
the resourceVersion they checked, retrying when the object moved underneath, so a concurrent
relabel cannot let a write reach an object outside the view.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping

import gevent
import jsonpatch
import jsonpointer
import orjson

from kcp_virtual.framework import errors, labelselector
from kcp_virtual.framework.negotiation import APPLY_PATCH, JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH
from kcp_virtual.framework.shardclient import GroupVersionResource, ListQuery, NotFresh, ShardClient, WatchEvent
from kcp_virtual.framework.virtualworkspace import Context, Request
from kcp_virtual.framework.watchstream import Watch, as_watch

__all__ = ["ForwardingStorage", "Transformation", "ALL_VERBS", "READ_VERBS", "as_virtual_workspace", "as_caller"]

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
READ_VERBS = ("get", "list", "watch")
SUBRESOURCE_VERBS = ("get", "patch", "update")
_WRITE_ATTEMPTS = 16
_RETRY_PAUSE = 0.001            # after the second conflict in a row, doubled each time (jittered) ...
_RETRY_PAUSE_MAX = 0.1          # ... up to this: writers of one hot object spread out instead of colliding
_OBJECT_EVENTS = ("ADDED", "MODIFIED", "DELETED")


def as_virtual_workspace(request: Request) -> None:
    """Act with the virtual workspace's own identity: its authorizer was the gate."""
    return None


def as_caller(request: Request) -> Any:
    """Act as the caller: the shard applies the caller's own permissions as well."""
    return request.user


@dataclass(frozen=True)
class Transformation:
    """Rewrites objects between the shard and the view. No function may change its arguments.

    ``to_view(stored, context)`` for objects read and watched; ``from_view(obj, stored, context)`` for
    objects written, where ``stored`` is the current stored object (None on create). A read-only view
    (``verbs`` within ``READ_VERBS``) needs no ``from_view``.

    ``status_from_view(obj, stored, context)``, optional, is for views whose ``status`` is not the stored
    object's status (the syncer view shows each sync target the status it reported, kept in an annotation):
    a write of the view's status subresource then becomes the object it returns, written as the whole object
    -- not to the shard's status subresource, which would drop anything but status. Without it a status write
    is mapped by ``from_view`` and written to the shard's status.

    The object a write function returns keeps the caller's ``metadata.resourceVersion`` (its optimistic lock:
    a conflict is the caller's 409), or carries the stored one when the function judged the caller's older
    version as good as the current one for this view (the write is then retried on a conflict, like a write
    the caller did not pin).
    """

    to_view: Callable[[dict, Context], dict]
    from_view: Callable[[dict, "dict | None", Context], dict] | None = None
    status_from_view: Callable[[dict, dict, Context], dict] | None = None
    #: Label keys ``to_view`` never shows: a caller's label selector is decided for them as if they were absent
    #: (``labelselector.deciding_hidden``), since the shard selects on the stored labels.
    hides_label: Callable[[str], bool] | None = None

    def write(self, obj: dict, stored: dict, context: Context, subresource: str) -> tuple[dict, str]:
        """``(object to store, subresource to write it to)`` for a write of ``obj`` to the view's ``subresource``."""
        _object_shaped(obj)
        if subresource == "status" and self.status_from_view is not None:
            return self.status_from_view(obj, stored, context), ""
        return self.from_view(obj, stored, context), subresource


def _object_shaped(obj) -> None:
    """A 400 for what kube could not even decode as an object (a ``metadata`` that is no object, say): the
    transformations, which read it, are only given objects."""
    if not isinstance(obj, dict):
        raise errors.BadRequest(f"the object is not an object but {type(obj).__name__}")
    meta = obj.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise errors.BadRequest(f"the object's metadata is not an object but {type(meta).__name__}")


def _attempts():
    """The attempts of a write that re-reads and retries on a conflict, pausing (jittered, growing) between them
    once it conflicted twice: many writers of one object (sync targets reporting status on a shared Deployment)
    then take turns instead of invalidating each other's reads."""
    pause = _RETRY_PAUSE
    for attempt in range(_WRITE_ATTEMPTS):
        if attempt >= 2:
            gevent.sleep(random.uniform(0, pause))
            pause = min(pause * 2, _RETRY_PAUSE_MAX)
        yield attempt


def _rv(obj: dict) -> str:
    meta = obj.get("metadata")
    return str(meta.get("resourceVersion") or "") if isinstance(meta, dict) else ""


def _with_rv(obj: dict, rv: str) -> dict:
    """``obj`` pinned to ``rv``; a malformed one is left for the shard to refuse (400)."""
    meta = obj.get("metadata", {})
    if not isinstance(meta, dict):
        return obj
    return {**obj, "metadata": {**meta, "resourceVersion": rv}}


class ForwardingStorage:
    """One resource of the shard behind a view; see the module docstring."""

    def __init__(self, shard: ShardClient, gvr: GroupVersionResource, *, labels: Mapping[str, str] | None = None,
                 fields: Mapping[str, str] | None = None,
                 transform: Transformation | None = None, verbs: Iterable[str] = ALL_VERBS,
                 subresources: Mapping[str, Iterable[str]] | None = None,
                 act_as: Callable[[Request], Any] = as_virtual_workspace):
        self.shard = shard
        self.gvr = gvr
        self.labels = dict(labels or {})
        self.selector = ",".join(f"{k}={v}" for k, v in self.labels.items())
        self.fields = dict(fields or {})
        self.field_selector = ",".join(f"{k}={v}" for k, v in self.fields.items())
        self.transform = transform
        self.verbs = frozenset(verbs)
        unknown = self.verbs - set(ALL_VERBS)
        if unknown:
            raise ValueError(f"unsupported verbs {sorted(unknown)}")
        self.subresources = {name: frozenset(sub_verbs) for name, sub_verbs in (subresources or {}).items()}
        for name, sub_verbs in self.subresources.items():
            if name != "status" or not sub_verbs <= set(SUBRESOURCE_VERBS):
                raise ValueError(f"unsupported subresource {name} {sorted(sub_verbs)}: only status with "
                                 f"{', '.join(SUBRESOURCE_VERBS)}")
        writes = sorted((self.verbs - set(READ_VERBS)) | {f"{name} {verb}" for name, sub_verbs in
                                                          self.subresources.items() for verb in sub_verbs - {"get"}})
        if self.fields and writes:
            raise ValueError(f"a view restricted by fields is read-only: {writes}")
        if transform is not None and transform.from_view is None and writes:
            raise ValueError(f"a transformation without from_view makes the view read-only: {writes}")
        self.act_as = act_as
        self._restricted = bool(self.fields or self.labels)

    # ------------------------------------------------------------------ the view

    def in_view(self, obj: dict) -> bool:
        for path, value in self.fields.items():
            if _field(obj, path) != value:
                return False
        if not self.labels:
            return True
        labels = (obj.get("metadata") or {}).get("labels") or {}
        for key, value in self.labels.items():
            if labels.get(key) != value:
                return False
        return True

    def _narrow(self, query: ListQuery) -> ListQuery:
        """``query`` restricted to the view: the shard filters lists and watches by the view's selectors."""
        hides = self.transform.hides_label if self.transform is not None else None
        if hides is not None and query.label_selector:
            query = replace(query, label_selector=labelselector.deciding_hidden(query.label_selector, hides))
        return query.restricted(self.selector, self.field_selector)

    def _out(self, obj: dict, request: Request) -> dict:
        return obj if self.transform is None else self.transform.to_view(obj, request.context)

    def _not_found(self, name: str) -> errors.NotFound:
        return errors.NotFound.for_resource(self.gvr.resource, self.gvr.group, name)

    def _admit(self, obj: dict) -> dict:
        """``obj`` carrying the view's labels (added when missing); another value for one of them is a 422."""
        if not self.labels or not isinstance(obj, dict):
            return obj
        meta = obj.get("metadata")
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            return obj  # the shard answers the 400 for a malformed object
        labels = meta.get("labels") or {}
        if not isinstance(labels, dict):
            return obj
        causes = [{"type": "FieldValueInvalid", "field": f"metadata.labels[{key}]",
                   "message": f'Invalid value: "{labels[key]}": must be "{value}": objects of this virtual '
                              f"workspace carry {self.selector}"}
                  for key, value in self.labels.items() if key in labels and labels[key] != value]
        if causes:
            raise errors.Invalid.for_fields(obj.get("kind") or self.gvr.resource, self.gvr.group,
                                            meta.get("name") or meta.get("generateName") or "", causes)
        if all(key in labels for key in self.labels):
            return obj
        return {**obj, "metadata": {**meta, "labels": {**labels, **self.labels}}}

    def _current(self, request: Request, namespace: str, name: str) -> dict:
        obj = self.shard.get(self.gvr, request.context.cluster, namespace, name, user=self.act_as(request))
        if self._restricted and not self.in_view(obj):
            raise self._not_found(name)
        return obj

    def _stored(self, request: Request, namespace: str, name: str) -> dict | None:
        """The stored object, or None when the shard has none (as opposed to one outside the view)."""
        try:
            return self.shard.get(self.gvr, request.context.cluster, namespace, name, user=self.act_as(request))
        except errors.NotFound as exc:
            details = exc.details or {}
            if details.get("name") != name or details.get("kind") != self.gvr.resource:
                raise  # not the object: its logical cluster, or the resource itself
            return None

    # ------------------------------------------------------------------ reads

    def get(self, request: Request, namespace: str, name: str) -> dict:
        obj = None
        if request.fresh_as_of is not None:  # else only the shard may answer (see _cached): ask it straight away
            obj = self._cached(request, lambda informer: informer.get(request.context.cluster, namespace, name,
                                                                      request.fresh_as_of))
        if obj is None or not self.in_view(obj):
            obj = self._current(request, namespace, name)
        return self._out(obj, request)

    def list(self, request: Request, namespace: str, query: ListQuery, *, encoded: bool = False) -> dict:
        """The view's list. With ``encoded`` (the caller sends it as JSON) a transformed view's items are
        ``orjson.Fragment``s, each view serialized as soon as it is made: thousands of transformed objects then
        never live at once, so they are not promoted to the collector's oldest generation, whose full
        collections over every stored object would stall the whole process."""
        result = None
        if _whole(query):
            result = self._cached(request, lambda informer: informer.list(request.context.cluster, namespace,
                                                                          request.fresh_as_of))
        if result is None:
            result = self.shard.list(self.gvr, request.context.cluster, namespace, self._narrow(query),
                                     user=self.act_as(request))
        if self.transform is None:
            return result
        to_view, context = self.transform.to_view, request.context
        if encoded:
            dumps, fragment = orjson.dumps, orjson.Fragment
            return {**result, "items": [fragment(dumps(to_view(item, context))) for item in result["items"]]}
        return {**result, "items": [to_view(item, context) for item in result["items"]]}

    def _cached(self, request: Request, read: Callable[[Any], Any]) -> Any:
        """``read(informer)`` when the shard client has an informer of this view and the request may be answered
        from it (see the module docstring); None: read live. The first use starts the informer."""
        if request.fresh_as_of is None or self.act_as(request) is not None or self.fields:
            return None
        informer_of = getattr(self.shard, "informer", None)
        informer = informer_of(self.gvr, self.selector) if informer_of is not None else None
        if informer is None:
            return None
        try:
            return read(informer)
        except NotFresh:
            return None

    def watch(self, request: Request, namespace: str, query: ListQuery) -> Watch:
        """The view's watch: the informer's or the shard's, through ``to_view`` when the view transforms
        (``Watch.map``: events are rewritten as they are delivered; no greenlet waits through the watch)."""
        watch = None
        if _cacheable_watch(query):
            watch = self._cached(request, lambda informer: informer.watch(
                request.context.cluster, namespace, query.resource_version, request.fresh_as_of,
                allow_bookmarks=query.allow_bookmarks, timeout_seconds=query.timeout_seconds))
        if watch is None:
            watch = self.shard.watch(self.gvr, request.context.cluster, namespace, self._narrow(query),
                                     user=self.act_as(request))
        watch = as_watch(watch)
        if self.transform is None:
            return watch
        to_view, context = self.transform.to_view, request.context

        def transformed(event):
            if event.type in _OBJECT_EVENTS:
                return WatchEvent(event.type, to_view(event.object, context))
            return event

        return watch.map(transformed)

    # ------------------------------------------------------------------ writes

    def create(self, request: Request, namespace: str, body: dict, *, dry_run: bool = False) -> dict:
        obj = self._admit(body)
        if self.transform is not None:
            _object_shaped(obj)
            obj = self.transform.from_view(obj, None, request.context)
        created = self.shard.create(self.gvr, request.context.cluster, namespace, obj, dry_run=dry_run,
                                    user=self.act_as(request))
        return self._out(created, request)

    def update(self, request: Request, namespace: str, name: str, body: dict, *, subresource: str = "",
               dry_run: bool = False) -> dict:
        cluster, user = request.context.cluster, self.act_as(request)
        asked = _rv(body) if isinstance(body, dict) else ""
        for _ in _attempts():
            current = self._current(request, namespace, name)
            stale = bool(asked) and asked != _rv(current)
            try:
                obj = body if subresource else self._admit(body)  # a status write leaves labels alone
                written = subresource
                if self.transform is not None:
                    obj, written = self.transform.write(obj, current, request.context, subresource)
            except (errors.Invalid, errors.Forbidden):
                if stale:  # optimistic locking first, as the apiserver does: judged against a newer object,
                    raise errors.Conflict.modified(self.gvr.resource, self.gvr.group, name) from None
                raise      # a stale write is a 409, whatever the view says of it
            if not asked:
                obj = _with_rv(obj, _rv(current))
            elif _rv(obj) == asked != _rv(current):
                raise errors.Conflict.modified(self.gvr.resource, self.gvr.group, name)  # the caller's lock
            try:
                updated = self.shard.update(self.gvr, cluster, namespace, name, obj, subresource=written,
                                            dry_run=dry_run, user=user)
            except errors.Conflict:
                continue  # changed since we read it: read it again (a stale lock of the caller's is a 409 then)
            return self._out(updated, request)
        raise errors.Conflict.modified(self.gvr.resource, self.gvr.group, name)

    def patch(self, request: Request, namespace: str, name: str, patch_type: str, patch: Any, *,
              subresource: str = "", dry_run: bool = False) -> dict:
        """Get (through the view), patch, update pinned to what was checked; retried when the object moved.

        Without a transformation the shard applies the patch (a dry run), so every patch type it
        supports works here too; with one, the patch applies to the transformed object, here.
        """
        cluster, user = request.context.cluster, self.act_as(request)
        for _ in _attempts():
            current = self._stored(request, namespace, name)
            if current is None and patch_type == APPLY_PATCH and not subresource and self.transform is None:
                return self._create_by_apply(request, namespace, name, patch, dry_run)
            if current is None or not self.in_view(current):
                raise self._not_found(name)
            if self.transform is None:
                patched = self.shard.patch(self.gvr, cluster, namespace, name, patch_type, patch,
                                           subresource=subresource, dry_run=True, user=user,
                                           **_apply_options(request, patch_type))
            else:
                patched = apply_patch(self.transform.to_view(current, request.context), patch_type, patch)
                if _rv(patched) != _rv(current):  # the patch pinned another version: optimistic locking
                    raise errors.Conflict.modified(self.gvr.resource, self.gvr.group, name)
            if not subresource:
                patched = self._admit(patched)
            written = subresource
            if self.transform is not None:
                patched, written = self.transform.write(patched, current, request.context, subresource)
            patched = _with_rv(patched, _rv(current))
            try:
                updated = self.shard.update(self.gvr, cluster, namespace, name, patched, subresource=written,
                                            dry_run=dry_run, user=user)
            except errors.Conflict:
                continue
            return self._out(updated, request)
        raise errors.Conflict.modified(self.gvr.resource, self.gvr.group, name)

    def _create_by_apply(self, request: Request, namespace: str, name: str, patch: Any, dry_run: bool) -> dict:
        """Server-side apply of an object that does not exist creates it: the shard computes it (a dry run),
        and it is created through the view like any other."""
        cluster, user = request.context.cluster, self.act_as(request)
        obj = self.shard.patch(self.gvr, cluster, namespace, name, APPLY_PATCH, patch, dry_run=True, user=user,
                               **_apply_options(request, APPLY_PATCH))
        created = self.shard.create(self.gvr, cluster, namespace, self._admit(obj), dry_run=dry_run, user=user)
        return self._out(created, request)

    def delete(self, request: Request, namespace: str, name: str, options: dict | None = None) -> dict:
        options = dict(options or {})
        given = dict(options.get("preconditions") or {})
        for _ in _attempts():
            current = self._current(request, namespace, name)
            meta = current["metadata"]
            preconditions = {"uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion"), **given}
            try:
                result = self.shard.delete(self.gvr, request.context.cluster, namespace, name,
                                           options={**options, "preconditions": preconditions},
                                           user=self.act_as(request))
            except errors.Conflict:
                if given:
                    raise
                continue
            return result if result.get("kind") == "Status" else self._out(result, request)
        raise errors.Conflict.modified(self.gvr.resource, self.gvr.group, name)

    def delete_collection(self, request: Request, namespace: str, query: ListQuery,
                          options: dict | None = None) -> dict:
        """Delete what a list of the view returns (as the apiserver does), each pinned to its listed version."""
        cluster, user = request.context.cluster, self.act_as(request)
        listed = self.shard.list(self.gvr, cluster, namespace, self._narrow(query), user=user)
        deleted = []
        for obj in listed["items"]:
            meta = obj["metadata"]
            pinned = {**(options or {}), "preconditions": {"uid": meta.get("uid"),
                                                           "resourceVersion": meta.get("resourceVersion")}}
            try:
                result = self.shard.delete(self.gvr, cluster, meta.get("namespace", ""), meta["name"],
                                           options=pinned, user=user)
            except (errors.NotFound, errors.Conflict):
                continue  # gone or changed meanwhile: no longer what was listed
            deleted.append(self._out(obj if result.get("kind") == "Status" else result, request))
        return {"kind": listed["kind"], "apiVersion": listed["apiVersion"],
                "metadata": {"resourceVersion": listed["metadata"].get("resourceVersion", "")}, "items": deleted}


def _field(obj: dict, path: str) -> Any:
    """The value at a field selector's dotted path (``type``, ``metadata.name``, ``spec.nodeName``)."""
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else value


def _whole(query: ListQuery) -> bool:
    """Whether the shard would answer ``query`` with the whole resource at its current state (a cache can then)."""
    if query.label_selector or query.field_selector or query.continue_token:
        return False
    if query.resource_version == "0":
        return True  # kube ignores limit (and the match) for "0": served whole from its watch cache
    return not (query.resource_version or query.resource_version_match or query.limit)


def _cacheable_watch(query: ListQuery) -> bool:
    """Whether an informer of the view may serve this watch: no selector of the caller's, no watch-list
    (``sendInitialEvents``) and no progress notifications (the shard ignores ``limit`` and ``continue``)."""
    return not (query.label_selector or query.field_selector or query.send_initial_events is not None
                or query.progress_notify)


def _apply_options(request: Request, patch_type: str) -> dict:
    """The caller's server-side apply options (``fieldManager``, ``force``) for the shard's apply."""
    if patch_type != APPLY_PATCH:
        return {}
    args = request.http.args
    return {"field_manager": args.get("fieldManager", ""), "force": args.get("force", "").lower() == "true"}


# ---------------------------------------------------------------------- patches of transformed objects

def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386; returns a new document."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _has_list_or_directive(value: Any) -> bool:
    if isinstance(value, list):
        return True
    if isinstance(value, dict):
        return any(k.startswith("$") or _has_list_or_directive(v) for k, v in value.items())
    return False


def apply_patch(document: dict, patch_type: str, patch: Any, *, strategic_as_merge: bool = False,
                who: str = "this virtual workspace transforms objects, so it") -> dict:
    """Apply a merge or JSON patch to ``document`` (a view's object) without the shard.

    Strategic merge patches are accepted as merge patches when they hold no lists or ``$`` directives
    (the same document then), or always with ``strategic_as_merge`` (views whose mutable fields have
    no lists). Anything else is a 415 naming ``who`` applies patches itself.
    """
    if patch_type == MERGE_PATCH or (patch_type == STRATEGIC_MERGE_PATCH and (
            strategic_as_merge or not _has_list_or_directive(patch))):
        if not isinstance(patch, dict):
            raise errors.BadRequest("a merge patch must be a JSON object")
        result = _merge_patch(document, patch)
    elif patch_type == JSON_PATCH:
        if not isinstance(patch, list):
            raise errors.BadRequest("a JSON patch must be a JSON array of operations")
        try:
            result = jsonpatch.JsonPatch(patch).apply(document)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise errors.Invalid(f"the JSON patch test failed: {exc}") from None
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, KeyError, IndexError,
                TypeError) as exc:
            reason = str(exc).split(" in {", 1)[0]  # jsonpointer appends the whole document
            raise errors.Invalid(f"the JSON patch cannot be applied: {reason}") from None
    else:
        allowed = STRATEGIC_MERGE_PATCH if strategic_as_merge else f"{STRATEGIC_MERGE_PATCH} (without lists or directives)"
        raise errors.UnsupportedMediaType(
            f"{who} applies patches itself; accepted media types include: {JSON_PATCH}, {MERGE_PATCH}, {allowed}")
    if not isinstance(result, dict) or not isinstance(result.get("metadata", {}), dict):
        raise errors.BadRequest("the patched object is not a valid JSON object")
    return result
