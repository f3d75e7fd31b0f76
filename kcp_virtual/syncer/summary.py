"""The upstream status of a Deployment run by several sync targets: their statuses, summarized.

Each target's syncer writes the status of *its* share; the view keeps it per target (the annotation
``experimental.status.workload.kcp.dev/<key>``) and the shard's workload-status controller writes
``summarize(...)`` of the current targets into the Deployment's own status:

* one target: its status, promoted unchanged;
* several: ``replicas``, ``updatedReplicas``, ``readyReplicas``, ``availableReplicas`` and
  ``unavailableReplicas`` summed; ``observedGeneration`` the lowest, and only once every target reported
  one (the upstream object is observed as far as all of its targets observed it); ``collisionCount``
  the highest; conditions merged per type: a condition is True only when every target reports it True
  (a target that did not report it counts as Unknown), False when any reports False, else Unknown --
  except ``ReplicaFailure``, which is bad news, so True when any target reports it True. The merged
  condition's reason, message and times are those of the first target (in key order) whose condition
  has the merged status;
* no target has reported yet (or none is left): an empty status.

Statuses are JSON objects as the syncers wrote them; anything else counts as not reported.
"""

from __future__ import annotations

from typing import Iterable

__all__ = ["summarize", "SUMMED", "NEGATIVE_CONDITIONS"]

SUMMED = ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas", "unavailableReplicas")
NEGATIVE_CONDITIONS = frozenset({"ReplicaFailure"})
_RANK = {"True": 0, "Unknown": 1, "False": 2}


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def summarize(statuses: Iterable[dict | None]) -> dict:
    """The upstream status of a Deployment from its targets' statuses, in key order (None: not reported)."""
    statuses = list(statuses)
    reported = [s for s in statuses if isinstance(s, dict)]
    if not reported:
        return {}
    if len(statuses) == 1:
        return reported[0]
    summary: dict = {}
    generations = [_int(s.get("observedGeneration")) for s in reported]
    if len(reported) == len(statuses) and all(g is not None for g in generations):
        summary["observedGeneration"] = min(generations)
    for field in SUMMED:
        values = [v for v in (_int(s.get(field)) for s in reported) if v is not None]
        if values:
            summary[field] = sum(values)
    collisions = [v for v in (_int(s.get("collisionCount")) for s in reported) if v is not None]
    if collisions:
        summary["collisionCount"] = max(collisions)
    conditions = _merged_conditions(statuses)
    if conditions:
        summary["conditions"] = conditions
    return summary


def _conditions_of(status: dict | None) -> dict[str, dict]:
    conditions = status.get("conditions") if isinstance(status, dict) else None
    by_type: dict[str, dict] = {}
    for condition in conditions if isinstance(conditions, list) else ():
        if isinstance(condition, dict) and isinstance(condition.get("type"), str):
            by_type.setdefault(condition["type"], condition)
    return by_type


def _merged_conditions(statuses: list) -> list[dict]:
    per_target = [_conditions_of(s) for s in statuses]
    types: list[str] = []
    for conditions in per_target:
        types += [t for t in conditions if t not in types]
    merged = []
    for condition_type in types:
        values = [conditions.get(condition_type, {}).get("status", "Unknown") for conditions in per_target]
        values = [v if v in _RANK else "Unknown" for v in values]
        if condition_type in NEGATIVE_CONDITIONS:
            status = "True" if "True" in values else ("Unknown" if "Unknown" in values else "False")
        else:
            status = max(values, key=_RANK.__getitem__)
        deciding: dict = {"reason": "NotReported", "message": "not every sync target reported this condition"}
        for conditions, value in zip(per_target, values):
            if value == status and condition_type in conditions:
                deciding = conditions[condition_type]
                break
        merged.append({**deciding, "type": condition_type, "status": status})
    return merged
