"""Object-metadata validation with apimachinery's exact error texts.

Ports ``k8s.io/apimachinery/pkg/util/validation`` (name/label formats),
``pkg/api/validation`` (``ValidateObjectMetaAccessor``) and ``field.Error.ErrorBody`` so a 422 built with
``Invalid.for_fields(kind, group, name, causes)`` reads exactly like the apiserver's, e.g.
``ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain ...``.

A *cause* is ``{"type": "FieldValueInvalid", "field": "metadata.name", "message": "Invalid value: ..."}``:
``message`` is Go's ``ErrorBody()`` (everything after ``<field>: ``), which is what kube puts in
``details.causes[].message``.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from typing import Any, Callable

import orjson

from kcp_virtual.framework.gofmt import go_float# noqa: F401 - part of this module's API

# ---------------------------------------------------------------------------------------------------
# Formats and messages (util/validation/validation.go)

DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN_FMT = DNS1123_LABEL_FMT + "(\\." + DNS1123_LABEL_FMT + ")*"
QUALIFIED_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_VALUE_FMT = "(" + QUALIFIED_NAME_FMT + ")?"

DNS1123_LABEL_MAX_LENGTH = 63
DNS1123_SUBDOMAIN_MAX_LENGTH = 253
QUALIFIED_NAME_MAX_LENGTH = 63
LABEL_VALUE_MAX_LENGTH = 63
TOTAL_ANNOTATION_SIZE_LIMIT_B = 256 * 1024

_DNS1123_LABEL_ERR = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
                      "and must start and end with an alphanumeric character")
_DNS1123_SUBDOMAIN_ERR = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                          "'-' or '.', and must start and end with an alphanumeric character")
_QUALIFIED_NAME_ERR = ("must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                       "with an alphanumeric character")
_LABEL_VALUE_ERR = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' "
                    "or '.', and must start and end with an alphanumeric character")

_dns1123_label = re.compile(DNS1123_LABEL_FMT).fullmatch
_dns1123_subdomain = re.compile(DNS1123_SUBDOMAIN_FMT).fullmatch
_qualified_name = re.compile(QUALIFIED_NAME_FMT).fullmatch
_label_value = re.compile(LABEL_VALUE_FMT).fullmatch


def regex_error(msg: str, fmt: str, *examples: str) -> str:
    """``validation.RegexError``, including its odd double space before each ``or``."""
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    shown = " or ".join(f"'{e}', " for e in examples)
    return f"{msg} (e.g. {shown}regex used for validation is '{fmt}')"


def max_len_error(length: int) -> str:
    return f"must be no more than {length} characters"


EMPTY_ERROR = "must be non-empty"
IS_NEGATIVE_ERROR = "must be greater than or equal to 0"
FIELD_IMMUTABLE_ERROR = "field is immutable"

_DNS1123_LABEL_REGEX_ERR = regex_error(_DNS1123_LABEL_ERR, DNS1123_LABEL_FMT, "my-name", "123-abc")
_DNS1123_SUBDOMAIN_REGEX_ERR = regex_error(_DNS1123_SUBDOMAIN_ERR, DNS1123_SUBDOMAIN_FMT, "example.com")
_QUALIFIED_NAME_REGEX_ERR = regex_error(_QUALIFIED_NAME_ERR, QUALIFIED_NAME_FMT, "MyName", "my.name", "123-abc")
_LABEL_VALUE_REGEX_ERR = regex_error(_LABEL_VALUE_ERR, LABEL_VALUE_FMT, "MyValue", "my_value", "12345")


def _byte_len(value: str) -> int:
    """Go's ``len(string)`` counts UTF-8 bytes."""
    return len(value) if value.isascii() else len(value.encode())


# The validators below are called per label/annotation on every write, with a small set of distinct
# inputs, so they are cached and return tuples (immutable, safe to share).

@lru_cache(maxsize=4096)
def is_dns1123_label(value: str) -> tuple[str, ...]:
    errs = []
    if _byte_len(value) > DNS1123_LABEL_MAX_LENGTH:
        errs.append(max_len_error(DNS1123_LABEL_MAX_LENGTH))
    if not _dns1123_label(value):
        # A valid subdomain that is not a valid label can only be failing because of its dots.
        errs.append("must not contain dots" if _dns1123_subdomain(value) else _DNS1123_LABEL_REGEX_ERR)
    return tuple(errs)


@lru_cache(maxsize=4096)
def is_dns1123_subdomain(value: str) -> tuple[str, ...]:
    errs = []
    if _byte_len(value) > DNS1123_SUBDOMAIN_MAX_LENGTH:
        errs.append(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH))
    if not _dns1123_subdomain(value):
        errs.append(_DNS1123_SUBDOMAIN_REGEX_ERR)
    return tuple(errs)


@lru_cache(maxsize=8192)
def is_qualified_name(value: str) -> tuple[str, ...]:
    """Label keys, annotation keys and finalizers: ``[prefix/]name``."""
    errs: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = value
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part " + EMPTY_ERROR)
        else:
            errs.extend("prefix part " + m for m in is_dns1123_subdomain(prefix))
    else:
        return ("a qualified name " + _QUALIFIED_NAME_REGEX_ERR
                + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",)
    if not name:
        errs.append("name part " + EMPTY_ERROR)
    elif _byte_len(name) > QUALIFIED_NAME_MAX_LENGTH:
        errs.append("name part " + max_len_error(QUALIFIED_NAME_MAX_LENGTH))
    if not _qualified_name(name):
        errs.append("name part " + _QUALIFIED_NAME_REGEX_ERR)
    return tuple(errs)


CONFIG_MAP_KEY_FMT = "[-._a-zA-Z0-9]+"
_config_map_key = re.compile(CONFIG_MAP_KEY_FMT).fullmatch
_CONFIG_MAP_KEY_REGEX_ERR = regex_error("a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                                        CONFIG_MAP_KEY_FMT, "key.name", "KEY_NAME", "key-name")


@lru_cache(maxsize=8192)
def is_config_map_key(value: str) -> tuple[str, ...]:
    """``validation.IsConfigMapKey``: the keys of ConfigMap and Secret data (they become file names)."""
    errs = []
    if _byte_len(value) > DNS1123_SUBDOMAIN_MAX_LENGTH:
        errs.append(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH))
    if not _config_map_key(value):
        errs.append(_CONFIG_MAP_KEY_REGEX_ERR)
    if value == ".":
        errs.append("must not be '.'")
    elif value == "..":
        errs.append("must not be '..'")
    elif value.startswith(".."):
        errs.append("must not start with '..'")
    return tuple(errs)


@lru_cache(maxsize=8192)
def is_valid_label_value(value: str) -> tuple[str, ...]:
    errs = []
    if _byte_len(value) > LABEL_VALUE_MAX_LENGTH:
        errs.append(max_len_error(LABEL_VALUE_MAX_LENGTH))
    if not _label_value(value):
        errs.append(_LABEL_VALUE_REGEX_ERR)
    return tuple(errs)


def is_valid_path_segment_name(name: str) -> tuple[str, ...]:
    """Names that end up as one URL path segment (``api/validation/path``)."""
    if name == "." or name == "..":
        return (f"may not be '{name}'",)
    return is_valid_path_segment_prefix(name)


def is_valid_path_segment_prefix(name: str) -> tuple[str, ...]:
    return tuple(f"may not contain '{c}'" for c in ("/", "%") if c in name)


def _mask_trailing_dash(name: str) -> str:
    """apimachinery's ``maskTrailingDash``: a generateName prefix may end in '-', since 5 chars follow.

    The ``[:-2]`` is upstream's quirk; kept so exactly the same prefixes validate.
    """
    if len(name) > 1 and name.endswith("-"):
        return name[:-2] + "a"
    return name


def name_is_dns_subdomain(name: str, prefix: bool = False) -> tuple[str, ...]:
    return is_dns1123_subdomain(_mask_trailing_dash(name) if prefix else name)


def name_is_dns_label(name: str, prefix: bool = False) -> tuple[str, ...]:
    return is_dns1123_label(_mask_trailing_dash(name) if prefix else name)


def name_is_path_segment(name: str, prefix: bool = False) -> tuple[str, ...]:
    return is_valid_path_segment_prefix(name) if prefix else is_valid_path_segment_name(name)


NAME_RULES: dict[str, Callable[[str, bool], tuple[str, ...]]] = {
    "subdomain": name_is_dns_subdomain,
    "label": name_is_dns_label,
    "path": name_is_path_segment,
}

# ---------------------------------------------------------------------------------------------------
# Causes (field.Error -> metav1.StatusCause)

_PLAIN_QUOTABLE = re.compile(r'[ !#-\[\]-~]*').fullmatch  # printable ASCII except '"' and '\'


def go_quote(value: str) -> str:
    """Go's ``%q`` for the common cases (JSON escaping is close enough for the rest)."""
    if _PLAIN_QUOTABLE(value):
        return f'"{value}"'
    return orjson.dumps(value).decode()


def go_value(value: Any) -> str:
    """How ``field.Error.ErrorBody`` renders a bad value."""
    if isinstance(value, str):
        return go_quote(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)


def invalid(field: str, value: Any, detail: str) -> dict:
    return {"type": "FieldValueInvalid", "field": field, "message": f"Invalid value: {go_value(value)}: {detail}"}


def type_invalid(field: str, value: Any, detail: str) -> dict:
    return {"type": "FieldValueTypeInvalid", "field": field,
            "message": f"Invalid value: {go_value(value)}: {detail}"}


def required(field: str, detail: str = "") -> dict:
    return {"type": "FieldValueRequired", "field": field,
            "message": f"Required value: {detail}" if detail else "Required value"}


def forbidden(field: str, detail: str = "") -> dict:
    return {"type": "FieldValueForbidden", "field": field,
            "message": f"Forbidden: {detail}" if detail else "Forbidden"}


def too_long(field: str, max_bytes: int) -> dict:
    unit = "byte" if max_bytes == 1 else "bytes"
    return {"type": "FieldValueTooLong", "field": field,
            "message": f"Too long: may not be more than {max_bytes} {unit}"}


def not_supported(field: str, value: Any, valid: list[str]) -> dict:
    msg = f"Unsupported value: {go_value(value)}"
    if valid:
        msg += ": supported values: " + ", ".join(go_quote(v) for v in valid)
    return {"type": "FieldValueNotSupported", "field": field, "message": msg}


def duplicate(field: str, value: Any) -> dict:
    return {"type": "FieldValueDuplicate", "field": field, "message": f"Duplicate value: {go_value(value)}"}


def _dedup(causes: list[dict]) -> list[dict]:
    """kube's ``ToAggregate`` drops repeated messages; do it here since for_fields builds the message from causes."""
    if len(causes) < 2:
        return causes
    seen: set[tuple[str, str]] = set()
    out = []
    for c in causes:
        key = (c["field"], c["message"])
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out

# ---------------------------------------------------------------------------------------------------
# ObjectMeta


def validate_labels(labels: Any, field: str = "metadata.labels") -> list[dict]:
    """``metav1validation.ValidateLabels``: key and value errors are both reported on the map's path."""
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [type_invalid(field, labels, "must be a map of string keys to string values")]
    causes = []
    for key, value in labels.items():
        for msg in is_qualified_name(key):
            causes.append(invalid(field, key, msg))
        if not isinstance(value, str):
            causes.append(type_invalid(f"{field}[{key}]", value, "must be a string"))
            continue
        for msg in is_valid_label_value(value):
            causes.append(invalid(field, value, msg))
    return causes


def validate_annotations(annotations: Any, field: str = "metadata.annotations") -> list[dict]:
    """Keys are qualified names compared lower-cased; keys plus values may total 256 KiB."""
    if annotations is None:
        return []
    if not isinstance(annotations, dict):
        return [type_invalid(field, annotations, "must be a map of string keys to string values")]
    causes = []
    total = 0
    for key, value in annotations.items():
        for msg in is_qualified_name(key.lower()):
            causes.append(invalid(field, key, msg))
        if not isinstance(value, str):
            causes.append(type_invalid(f"{field}[{key}]", value, "must be a string"))
            continue
        total += _byte_len(key) + _byte_len(value)
    if total > TOTAL_ANNOTATION_SIZE_LIMIT_B:
        causes.append(too_long(field, TOTAL_ANNOTATION_SIZE_LIMIT_B))
    return causes


def validate_finalizers(finalizers: Any, field: str = "metadata.finalizers") -> list[dict]:
    if finalizers is None:
        return []
    if not isinstance(finalizers, list):
        return [type_invalid(field, finalizers, "must be a list of strings")]
    causes = []
    for fin in finalizers:
        if not isinstance(fin, str):
            causes.append(type_invalid(field, fin, "must be a string"))
            continue
        for msg in is_qualified_name(fin):
            causes.append(invalid(field, fin, msg))
    if "orphan" in finalizers and "foregroundDeletion" in finalizers:
        causes.append(invalid(field, finalizers, "finalizer orphan and foregroundDeletion cannot be both set"))
    return causes


def validate_owner_references(refs: Any, field: str = "metadata.ownerReferences") -> list[dict]:
    if refs is None:
        return []
    if not isinstance(refs, list):
        return [type_invalid(field, refs, "must be a list of objects")]
    causes = []
    first_controller = ""
    for ref in refs:
        if not isinstance(ref, dict):
            causes.append(type_invalid(field, ref, "must be an object"))
            continue
        api_version = ref.get("apiVersion") or ""
        kind = ref.get("kind") or ""
        version = api_version.rpartition("/")[2] if isinstance(api_version, str) else ""
        if not version:
            causes.append(invalid(f"{field}.apiVersion", api_version, "version must not be empty"))
        if not kind:
            causes.append(invalid(f"{field}.kind", kind, "kind must not be empty"))
        if not ref.get("name"):
            causes.append(invalid(f"{field}.name", ref.get("name") or "", "name must not be empty"))
        if not ref.get("uid"):
            causes.append(invalid(f"{field}.uid", ref.get("uid") or "", "uid must not be empty"))
        if api_version == "v1" and kind == "Event":
            causes.append(invalid(field, ref, "/v1, Kind=Event is disallowed from being an owner"))
        if ref.get("controller") is True:
            current = f"{kind}/{ref.get('name') or ''}"
            if first_controller:
                causes.append(invalid(field, refs, 'Only one reference can have Controller set to true. Found "true" '
                                                   f"in references for {first_controller} and {current}"))
            else:
                first_controller = current
    return causes


def validate_object_meta(obj: dict, *, namespaced: bool, name_rule: str = "subdomain") -> list[dict]:
    """``ValidateObjectMetaAccessor`` for a create (or any full write) of ``obj``.

    ``name_rule`` is ``subdomain`` (most kinds and all custom resources), ``label`` (namespaces) or ``path``
    (kinds like RBAC roles whose names only need to be a URL path segment). With no name but a
    ``generateName``, only the prefix is checked: the name is generated from it afterwards.
    """
    meta = obj.get("metadata")
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict):
        return [type_invalid("metadata", meta, "must be an object")]
    name_fn = NAME_RULES.get(name_rule)
    if name_fn is None:
        raise ValueError(f"name_rule must be one of {', '.join(NAME_RULES)}, not {name_rule!r}")
    causes: list[dict] = []

    name = meta.get("name") or ""
    generate = meta.get("generateName") or ""
    if not isinstance(generate, str):
        causes.append(type_invalid("metadata.generateName", generate, "must be a string"))
        generate = ""
    elif generate:
        causes.extend(invalid("metadata.generateName", generate, m) for m in name_fn(generate, True))
    if not isinstance(name, str):
        causes.append(type_invalid("metadata.name", name, "must be a string"))
    elif name:
        causes.extend(invalid("metadata.name", name, m) for m in name_fn(name, False))
    elif not generate:
        causes.append(required("metadata.name", "name or generateName is required"))

    namespace = meta.get("namespace") or ""
    if not isinstance(namespace, str):
        causes.append(type_invalid("metadata.namespace", namespace, "must be a string"))
    elif namespaced:
        if not namespace:
            causes.append(required("metadata.namespace"))
        else:
            causes.extend(invalid("metadata.namespace", namespace, m) for m in name_is_dns_label(namespace))
    elif namespace:
        causes.append(forbidden("metadata.namespace", "not allowed on this type"))

    generation = meta.get("generation")
    if isinstance(generation, int) and not isinstance(generation, bool) and generation < 0:
        causes.append(invalid("metadata.generation", generation, IS_NEGATIVE_ERROR))

    causes.extend(validate_labels(meta.get("labels")))
    causes.extend(validate_annotations(meta.get("annotations")))
    causes.extend(validate_owner_references(meta.get("ownerReferences")))
    causes.extend(validate_finalizers(meta.get("finalizers")))
    return _dedup(causes)


def validate_object_meta_update(new: dict, old: dict) -> list[dict]:
    """The update-only rules of ``ValidateObjectMetaAccessorUpdate`` (run it after ``validate_object_meta``).

    Identity fields are immutable, and a terminating object may lose finalizers but not gain new ones.
    resourceVersion presence is left to the caller: it depends on whether the kind allows unconditional updates.
    """
    new_meta = new.get("metadata") or {}
    old_meta = old.get("metadata") or {}
    causes: list[dict] = []
    if old_meta.get("deletionTimestamp"):
        old_fins = set(old_meta.get("finalizers") or ())
        added = sorted({f for f in new_meta.get("finalizers") or () if f not in old_fins})
        if added:
            shown = "[]string{" + ", ".join(go_quote(f) for f in added) + "}"
            causes.append(forbidden("metadata.finalizers", "no new finalizers can be added if the object is being "
                                                           f"deleted, found new finalizers {shown}"))
    for key in ("name", "namespace", "uid", "creationTimestamp"):
        new_value = new_meta.get(key) or ""
        if new_value != (old_meta.get(key) or ""):
            causes.append(invalid(f"metadata.{key}", new_value, FIELD_IMMUTABLE_ERROR))
    return causes

# ---------------------------------------------------------------------------------------------------
# generateName

GENERATED_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
GENERATED_SUFFIX_LENGTH = 5
MAX_GENERATE_NAME_PREFIX = 63 - GENERATED_SUFFIX_LENGTH  # 58
_rng = random.Random()


def generate_name(prefix: str) -> str:
    """``names.SimpleNameGenerator``: prefix cut to 58 chars plus 5 random consonants/digits (no vowels, no 0/1/3)."""
    return prefix[:MAX_GENERATE_NAME_PREFIX] + "".join(_rng.choices(GENERATED_SUFFIX_ALPHABET,
                                                                    k=GENERATED_SUFFIX_LENGTH))
