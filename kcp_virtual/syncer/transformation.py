"""What one sync target sees of an upstream object, and what its syncer's writes do to it.

``TargetView(key, gvr)`` is the framework ``Transformation`` of one target's storage of one resource.

**To the view** (reads, lists, watch events):

* labels: the target's own ``state.workload.kcp.dev/<key>`` only -- which other targets run the object is
  none of its business, so a label selector on another target's label is decided as if it were absent
  (``hides_label``); annotations: all but the view's own bookkeeping (every target's status and spec
  diff, the placement annotations); finalizers: the target's own syncer finalizer only; no managedFields
  (they name every other target's annotations);
* Deployments: ``spec.replicas`` is the target's share (``splitter.share``);
* then the target's spec diff, if any (``specdiff``), applied to ``spec``;
* ``status`` (Deployments, Namespaces): what this target's syncer last wrote, as it wrote it, or none
  yet -- never the upstream status, which is the summary of all targets (``summary``).

**From the view** (the syncer's writes):

* ``status`` (update or patch of the status subresource): stored per target, in the upstream object's
  annotation ``experimental.status.workload.kcp.dev/<key>`` -- so the write is a write of the whole object,
  not of its status, which the shard's workload-status controller keeps as the summary. A write pinned to
  an older resourceVersion still applies when the target's view of everything but status is unchanged
  since (the same generation and the same ``spec`` as the view shows now): other targets' status reports
  bump the shared object's version all the time, and a syncer should not lose its write to them;
* the object itself (update or patch): the syncer may add or remove its own finalizer
  ``workload.kcp.dev/syncer-<key>`` (it holds the upstream object until the downstream copy is gone) and
  nothing else: a change of ``spec``, of any other field, or of labels, annotations, owner references or
  other finalizers is a 422 naming each field -- the syncer owns status, not spec.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import orjson
import structlog

from kcp_virtual.framework import errors
from kcp_virtual.framework.shardclient import GroupVersionResource
from kcp_virtual.framework.storage import Transformation
from kcp_virtual.framework.virtualworkspace import Context
from kcp_virtual.syncer import specdiff
from kcp_virtual.syncer.placement import (DEPLOYMENTS, NAMESPACES, STATE_LABEL_PREFIX, is_reserved_annotation,
                                          placed_keys, spec_diff_annotation, state_label, status_annotation,
                                          syncer_finalizer)
from kcp_virtual.syncer.splitter import share

__all__ = ["TargetView", "MAX_STATUS_BYTES", "WITH_STATUS", "decoded_status"]

log = structlog.get_logger("kcp.virtual.syncer")

#: The largest status one target may report (its JSON); all annotations of an object together may be 256 KiB.
MAX_STATUS_BYTES = 32 * 1024
#: The synced resources whose status a syncer writes (ConfigMaps and Secrets have none).
WITH_STATUS = frozenset({DEPLOYMENTS, NAMESPACES})
_NOT_COMPARED = frozenset({"metadata", "status", "apiVersion", "kind"})
_COMPARED_META = ("labels", "annotations", "ownerReferences")
_FAILED_DIFFS_KEPT = 1024
_FEW_LABELS = 8          # up to this many labels, computing what targets share is cheaper than remembering it
_PLACEMENTS_KEPT = 1024


@lru_cache(maxsize=8192)
def decoded_status(value: str) -> dict | None:
    """A per-target status annotation (shared, read-only); None when it is not a JSON object."""
    try:
        status = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return status if isinstance(status, dict) else None


class _Placement(NamedTuple):
    """What every target's view of one object version shares: its labels but the state labels, how many state
    labels it has, and the keys it is synced to (``placed_keys``)."""

    common: dict
    state_labels: int
    keys: tuple[str, ...]


def _placement_of(labels: dict) -> _Placement:
    common = {name: value for name, value in labels.items() if not name.startswith(STATE_LABEL_PREFIX)}
    return _Placement(common, len(labels) - len(common), placed_keys(labels))


_placements: dict[tuple, _Placement] = {}


def _placement(meta: dict, labels: dict, own: str) -> _Placement | None:
    """``_placement_of(labels)`` when the object has state labels other than ``own`` (None: it has not, and its view
    keeps its labels). Computed once per object version when it has many labels: a write of an object placed on
    a hundred targets reaches a hundred watchers, each transforming the same labels."""
    if len(labels) <= _FEW_LABELS:
        if any(name.startswith(STATE_LABEL_PREFIX) and name != own for name in labels):
            return _placement_of(labels)
        return None
    version = (meta.get("uid"), meta.get("resourceVersion"))
    found = _placements.get(version)
    if found is None:
        if len(_placements) >= _PLACEMENTS_KEPT:
            _placements.clear()
        found = _placements[version] = _placement_of(labels)
    return found if found.state_labels - (own in labels) else None


def _blank(value) -> bool:
    return value is None or value == {} or value == []


def _same(a, b) -> bool:
    return a == b or (_blank(a) and _blank(b))


def _rv(obj: dict) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class TargetView:
    """The view of target ``key`` of resource ``gvr`` (see the module docstring)."""

    def __init__(self, key: str, gvr: GroupVersionResource):
        self.key = key
        self.gvr = gvr
        self.label = state_label(key)
        self.status_annotation = status_annotation(key)
        self.spec_diff_annotation = spec_diff_annotation(key)
        self.finalizer = syncer_finalizer(key)
        self.splits = gvr == DEPLOYMENTS
        self.has_status = gvr in WITH_STATUS
        self._failed_diffs: set[tuple] = set()

    def transformation(self) -> Transformation:
        return Transformation(to_view=self.to_view, from_view=self.from_view,
                              status_from_view=self.status_from_view if self.has_status else None,
                              hides_label=self.hides_label)

    def hides_label(self, key: str) -> bool:
        """Other targets' state labels: a selector on them must not tell this target where else an object runs."""
        return key.startswith(STATE_LABEL_PREFIX) and key != self.label

    # ------------------------------------------------------------------ to the view

    def to_view(self, stored: dict, context: Context | None = None) -> dict:
        """New dicts only where the view differs (LISTs transform thousands of objects: the shard's are reused)."""
        meta = stored.get("metadata") or {}
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        view_meta = dict(meta)
        view_meta.pop("managedFields", None)
        placement = _placement(meta, labels, self.label)
        if placement is not None:
            own_labels = dict(placement.common)
            if self.label in labels:
                own_labels[self.label] = labels[self.label]
            if own_labels:
                view_meta["labels"] = own_labels
            else:
                view_meta.pop("labels", None)
        if any(map(is_reserved_annotation, annotations)):
            shown = {name: value for name, value in annotations.items() if not is_reserved_annotation(name)}
            if shown:
                view_meta["annotations"] = shown
            else:
                view_meta.pop("annotations", None)
        finalizers = meta.get("finalizers")
        if finalizers and finalizers != [self.finalizer]:
            if self.finalizer in finalizers:
                view_meta["finalizers"] = [self.finalizer]
            else:
                view_meta.pop("finalizers")
        view = dict(stored)
        view["metadata"] = view_meta
        spec = stored.get("spec")
        if isinstance(spec, dict):
            view["spec"] = self._spec(spec, placement.keys if placement is not None else (), annotations, meta)
        if self.has_status:
            reported = annotations.get(self.status_annotation)
            status = decoded_status(reported) if isinstance(reported, str) else None
            if status is None:
                view.pop("status", None)
            else:
                view["status"] = status
        return view

    def _spec(self, spec: dict, keys: tuple[str, ...], annotations: dict, meta: dict) -> dict:
        """``spec`` as the target sees it; ``keys``: the targets it is split among, () when it has no other (its
        share is all of it)."""
        if self.splits and keys:
            replicas = spec.get("replicas", 1)
            if isinstance(replicas, int) and not isinstance(replicas, bool):
                mine = share(replicas, keys, self.key)
                if mine is not None and mine != replicas:
                    spec = {**spec, "replicas": mine}
        diff = annotations.get(self.spec_diff_annotation)
        if diff is None:
            return spec
        try:
            return specdiff.apply(spec, diff)
        except specdiff.SpecDiffError as exc:
            self._report_failed_diff(meta, str(exc))
            return spec

    def _report_failed_diff(self, meta: dict, message: str) -> None:
        """Log a spec diff that does not apply once per object version, not on every read of it."""
        seen = (meta.get("uid"), meta.get("resourceVersion"))
        if seen in self._failed_diffs:
            return
        if len(self._failed_diffs) >= _FAILED_DIFFS_KEPT:
            self._failed_diffs.clear()
        self._failed_diffs.add(seen)
        log.warning("spec diff not applied", sync_target_key=self.key, resource=self.gvr.resource,
                    namespace=meta.get("namespace"), name=meta.get("name"), error=message)

    # ------------------------------------------------------------------ from the view

    def _invalid(self, stored: dict, causes: list[dict]) -> errors.Invalid:
        return errors.Invalid.for_fields(stored.get("kind") or self.gvr.resource, self.gvr.group,
                                         (stored.get("metadata") or {}).get("name", ""), causes)

    def _forbidden(self, field: str) -> dict:
        return {"type": "FieldValueForbidden", "field": field,
                "message": f"Forbidden: a sync target may not change {field}: the upstream object owns it; a "
                           f"syncer writes status (the status subresource) and adds or removes its own finalizer "
                           f"{self.finalizer}"}

    def from_view(self, obj: dict, stored: dict | None, context: Context | None = None) -> dict:
        """The upstream object after the syncer wrote ``obj`` over its view of ``stored``: only its own finalizer
        may have changed (see the module docstring)."""
        if stored is None:
            raise errors.MethodNotAllowed.for_verb("create", self.gvr.resource)
        view = self.to_view(stored)
        causes = [self._forbidden(field) for field in sorted((view.keys() | obj.keys()) - _NOT_COMPARED)
                  if not _same(view.get(field), obj.get(field))]
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        view_meta = view["metadata"]
        causes += [self._forbidden(f"metadata.{field}") for field in _COMPARED_META
                   if not _same(view_meta.get(field), meta.get(field))]
        wanted = meta.get("finalizers") or []
        if not isinstance(wanted, list) or any(f != self.finalizer for f in wanted):
            causes.append(self._forbidden("metadata.finalizers"))
        if causes:
            raise self._invalid(stored, causes)
        stored_meta = stored["metadata"]
        finalizers = [f for f in stored_meta.get("finalizers") or () if f != self.finalizer]
        if self.finalizer in wanted:
            finalizers.append(self.finalizer)
        new_meta = {**stored_meta, "resourceVersion": _rv(obj)}
        if finalizers:
            new_meta["finalizers"] = finalizers
        else:
            new_meta.pop("finalizers", None)
        return {**stored, "metadata": new_meta}

    def status_from_view(self, obj: dict, stored: dict, context: Context | None = None) -> dict:
        """The upstream object with ``obj``'s status kept as this target's report (a write of the whole object)."""
        status = obj.get("status")
        if status is not None and not isinstance(status, dict):
            raise self._invalid(stored, [{"type": "FieldValueTypeInvalid", "field": "status",
                                          "message": "Invalid value: the status must be an object"}])
        stored_meta = stored["metadata"]
        annotations = dict(stored_meta.get("annotations") or {})
        if status is None:
            annotations.pop(self.status_annotation, None)
        else:
            encoded = orjson.dumps(status).decode()
            if len(encoded) > MAX_STATUS_BYTES:
                raise self._invalid(stored, [{"type": "FieldValueTooLong", "field": "status",
                                              "message": f"Too long: the status of one sync target may be at most "
                                                         f"{MAX_STATUS_BYTES} bytes of JSON, not {len(encoded)}"}])
            annotations[self.status_annotation] = encoded
        return {**stored, "metadata": {**stored_meta, "annotations": annotations,
                                       "resourceVersion": self._status_version(obj, stored)}}

    def _status_version(self, obj: dict, stored: dict) -> str:
        """The version a status write is pinned to: the caller's, or the current one when only other targets
        (or the summary) wrote since -- the target's view but for status is what the caller saw."""
        asked, current = _rv(obj), _rv(stored)
        if not asked or asked == current:
            return asked
        view = self.to_view(stored)
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        if meta.get("generation") == view["metadata"].get("generation") and obj.get("spec") == view.get("spec"):
            return current
        return asked
