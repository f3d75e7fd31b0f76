"""How objects are placed on sync targets: the target's key, and the labels, annotations and finalizer that carry it.

A SyncTarget ``<name>`` in logical cluster ``<cluster>`` is known to workloads by its **key**,
``sync_target_key(cluster, name)``: the base-62 sha224 of ``<cluster>:<name>``, exactly as kcp computes
it (``workloadv1alpha1.ToSyncTargetKey``), 38 characters that fit a label name. The shard puts it in the
SyncTarget's label ``internal.workload.kcp.dev/key``. An object of any workspace is placed on the target
by the label ``state.workload.kcp.dev/<key>: Sync``; everything the syncer view keeps about one target
on the shared upstream object is named after the key too:

* ``experimental.status.workload.kcp.dev/<key>``: the status that target's syncer wrote (JSON);
* ``experimental.spec-diff.workload.kcp.dev/<key>``: a JSON patch of ``spec`` for that target only;
* finalizer ``workload.kcp.dev/syncer-<key>``: the target's syncer holds the upstream object until it
  cleaned up downstream.

A Namespace's ``workload.kcp.dev/placement`` annotation names targets declaratively (``parse_placement``);
a controller of the shard turns it into the state labels of the namespace and its workloads.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

from kcp_virtual.framework.shardclient import GroupVersionResource

__all__ = ["GROUP", "VERSION", "SYNC_TARGETS", "KEY_LABEL", "STATE_LABEL_PREFIX", "SYNC", "STATUS_ANNOTATION_PREFIX",
           "SPEC_DIFF_ANNOTATION_PREFIX", "SYNCER_FINALIZER_PREFIX", "PLACEMENT_ANNOTATION", "PLACED_ANNOTATION",
           "DEPLOYMENTS", "CONFIGMAPS", "SECRETS", "NAMESPACES", "SYNCED_RESOURCES", "sync_target_key", "state_label",
           "status_annotation", "spec_diff_annotation", "syncer_finalizer", "placed_keys", "parse_placement",
           "PlacementError", "is_reserved_annotation"]

GROUP, VERSION = "workload.kcp.dev", "v1alpha1"
SYNC_TARGETS = GroupVersionResource(GROUP, VERSION, "synctargets")

KEY_LABEL = "internal.workload.kcp.dev/key"
STATE_LABEL_PREFIX = "state.workload.kcp.dev/"
SYNC = "Sync"
STATUS_ANNOTATION_PREFIX = "experimental.status.workload.kcp.dev/"
SPEC_DIFF_ANNOTATION_PREFIX = "experimental.spec-diff.workload.kcp.dev/"
SYNCER_FINALIZER_PREFIX = "workload.kcp.dev/syncer-"
#: On a Namespace: the SyncTargets its workloads run on, ``name`` or ``<workspace path>/name``, comma-separated.
PLACEMENT_ANNOTATION = "workload.kcp.dev/placement"
#: On a Namespace: the keys the placement controller last applied (so that it can take back what it placed).
PLACED_ANNOTATION = "internal.workload.kcp.dev/placed"
_INTERNAL_PREFIX = "internal.workload.kcp.dev/"

DEPLOYMENTS = GroupVersionResource("apps", "v1", "deployments")
CONFIGMAPS = GroupVersionResource("", "v1", "configmaps")
SECRETS = GroupVersionResource("", "v1", "secrets")
NAMESPACES = GroupVersionResource("", "v1", "namespaces")
#: What every SyncTarget syncs (pods and endpoints never: they are the physical cluster's own).
SYNCED_RESOURCES = (DEPLOYMENTS, CONFIGMAPS, SECRETS, NAMESPACES)

_BASE62 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_CLUSTER = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(:[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@lru_cache(maxsize=4096)
def sync_target_key(cluster: str, name: str) -> str:
    """kcp's ``ToSyncTargetKey``: sha224 of ``<cluster>:<name>`` as a base-62 number (Go's ``big.Int.Text(62)``)."""
    number = int.from_bytes(hashlib.sha224(f"{cluster}:{name}".encode()).digest(), "big")
    digits = []
    while number:
        number, digit = divmod(number, 62)
        digits.append(_BASE62[digit])
    return "".join(reversed(digits)) or "0"


def state_label(key: str) -> str:
    return STATE_LABEL_PREFIX + key


def status_annotation(key: str) -> str:
    return STATUS_ANNOTATION_PREFIX + key


def spec_diff_annotation(key: str) -> str:
    return SPEC_DIFF_ANNOTATION_PREFIX + key


def syncer_finalizer(key: str) -> str:
    return SYNCER_FINALIZER_PREFIX + key


def placed_keys(labels) -> tuple[str, ...]:
    """The keys of the targets an object is synced to (label value ``Sync``), in the splitter's stable order."""
    if not labels:
        return ()
    start = len(STATE_LABEL_PREFIX)
    return tuple(sorted(name[start:] for name, value in labels.items()
                        if value == SYNC and name.startswith(STATE_LABEL_PREFIX)))


_RESERVED_PREFIXES = (STATUS_ANNOTATION_PREFIX, SPEC_DIFF_ANNOTATION_PREFIX, _INTERNAL_PREFIX)


def is_reserved_annotation(name: str) -> bool:
    """Annotations the syncer view keeps to itself (every target's status and spec diff, placement bookkeeping)."""
    return name.startswith(_RESERVED_PREFIXES) or name == PLACEMENT_ANNOTATION


class PlacementError(ValueError):
    """A placement annotation that names no SyncTarget the way ``parse_placement`` reads it."""


def parse_placement(value: str, cluster: str) -> tuple[tuple[str, str], ...]:
    """``(workspace, name)`` of each SyncTarget a Namespace's placement annotation names, in its order.

    Entries are comma-separated: ``name`` is a SyncTarget of the Namespace's own workspace ``cluster``,
    ``root:compute/name`` one of workspace ``root:compute``. Blanks around entries are ignored; an empty
    value places nothing.
    """
    if not isinstance(value, str):
        raise PlacementError("must be a string")
    targets: list[tuple[str, str]] = []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry:
            continue
        workspace, slash, name = entry.rpartition("/")
        if not slash:
            workspace = cluster
        elif not _CLUSTER.fullmatch(workspace):
            raise PlacementError(f'"{entry}": "{workspace}" is not a workspace path such as root:compute')
        if len(name) > 253 or not _NAME.fullmatch(name):
            raise PlacementError(f'"{entry}": "{name}" is not a SyncTarget name (a DNS-1123 subdomain)')
        if (workspace, name) not in targets:
            targets.append((workspace, name))
    return tuple(targets)
