"""The OpenAPI v3 schemas of the built-in kinds (generated into ``builtin_schemas.json`` by ``generate.py``).

Two views of the same data: the raw component schemas with ``$ref``s, for OpenAPI documents, and
linked schemas (refs resolved into shared dicts) for pruning and unknown-field detection.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import orjson

from server.registry.schema.structural import link

_DATA = Path(__file__).with_name("builtin_schemas.json")
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


@lru_cache(maxsize=1)
def _data() -> dict:
    return orjson.loads(_DATA.read_bytes())


def components() -> dict[str, dict]:
    """Every built-in component schema by its OpenAPI name (``io.k8s.api.apps.v1.Deployment``); read-only."""
    return _data()["schemas"]


def schema_name(group: str, version: str, kind: str) -> str | None:
    return _data()["kinds"].get(f"{group}/{version}/{kind}")


@lru_cache(maxsize=1)
def _linked() -> dict[str, dict]:
    return link(components())


def resource_schema(group: str, version: str, kind: str) -> dict | None:
    """The linked schema of a built-in kind, or None for kinds we have no upstream schema for."""
    name = schema_name(group, version, kind)
    return _linked()[name] if name else None


@lru_cache(maxsize=1)
def _names_by_identity() -> dict[int, str]:
    return {id(schema): name for name, schema in _linked().items()}


def component_name(linked_schema: dict) -> str | None:
    """The component a linked schema is (``io.k8s.api.apps.v1.DeploymentSpec``), or None for inline ones."""
    return _names_by_identity().get(id(linked_schema))


def object_meta() -> dict:
    """The linked ObjectMeta schema (custom resources' and embedded resources' ``metadata``)."""
    return _linked()[OBJECT_META]


def closure(names) -> dict[str, dict]:
    """The raw schemas ``names`` refer to, transitively, themselves included."""
    schemas = components()
    out: dict[str, dict] = {}
    stack = list(names)
    while stack:
        name = stack.pop()
        if name in out or name not in schemas:
            continue
        out[name] = schemas[name]
        stack.extend(_refs(schemas[name]))
    return out


def _refs(node) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            found.append(ref.rsplit("/", 1)[1])
        for value in node.values():
            if isinstance(value, (dict, list)):
                found.extend(_refs(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_refs(value))
    return found
