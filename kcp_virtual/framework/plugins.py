"""Virtual workspaces as installable plugins: the entry-point group ``kcp_virtual.virtual_workspaces``.

A distribution declares one entry point per virtual workspace, named like it, pointing at its factory (a
callable taking the ShardClient and returning the ``VirtualWorkspace``)::

    [project.entry-points."kcp_virtual.virtual_workspaces"]
    tls-inventory = "tls_inventory:tls_inventory"

``kcp start`` and ``kcp virtual-workspaces`` serve every installed one, or those ``--virtual-workspaces``
names; the stock virtual workspaces are entry points of kcp-virtual itself. Resolvers are tried in name
order, so a plugin's resolver should accept only ``/services/<its name>/...``. A plugin that cannot be
loaded, a name two distributions claim, or a factory building a virtual workspace of another name stops
start-up with a ``PluginError`` that says which plugin and why: serving a partial set silently would turn
a broken install into 404s nobody can explain.

``select`` is what ``ShardConfig.virtual_workspaces`` and the flags become: plugin names and factories given
directly; ``load_factory("module:attribute")`` loads a factory that is not packaged (``--virtual-workspace``),
for development and tests.
"""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Iterable

from kcp_virtual.framework.shardclient import ShardClient
from kcp_virtual.framework.virtualworkspace import VirtualWorkspace

__all__ = ["GROUP", "PluginError", "VirtualWorkspaceFactory", "installed", "load", "select", "load_factory"]

GROUP = "kcp_virtual.virtual_workspaces"

#: What a plugin's entry point names: built once the shard (or its remote client) exists.
VirtualWorkspaceFactory = Callable[[ShardClient], VirtualWorkspace]


class PluginError(Exception):
    """A virtual workspace plugin that cannot be served; the message names it and says why."""


def _distribution(entry_point: EntryPoint) -> str:
    dist = entry_point.dist
    return f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"


def installed() -> dict[str, EntryPoint]:
    """The installed virtual workspace plugins by name; a name claimed twice is a ``PluginError``."""
    found: dict[str, EntryPoint] = {}
    for entry_point in entry_points(group=GROUP):
        other = found.get(entry_point.name)
        if other is not None and other.value != entry_point.value:
            raise PluginError(f"virtual workspace {entry_point.name!r} is installed twice: {other.value} "
                              f"({_distribution(other)}) and {entry_point.value} ({_distribution(entry_point)}); "
                              "uninstall one of them")
        found[entry_point.name] = entry_point
    return found


def load(names: Iterable[str] | None = None) -> list[VirtualWorkspaceFactory]:
    """The factories of the named plugins (None: every installed one), in name order."""
    available = installed()
    if names is None:
        wanted = sorted(available)
    else:
        wanted = sorted(set(names))
        missing = [name for name in wanted if name not in available]
        if missing:
            raise PluginError(f"no virtual workspace named {', '.join(map(repr, missing))} is installed "
                              f"(installed: {', '.join(sorted(available)) or 'none'})")
    return [_load(available[name]) for name in wanted]


def _load(entry_point: EntryPoint) -> VirtualWorkspaceFactory:
    try:
        factory = entry_point.load()
    except Exception as exc:  # noqa: BLE001 - whatever a plugin's import raises, start-up reports it
        raise PluginError(f"virtual workspace plugin {entry_point.name!r} ({entry_point.value}, "
                          f"{_distribution(entry_point)}) failed to load: {type(exc).__name__}: {exc}") from exc
    if not callable(factory):
        raise PluginError(f"virtual workspace plugin {entry_point.name!r}: {entry_point.value} is not callable")
    return _named(entry_point.name, entry_point.value, factory)


def _named(name: str, origin: str, factory: VirtualWorkspaceFactory) -> VirtualWorkspaceFactory:
    """``factory``, checked to build a virtual workspace called ``name`` (the URL it claims is the name)."""

    def build(shard: ShardClient) -> VirtualWorkspace:
        try:
            workspace = factory(shard)
        except Exception as exc:  # noqa: BLE001
            raise PluginError(f"virtual workspace plugin {name!r} ({origin}) failed to start: "
                              f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(workspace, VirtualWorkspace):
            raise PluginError(f"virtual workspace plugin {name!r} ({origin}) returned {type(workspace).__name__}, "
                              "not a VirtualWorkspace")
        if workspace.name != name:
            raise PluginError(f"virtual workspace plugin {name!r} ({origin}) built a virtual workspace named "
                              f"{workspace.name!r}; the entry point must be named like the virtual workspace")
        return workspace

    build.__name__ = build.__qualname__ = f"plugin:{name}"
    build.plugin_name = name  # type: ignore[attr-defined]
    return build


def select(items: Iterable["str | VirtualWorkspaceFactory"] | None) -> list[VirtualWorkspaceFactory]:
    """What to serve: None is every installed plugin; otherwise plugin names (loaded, in name order) followed
    by the factories given directly, in their order."""
    if items is None:
        return load()
    items = list(items)
    names = [item for item in items if isinstance(item, str)]
    return [*(load(names) if names else ()), *(item for item in items if not isinstance(item, str))]


def load_factory(spec: str) -> VirtualWorkspaceFactory:
    """``package.module:factory`` (a callable taking a ShardClient and returning a VirtualWorkspace)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise PluginError(f"{spec!r}: expected module:factory")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"{spec!r} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    if not callable(target):
        raise PluginError(f"{spec!r} is not callable")
    return target
