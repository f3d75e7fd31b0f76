"""What an initializer is, and how the shard marks the workspaces that wait for one.

* **name**: ``<WorkspaceType workspace path>:<WorkspaceType name>``, e.g. ``root:org:database`` (kcp's
  ``InitializerForType``): the workspace part is what makes names unique, so a type of the same name in
  another workspace is another initializer altogether (kcp#1169). ``parse`` splits it at the last ``:``.
* **labels**: on every write of a ClusterWorkspace (its status subresource's included) the shard sets
  ``internal.kcp.dev/phase=<status.phase>`` and, for each name in ``status.initializers``,
  ``initializer.internal.kcp.dev/<sha224 hex, 32 characters>=<sha224 hex>``, and drops any other label under
  these keys -- a client can neither forge nor remove them. The view selects on both, so the shard filters
  lists and watches and a workspace that loses either label leaves the view (DELETED).
* **group**: ``system:kcp:initializer:<name>`` (``kcp_virtual.framework.authorization.initializer_group``).

The shard imports this module for the labels, so there is one definition of them.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

from kcp_virtual.framework import errors
from kcp_virtual.framework.virtualworkspace import is_cluster_name

__all__ = ["PHASE_LABEL", "INITIALIZER_LABEL_PREFIX", "INITIALIZING", "Initializer", "parse", "initializer_name",
           "initializer_label", "derived_labels", "is_derived_label"]

PHASE_LABEL = "internal.kcp.dev/phase"
INITIALIZER_LABEL_PREFIX = "initializer.internal.kcp.dev/"
INITIALIZING = "Initializing"
_TYPE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_KEY_HASH_LENGTH = 32


class Initializer(NamedTuple):
    """A parsed initializer name: the WorkspaceType ``type_name`` in workspace ``type_cluster``."""

    name: str
    type_cluster: str
    type_name: str


def initializer_name(type_cluster: str, type_name: str) -> str:
    """The initializer of WorkspaceType ``type_name`` in ``type_cluster``."""
    return f"{type_cluster}:{type_name}"


def parse(name: str) -> Initializer:
    """``root:org:database`` -> (``root:org``, ``database``); anything else is a 400 saying what is expected."""
    type_cluster, _, type_name = name.rpartition(":")
    if (not is_cluster_name(type_cluster) or len(type_name) > 63 or not _TYPE_NAME.fullmatch(type_name)):
        shown = name if len(name) <= 120 else name[:120] + "..."
        raise errors.BadRequest(f'invalid initializer "{shown}": expected <workspace path>:<WorkspaceType name>, '
                                'such as root:org:my-type (the workspace of the WorkspaceType and its name)')
    return Initializer(name, type_cluster, type_name)


def initializer_label(name: str) -> tuple[str, str]:
    """The label the shard puts on a ClusterWorkspace while ``name`` is in its ``status.initializers``."""
    digest = hashlib.sha224(name.encode()).hexdigest()
    return INITIALIZER_LABEL_PREFIX + digest[:_KEY_HASH_LENGTH], digest


def is_derived_label(key: str) -> bool:
    return key == PHASE_LABEL or key.startswith(INITIALIZER_LABEL_PREFIX)


def derived_labels(status) -> dict[str, str]:
    """The labels a ClusterWorkspace with this ``status`` carries (a malformed status gives what it can)."""
    if not isinstance(status, dict):
        return {}
    labels = {}
    phase = status.get("phase")
    if isinstance(phase, str) and phase:
        labels[PHASE_LABEL] = phase
    initializers = status.get("initializers")
    for name in initializers if isinstance(initializers, list) else ():
        if isinstance(name, str) and name:
            key, value = initializer_label(name)
            labels[key] = value
    return labels
