"""One module per server the oracle checks: the shard itself and each virtual workspace.

A view turns a caller into a ``Probe``: one request, and what the world says its answer must be. Adding a
virtual workspace to the oracle is adding a module here with a ``View`` subclass and listing it in
``VIEWS`` -- nothing else changes (``test_oracle`` runs every listed view in every topology).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from tests.reliability.oracle.rbac import Caller
from tests.reliability.oracle.world import World

__all__ = ["Probe", "View", "VIEWS", "items"]


@dataclass
class Probe:
    """``method path`` sent by ``caller`` to the shard (``via="shard"``) or to the virtual workspaces' base URL
    (``via="vw"``, which is the shard itself but for the external topology). ``expect()`` is computed from
    the world when the answer is compared: ``(status, names)`` where ``names`` (for a list) is the exact set
    of objects the answer must hold, else None. ``done(status)`` records in the world what a write did."""

    view: str
    caller: str
    method: str
    path: str
    expect: Callable[[], tuple[int, frozenset | None]]
    via: str = "shard"
    body: dict | None = None
    names: Callable[[dict], frozenset] | None = None
    done: Callable[[int], None] | None = None
    headers: dict = field(default_factory=dict)
    watchable: bool = False
    during: Callable[[], None] | None = None


def items(answer: dict) -> frozenset:
    """The names of a list's items."""
    return frozenset(item["metadata"]["name"] for item in answer.get("items") or ())


class View:
    """Probes of one server path; ``name`` labels its checks in the figures."""

    name = ""

    def probe(self, world: World, caller: Caller, rng: random.Random) -> Probe:
        raise NotImplementedError


def _views() -> list[View]:
    from tests.reliability.oracle.views.apiexport import APIExportView
    from tests.reliability.oracle.views.initializingworkspaces import InitializingWorkspacesView
    from tests.reliability.oracle.views.shard import ShardView
    from tests.reliability.oracle.views.syncer import SyncerView
    from tests.reliability.oracle.views.workspaces import WorkspacesView

    return [ShardView(), WorkspacesView(), APIExportView(), InitializingWorkspacesView(), SyncerView()]


VIEWS: list[View] = _views()
