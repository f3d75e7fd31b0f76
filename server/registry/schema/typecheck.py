"""What kube's typed decoding refuses in a built-in kind: a value of the wrong JSON type for its Go field.

kube decodes every write of a built-in kind into its Go struct, so ``data: {port: 8080}`` in a
ConfigMap is a 400 (``json: cannot unmarshal number into Go struct field ConfigMap.data of type
string``) and never stored. We keep objects as JSON, so without this check such an object would be
stored and then break every typed client that lists it (client-go informers, ``kubectl describe``, the
Python client's ``list_namespaced_config_map``) for the whole namespace.

The check walks the object against the kind's built-in schema (``builtins``), after pruning, and reports
the first mismatch as Go's ``encoding/json`` words it: the innermost struct, the field path of JSON
names (no indexes or map keys), the Go type. The types Go decodes with code of their own are checked
by that code's rules: ``metav1.Time`` (an RFC 3339 string), ``resource.Quantity`` (a string or number
matching the quantity syntax), ``intstr.IntOrString`` (an integer or string) and ``[]byte`` (base64).
A number with an integral value in an integer field is stored as an integer (kube's YAML-to-JSON
conversion writes ``1.0`` as ``1``).

``repair`` is the same walk for objects already stored: it turns scalars in string fields into the
strings they were meant to be (``8080`` -> ``"8080"``, as YAML wrote them) and reports what it cannot fix.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from server.registry.schema import builtins
from server.registry.schema.structural import INT_OR_STRING, PRESERVE

__all__ = ["decode_error", "repair"]

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
_QUANTITY = re.compile(r"([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)")
_QUANTITY_SUFFIXES = frozenset(("", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))
_EXPONENT = re.compile(r"[eE][-+]?[0-9]+")
_INT_RANGES = {"int32": (-(1 << 31), (1 << 31) - 1), "int64": (-(1 << 63), (1 << 63) - 1)}


class _TypeError(Exception):
    """The first mismatch, in Go's words."""


def _go_struct(schema: dict) -> str | None:
    """A struct schema's Go type as Go prints it, e.g. ``v1.DeploymentSpec``."""
    name = builtins.component_name(schema)
    return ".".join(name.rsplit(".", 2)[-2:]) if name else None


def decode_error(kind: str, version: str, schema: dict, obj: dict) -> str | None:
    """kube's 400 message for the first value of ``obj`` its Go type refuses, else None.

    Integral numbers in integer fields become integers in place (``obj`` must be the caller's own)."""
    walker = _Walker(repairing=False)
    try:
        walker.value(schema, obj, "", kind)
    except _TypeError as exc:
        return f'{kind} in version "{version}" cannot be handled as a {kind}: {exc}'
    return None


def repair(kind: str, schema: dict, obj: dict) -> tuple[bool, list[str]]:
    """Fix ``obj`` (a copy) in place where a stored value's meaning is plain: scalars in string fields become
    strings, integral numbers in integer fields integers; ``(changed, what is still wrong)``."""
    walker = _Walker(repairing=True)
    walker.value(schema, obj, "", kind)
    return walker.changed, walker.unfixed


class _Walker:
    __slots__ = ("repairing", "changed", "unfixed")

    def __init__(self, repairing: bool):
        self.repairing = repairing
        self.changed = False
        self.unfixed: list[str] = []

    def fail(self, message: str) -> None:
        if not self.repairing:
            raise _TypeError(message)
        self.unfixed.append(message)

    def mismatch(self, value: Any, schema: dict, path: str, struct: str) -> None:
        self.fail(f"json: cannot unmarshal {_json_type(value)} into Go struct field {struct}.{path} of type "
                  f"{_go_type(schema)}")

    def value(self, schema: dict, value: Any, path: str, struct: str) -> Any:
        """Check ``value``; returns what to store instead of it (the same object unless coerced)."""
        if value is None or schema.get(PRESERVE):
            return value
        if schema.get(INT_OR_STRING):
            if isinstance(value, str) or _integral(value):
                return _as_int(value) if not isinstance(value, str) else value
            self.fail(f"json: cannot unmarshal {_json_type(value)} into Go value of type int32")
            return value
        if "oneOf" in schema:  # resource.Quantity
            return self.quantity(value)
        expected = schema.get("type")
        if expected == "string":
            return self.string(schema, value, path, struct)
        if expected == "integer":
            if _integral(value):
                low, high = _INT_RANGES.get(schema.get("format", "int64"), _INT_RANGES["int64"])
                number = _as_int(value)
                if low <= number <= high:
                    return number
                self.fail(f"json: cannot unmarshal number {_go_number(value)} into Go struct field {struct}.{path} "
                          f"of type {_go_type(schema)}")
            elif isinstance(value, float):
                self.fail(f"json: cannot unmarshal number {_go_number(value)} into Go struct field {struct}.{path} "
                          f"of type {_go_type(schema)}")
            else:
                self.mismatch(value, schema, path, struct)
            return value
        if expected == "number":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                self.mismatch(value, schema, path, struct)
            return value
        if expected == "boolean":
            if not isinstance(value, bool):
                self.mismatch(value, schema, path, struct)
            return value
        if expected == "array":
            if not isinstance(value, list):
                self.mismatch(value, schema, path, struct)
                return value
            items = schema.get("items")
            if isinstance(items, dict):
                for i, item in enumerate(value):
                    fixed = self.value(items, item, path, struct)
                    if fixed is not item:
                        value[i] = fixed
                        self.changed = True
            return value
        if expected == "object" or "properties" in schema:
            if not isinstance(value, dict):
                self.mismatch(value, schema, path, struct)
                return value
            properties = schema.get("properties")
            if properties:
                inner = (_go_struct(schema) or struct).rsplit(".", 1)[-1]
                for name, item in list(value.items()):
                    sub = properties.get(name)
                    if sub is not None:
                        fixed = self.value(sub, item, f"{path}.{name}" if path else name, inner)
                        if fixed is not item:
                            value[name] = fixed
                            self.changed = True
            elif isinstance(schema.get("additionalProperties"), dict):
                additional = schema["additionalProperties"]
                for name, item in list(value.items()):
                    fixed = self.value(additional, item, path, struct)
                    if fixed is not item:
                        value[name] = fixed
                        self.changed = True
        return value

    def string(self, schema: dict, value: Any, path: str, struct: str) -> Any:
        if not isinstance(value, str):
            if self.repairing and isinstance(value, (bool, int, float)) and schema.get("format") is None:
                return _scalar_text(value)
            self.mismatch(value, schema, path, struct)
            return value
        fmt = schema.get("format")
        if fmt == "date-time" and not _RFC3339.fullmatch(value):
            self.fail(f'parsing time "{value}" as "2006-01-02T15:04:05Z07:00": cannot parse "{value}" as RFC 3339')
        elif fmt == "byte":
            error = _base64_error(value)
            if error:
                self.fail(error)
        return value

    def quantity(self, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _valid_quantity(value.strip()):
            return value
        if isinstance(value, str) or isinstance(value, bool):
            self.fail("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
        else:
            self.fail(f"json: cannot unmarshal {_json_type(value)} into Go value of type string")
        return value


def _integral(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())


def _as_int(value: int | float) -> int:
    return value if isinstance(value, int) else int(value)


def _json_type(value: Any) -> str:
    """``UnmarshalTypeError.Value``: the JSON kind of the value found."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _go_number(value: int | float) -> str:
    return str(value) if isinstance(value, int) or not value.is_integer() else str(int(value))


def _go_type(schema: dict) -> str:
    """The Go type a schema stands for, as Go prints it (``string``, ``[]v1.Container``, ``map[string]string``)."""
    name = _go_struct(schema)
    if name is not None and schema.get("properties"):
        return name
    if schema.get(INT_OR_STRING):
        return "intstr.IntOrString"
    if "oneOf" in schema:
        return "resource.Quantity"
    expected = schema.get("type")
    fmt = schema.get("format")
    if expected == "string":
        return {"byte": "[]uint8", "date-time": "v1.Time"}.get(fmt, "string")
    if expected == "integer":
        return fmt if fmt in _INT_RANGES else "int"
    if expected == "number":
        return "float64"
    if expected == "boolean":
        return "bool"
    if expected == "array":
        items = schema.get("items")
        return "[]" + (_go_type(items) if isinstance(items, dict) else "interface {}")
    if expected == "object":
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            return "map[string]" + _go_type(additional)
        return "map[string]interface {}"
    return "interface {}"


def _scalar_text(value: bool | int | float) -> str:
    """A scalar as YAML wrote it, which is what a string field of it meant."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return _go_number(value) if isinstance(value, float) else str(value)


def _valid_quantity(text: str) -> bool:
    match = _QUANTITY.fullmatch(text)
    if match is None or not any(c.isdigit() for c in match.group(1)) or match.group(1).count(".") > 1:
        return False
    suffix = match.group(2)
    return suffix in _QUANTITY_SUFFIXES or _EXPONENT.fullmatch(suffix) is not None


def _base64_error(value: str) -> str | None:
    """Go's ``base64.StdEncoding`` error for a ``[]byte`` field's string (which ignores newlines), else None."""
    text = value.replace("\r", "").replace("\n", "")
    try:
        base64.b64decode(text, validate=True)
        return None
    except (binascii.Error, ValueError):
        pass
    for i, char in enumerate(text):
        if not (char.isascii() and (char.isalnum() or char in "+/=")):
            return f"illegal base64 data at input byte {i}"
    return f"illegal base64 data at input byte {len(text) - len(text) % 4 if len(text) % 4 else len(text) - 1}"
