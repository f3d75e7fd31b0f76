"""The built-in API types the shard serves in every logical cluster, gathered from their modules.

Each API group (or family) lives in its own module and exposes a tuple of ``ResourceType``;
add a module's tuple here to serve it.
"""

from __future__ import annotations

from server.resources import BUILTINS as CORE_TYPES, ResourceType


def builtin_types() -> list[ResourceType]:
    return [*CORE_TYPES]
