"""Structural OpenAPI v3 schemas, as apiextensions uses them: pruning, defaulting, validation, structure checks.

Pure functions over plain schema dicts (a CRD's ``openAPIV3Schema``, or a built-in schema whose
``$ref``s were linked by :func:`link`). Objects are walked, not schemas, so recursive schemas
(JSONSchemaProps) are fine. Field paths and messages follow kube's (``spec.items[0].size``,
``Invalid value: 0: spec.size in body should be greater than or equal to 1``) because clients and
people read them.

* :func:`prune` drops fields the schema does not know and returns their paths (what
  ``fieldValidation=Strict|Warn`` reports), honouring ``x-kubernetes-preserve-unknown-fields`` and
  keeping ``apiVersion``/``kind``/``metadata`` of the root and of ``x-kubernetes-embedded-resource``.
* :func:`default` fills ``default`` values and drops nulls the schema does not allow.
* :func:`validate` checks values: type, required, enum, pattern, bounds, lengths, item counts,
  ``nullable``, ``additionalProperties``, list types, ``allOf``/``anyOf``/``oneOf``/``not``.
* :func:`check_structural` is the CRD-time check that a schema is structural.
"""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from typing import Any

import orjson

from server.registry.validation import go_value

PRESERVE = "x-kubernetes-preserve-unknown-fields"
INT_OR_STRING = "x-kubernetes-int-or-string"
EMBEDDED = "x-kubernetes-embedded-resource"
_RESOURCE_FIELDS = ("apiVersion", "kind", "metadata")

Cause = dict


# ---------------------------------------------------------------------------------------------- paths

def child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def index(path: str, i: int) -> str:
    return f"{path}[{i}]"


def key(path: str, k: str) -> str:
    return f"{path}[{k}]"


# ---------------------------------------------------------------------------------------------- linking

_SUBSCHEMAS = ("additionalProperties", "items", "allOf", "anyOf", "oneOf", "not")


def link(schemas: dict[str, dict]) -> dict[str, dict]:
    """``{name: schema}`` with every ``{"$ref": "#/components/schemas/<n>"}`` (also the ``allOf: [ref]``
    that carries a description) replaced by the linked schema itself; cycles become shared dicts."""
    linked: dict[str, dict] = {name: {} for name in schemas}

    def resolve(node):
        if isinstance(node, list):
            return [resolve(n) for n in node]
        if not isinstance(node, dict):
            return node
        ref = _ref_name(node)
        if ref is not None:
            return linked[ref]
        out = {}
        for k, v in node.items():
            if k == "properties":
                out[k] = {p: resolve(s) for p, s in v.items()}
            elif k in _SUBSCHEMAS:
                out[k] = resolve(v)
            else:
                out[k] = v
        return out

    for name, schema in schemas.items():
        linked[name].update(resolve(schema))
    return linked


def _ref_name(node: dict) -> str | None:
    ref = node.get("$ref")
    if ref is None and len(node.get("allOf") or ()) == 1 and set(node) <= {"allOf", "description", "default"}:
        ref = node["allOf"][0].get("$ref")
    return ref.rsplit("/", 1)[1] if isinstance(ref, str) else None


# ---------------------------------------------------------------------------------------------- pruning

def prune(schema: dict | None, obj: Any, *, root: bool = True, object_meta: dict | None = None,
          path: str = "") -> list[str]:
    """Remove (in place) every field of ``obj`` that ``schema`` does not specify; returns their paths.

    ``root``: ``obj`` is a whole resource, so ``apiVersion``/``kind`` stay and ``metadata`` is pruned
    with ``object_meta`` (the ObjectMeta schema) when the schema does not describe it.
    """
    unknown: list[str] = []
    if schema is not None:
        _prune(schema, obj, path, unknown, root, object_meta)
    return unknown


def _prune(schema: dict, value: Any, path: str, unknown: list[str], resource: bool, meta: dict | None) -> None:
    if isinstance(value, dict):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        preserve = schema.get(PRESERVE, False)
        resource = resource or schema.get(EMBEDDED, False)
        for name in list(value):
            sub = properties.get(name) if properties else None
            if resource and name in _RESOURCE_FIELDS:
                if name == "metadata" and meta is not None and isinstance(value[name], dict):
                    _prune(sub if sub is not None and sub.get("properties") else meta, value[name],
                           child(path, name), unknown, False, None)
                continue
            if sub is not None:
                _prune(sub, value[name], child(path, name), unknown, False, meta)
            elif isinstance(additional, dict):
                _prune(additional, value[name], key(path, name) if not properties else child(path, name),
                       unknown, False, meta)
            elif additional is True or preserve or schema.get(INT_OR_STRING):
                continue
            else:
                unknown.append(child(path, name))
                del value[name]
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                _prune(items, item, index(path, i), unknown, False, meta)


# ---------------------------------------------------------------------------------------------- defaulting

def default(schema: dict | None, value: Any) -> None:
    """Apply ``default``s (in place) where a property is absent, or null without ``nullable``; drop other
    nulls the schema does not allow (kube: "pruned before defaulting")."""
    if schema is None:
        return
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for name, sub in properties.items():
            if name in value and value[name] is None and not sub.get("nullable", False):
                if "default" in sub:
                    value[name] = copy.deepcopy(sub["default"])
                else:
                    del value[name]
            elif name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
        additional = schema.get("additionalProperties")
        for name, item in list(value.items()):
            sub = properties.get(name)
            if sub is None and isinstance(additional, dict):
                if item is None and not additional.get("nullable", False):
                    if "default" in additional:
                        value[name] = item = copy.deepcopy(additional["default"])
                    else:
                        del value[name]
                        continue
                sub = additional
            if sub is not None and isinstance(item, (dict, list)):
                default(sub, item)
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                if item is None and "default" in items and not items.get("nullable", False):
                    value[i] = item = copy.deepcopy(items["default"])
                if isinstance(item, (dict, list)):
                    default(items, item)


# ---------------------------------------------------------------------------------------------- validation

def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _shown(value: Any) -> str:
    """A value as kube prints it in ``Invalid value: <v>``."""
    return go_value(value)


def _cause(kind: str, path: str, message: str) -> Cause:
    return {"type": kind, "field": path, "message": message}


def invalid(path: str, value: Any, detail: str) -> Cause:
    return _cause("FieldValueInvalid", path, f"Invalid value: {_shown(value)}: {detail}")


def required(path: str, detail: str = "") -> Cause:
    return _cause("FieldValueRequired", path, "Required value" + (f": {detail}" if detail else ""))


def _matches_type(expected: str, value: Any) -> bool:
    if expected == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or \
            (isinstance(value, float) and value.is_integer())
    if expected == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return type_name(value) == expected


@lru_cache(maxsize=1024)
def _pattern(pattern: str):
    return re.compile(pattern)


def validate(schema: dict | None, value: Any, path: str = "", *, root: bool = True) -> list[Cause]:
    """Causes (kube's ``field.Error`` shapes) for every violation of ``schema`` by ``value``.

    At the ``root`` of a resource, ``apiVersion``, ``kind`` and ``metadata`` are left to the
    object-meta validation, as apiextensions does.
    """
    causes: list[Cause] = []
    if schema is not None:
        _validate(schema, value, path, causes, root)
    return causes


def _validate(schema: dict, value: Any, path: str, causes: list[Cause], resource: bool) -> None:
    where = path or "<root>"
    if value is None:
        if not schema.get("nullable", False) and (schema.get("type") or schema.get(INT_OR_STRING)):
            expected = "integer,string" if schema.get(INT_OR_STRING) else schema["type"]
            causes.append(_cause("FieldValueTypeInvalid", path,
                                 f'Invalid value: "null": {where} in body must be of type {expected}: "null"'))
        return
    expected = schema.get("type")
    if schema.get(INT_OR_STRING):
        if not (_matches_type("integer", value) or isinstance(value, str)):
            causes.append(_cause("FieldValueTypeInvalid", path,
                                 f'Invalid value: "{type_name(value)}": {where} in body must be of type '
                                 f'integer,string: "{type_name(value)}"'))
            return
    elif expected and not _matches_type(expected, value):
        causes.append(_cause("FieldValueTypeInvalid", path,
                             f'Invalid value: "{type_name(value)}": {where} in body must be of type {expected}: '
                             f'"{type_name(value)}"'))
        return
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(orjson.dumps(v).decode() for v in schema["enum"])
        causes.append(_cause("FieldValueNotSupported", path,
                             f"Unsupported value: {orjson.dumps(value).decode()}: supported values: {supported}"))
    if isinstance(value, str):
        _validate_string(schema, value, path, where, causes)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _validate_number(schema, value, path, where, causes)
    elif isinstance(value, list):
        _validate_array(schema, value, path, where, causes)
    elif isinstance(value, dict):
        _validate_object(schema, value, path, where, causes, resource or schema.get(EMBEDDED, False))
    _validate_combinators(schema, value, path, where, causes, resource)


def _validate_string(schema: dict, value: str, path: str, where: str, causes: list[Cause]) -> None:
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        limit = schema["maxLength"]
        causes.append(_cause("FieldValueTooLong", path,
                             f"Too long: may not be more than {limit} {'byte' if limit == 1 else 'bytes'}"))
    if "minLength" in schema and len(value) < schema["minLength"]:
        causes.append(invalid(path, value, f"{where} in body should be at least {schema['minLength']} chars long"))
    if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
        causes.append(invalid(path, value, f"{where} in body should match '{schema['pattern']}'"))


def _validate_number(schema: dict, value, path: str, where: str, causes: list[Cause]) -> None:
    if "minimum" in schema:
        low = schema["minimum"]
        if schema.get("exclusiveMinimum") and value <= low:
            causes.append(invalid(path, value, f"{where} in body should be greater than {_num(low)}"))
        elif value < low:
            causes.append(invalid(path, value, f"{where} in body should be greater than or equal to {_num(low)}"))
    if "maximum" in schema:
        high = schema["maximum"]
        if schema.get("exclusiveMaximum") and value >= high:
            causes.append(invalid(path, value, f"{where} in body should be less than {_num(high)}"))
        elif value > high:
            causes.append(invalid(path, value, f"{where} in body should be less than or equal to {_num(high)}"))
    multiple = schema.get("multipleOf")
    if multiple and (value / multiple) != int(value / multiple):
        causes.append(invalid(path, value, f"{where} in body should be a multiple of {_num(multiple)}"))


def _num(n) -> str:
    return str(int(n)) if isinstance(n, float) and n.is_integer() else str(n)


def _validate_array(schema: dict, value: list, path: str, where: str, causes: list[Cause]) -> None:
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        causes.append(_cause("FieldValueTooMany", path,
                             f"Too many: {len(value)}: must have at most {schema['maxItems']} items"))
    if "minItems" in schema and len(value) < schema["minItems"]:
        causes.append(invalid(path, value, f"{where} in body should have at least {schema['minItems']} items"))
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "set" or schema.get("uniqueItems"):
        seen: list = []
        for i, item in enumerate(value):
            if item in seen:
                causes.append(_cause("FieldValueDuplicate", index(path, i),
                                     f"Duplicate value: {orjson.dumps(item).decode()}"))
            else:
                seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or ()
        seen_keys: set = set()
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                continue
            entry = tuple(orjson.dumps(item.get(k)) for k in keys)
            if entry in seen_keys:
                shown = orjson.dumps({k: item.get(k) for k in keys}).decode()
                causes.append(_cause("FieldValueDuplicate", index(path, i), f"Duplicate value: {shown}"))
            seen_keys.add(entry)
    items = schema.get("items")
    if isinstance(items, dict):
        for i, item in enumerate(value):
            _validate(items, item, index(path, i), causes, False)


def _validate_object(schema: dict, value: dict, path: str, where: str, causes: list[Cause], resource: bool) -> None:
    properties = schema.get("properties") or {}
    for name in schema.get("required") or ():
        if name not in value:
            causes.append(required(child(path, name)))
    if resource:
        for name in ("apiVersion", "kind"):
            if path and not value.get(name):
                causes.append(required(child(path, name), "must not be empty"))
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        causes.append(_cause("FieldValueTooMany", path,
                             f"Too many: {len(value)}: must have at most {schema['maxProperties']} items"))
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        causes.append(invalid(path, value, f"{where} in body should have at least {schema['minProperties']} "
                                           "properties"))
    additional = schema.get("additionalProperties")
    for name, item in value.items():
        if resource and name in _RESOURCE_FIELDS:
            continue
        sub = properties.get(name)
        if sub is not None:
            _validate(sub, item, child(path, name), causes, False)
        elif isinstance(additional, dict):
            _validate(additional, item, key(path, name) if not properties else child(path, name), causes, False)
        elif additional is False:
            causes.append(_cause("FieldValueForbidden", child(path, name),
                                 f"Forbidden: {where} in body may not have additional properties"))


def _validate_combinators(schema: dict, value, path: str, where: str, causes: list[Cause], resource: bool) -> None:
    for sub in schema.get("allOf") or ():
        _validate(sub, value, path, causes, resource)
    if schema.get("anyOf") and not any(not validate(s, value, path, root=resource) for s in schema["anyOf"]):
        causes.append(invalid(path, value, f'{where} in body must validate at least one schema (anyOf)'))
    if schema.get("oneOf"):
        passing = sum(1 for s in schema["oneOf"] if not validate(s, value, path, root=resource))
        if passing != 1:
            causes.append(invalid(path, value, f"{where} in body must validate one and only one schema (oneOf)"))
    if isinstance(schema.get("not"), dict) and not validate(schema["not"], value, path, root=resource):
        causes.append(invalid(path, value, f"{where} in body must not validate the schema (not)"))


# ---------------------------------------------------------------------------------------------- structure

_SCHEMA_TYPES = ("object", "array", "string", "integer", "number", "boolean")


def check_structural(schema: Any, path: str) -> list[Cause]:
    """Why ``schema`` (at ``path``, e.g. ``spec.versions[0].schema.openAPIV3Schema``) is not a structural
    schema as ``apiextensions.k8s.io/v1`` requires; empty when it is."""
    if not isinstance(schema, dict):
        return [required(path, "must not be empty")] if schema is None else \
            [invalid(path, schema, "must be an object")]
    causes: list[Cause] = []
    if schema.get("type") != "object":
        causes.append(required(child(path, "type"), "must not be empty at the root") if not schema.get("type")
                      else invalid(child(path, "type"), schema["type"], "must be object at the root"))
    _check_node(schema, path, causes, root=True)
    return causes


def _check_node(schema: dict, path: str, causes: list[Cause], root: bool = False) -> None:
    typ = schema.get("type")
    if "$ref" in schema:
        causes.append(_cause("FieldValueForbidden", child(path, "$ref"), "Forbidden: $ref is not supported"))
    if typ is not None and typ not in _SCHEMA_TYPES:
        causes.append(_cause("FieldValueNotSupported", child(path, "type"),
                             f'Unsupported value: "{typ}": supported values: '
                             + ", ".join(f'"{t}"' for t in _SCHEMA_TYPES)))
    if not typ and not root and not schema.get(INT_OR_STRING) and not schema.get(PRESERVE):
        causes.append(required(child(path, "type"), "must not be empty for specified object fields"))
    if schema.get(INT_OR_STRING) and typ:
        causes.append(_cause("FieldValueForbidden", child(path, "type"),
                             "Forbidden: must be empty if x-kubernetes-int-or-string is true"))
    if typ == "array" and not isinstance(schema.get("items"), dict):
        causes.append(required(child(path, "items"), "must be specified"))
    if schema.get(EMBEDDED) and typ != "object":
        causes.append(invalid(child(path, "type"), typ or "", "must be object if x-kubernetes-embedded-resource is "
                                                              "true"))
    if schema.get("properties") and isinstance(schema.get("additionalProperties"), dict):
        causes.append(_cause("FieldValueForbidden", child(path, "additionalProperties"),
                             "Forbidden: additionalProperties and properties are mutual exclusive"))
    if schema.get("additionalProperties") is False:
        causes.append(_cause("FieldValueForbidden", child(path, "additionalProperties"),
                             "Forbidden: must not be false"))
    if "pattern" in schema:
        try:
            _pattern(schema["pattern"])
        except (re.error, TypeError):
            causes.append(invalid(child(path, "pattern"), schema["pattern"], "must be a valid regular expression"))
    for name, sub in (schema.get("properties") or {}).items():
        if isinstance(sub, dict):
            _check_node(sub, f"{child(path, 'properties')}[{name}]", causes)
    for field in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(field), dict):
            _check_node(schema[field], child(path, field), causes)
    if "default" in schema and not root:
        sample = copy.deepcopy(schema["default"])
        problems = validate(schema, sample, "", root=False)
        for problem in problems:
            causes.append(invalid(child(path, "default"), schema["default"],
                                  f"{problem['field'] or '<root>'}: {problem['message']}"))

