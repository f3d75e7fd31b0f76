"""Per-target spec overrides: a JSON patch in ``experimental.spec-diff.workload.kcp.dev/<key>``, applied to ``spec``.

As in kcp, the patch's root is the object's ``spec`` (``[{"op": "replace", "path": "/replicas", "value": 1}]``),
it changes that target's view only, and it is applied last, after the splitter: an override of
``/replicas`` wins over the target's share without changing the other targets' shares. Objects without a
``spec`` (ConfigMaps, Secrets) have nothing it could apply to, so the shard refuses the annotation there.

``parse`` checks the annotation's shape; the shard calls it when the annotation is written, so a
malformed patch is a 422 for the user who wrote it. A well-formed patch can still fail to apply (a path
the spec no longer has): that target's view then shows the spec without the override, and the failure is
logged, rather than failing every read of the target's view.
"""

from __future__ import annotations

from functools import lru_cache

import jsonpatch
import jsonpointer
import orjson

__all__ = ["parse", "apply", "SpecDiffError"]

_OPS = {"add": ("path", "value"), "remove": ("path",), "replace": ("path", "value"), "move": ("from", "path"),
        "copy": ("from", "path"), "test": ("path", "value")}


class SpecDiffError(ValueError):
    """A spec-diff annotation that is not a JSON patch, or that cannot be applied to the spec."""


@lru_cache(maxsize=1024)
def _compiled(value: str) -> jsonpatch.JsonPatch:
    try:
        ops = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise SpecDiffError(f"must be a JSON patch (RFC 6902), a JSON array of operations: {exc}") from None
    if not isinstance(ops, list):
        raise SpecDiffError("must be a JSON patch (RFC 6902), a JSON array of operations")
    for index, op in enumerate(ops):
        if not isinstance(op, dict) or op.get("op") not in _OPS:
            raise SpecDiffError(f"operation {index} must be an object whose op is one of {', '.join(_OPS)}")
        for member in _OPS[op["op"]]:
            if member not in op:
                raise SpecDiffError(f'operation {index} ({op["op"]}) needs "{member}"')
        for pointer in ("path", "from"):
            if pointer in op and not (isinstance(op[pointer], str)
                                      and (op[pointer] == "" or op[pointer].startswith("/"))):
                raise SpecDiffError(f'operation {index}: "{pointer}" must be a JSON pointer into spec, such as '
                                    f'"/replicas"')
    return jsonpatch.JsonPatch(ops)


def parse(value) -> None:
    """Raise ``SpecDiffError`` unless ``value`` is a well-formed JSON patch."""
    if not isinstance(value, str):
        raise SpecDiffError("must be a string holding a JSON patch")
    _compiled(value)


def apply(spec: dict, value: str) -> dict:
    """``spec`` patched by the annotation ``value`` (a new dict; ``spec`` is not changed)."""
    try:
        patched = _compiled(value).apply(spec)
    except SpecDiffError:
        raise
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, KeyError, IndexError,
            TypeError) as exc:
        raise SpecDiffError(f"cannot be applied to spec: {str(exc).split(' in {', 1)[0]}") from None
    if not isinstance(patched, dict):
        raise SpecDiffError("would replace spec by something that is not an object")
    return patched
