"""The ``scale`` subresource: an ``autoscaling/v1`` Scale view of an object's replicas (``kubectl scale``).

Deployments have it built in (``spec.replicas``, ``status.replicas``, their selector); custom resources
declare the paths in their CRD (``subresources.scale``). GET answers the Scale; PUT and PATCH (JSON,
merge or strategic merge, the same for a Scale) write ``spec.replicas`` back into the object through the
registry, so its validation, generation and optimistic concurrency apply (a Scale's resourceVersion is
the object's).
"""

from __future__ import annotations

from typing import Callable

import orjson

from kcp_virtual.framework import errors
from server.registry import patch as patches
from server.registry.generic import Registry
from server.registry.resourcetype import RequestContext, ResourceType
from server.registry.validation import invalid

__all__ = ["SCALE_API_VERSION", "get_path", "scale_handlers"]

SCALE_API_VERSION = "autoscaling/v1"


def get_path(obj, steps: list[str]):
    for step in steps:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(step)
    return obj


def _set_path(obj: dict, steps: list[str], value) -> None:
    for step in steps[:-1]:
        obj = obj.setdefault(step, {})
    obj[steps[-1]] = value


def scale_handlers(holder: list[ResourceType], spec_path: list[str], status_path: list[str],
                   selector: Callable[[dict], str | None] | None = None) -> dict:
    """Handlers of get/update/patch on ``scale`` for the type ``holder[0]`` (a list, filled once the type
    exists); ``selector(obj)`` is the label selector string shown in ``status.selector``."""

    def to_scale(obj: dict) -> dict:
        meta = obj["metadata"]
        status = {"replicas": get_path(obj, status_path) or 0}
        shown = selector(obj) if selector is not None else None
        if shown is not None:
            status["selector"] = shown
        return {"kind": "Scale", "apiVersion": SCALE_API_VERSION,
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                                  "creationTimestamp") if k in meta},
                "spec": {"replicas": get_path(obj, spec_path) or 0}, "status": status}

    def write(ctx: RequestContext, scale_obj) -> tuple[int, dict]:
        rt = holder[0]
        if not isinstance(scale_obj, dict) or not isinstance(scale_obj.get("spec"), dict):
            raise errors.BadRequest("the body of the request is not a Scale object")
        replicas = scale_obj["spec"].get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise errors.Invalid.for_fields("Scale", "autoscaling", ctx.name, [
                invalid("spec.replicas", replicas, "must be greater than or equal to 0")])
        registry: Registry = ctx.services.registry
        current = orjson.loads(orjson.dumps(registry.get(rt, ctx.cluster, ctx.namespace, ctx.name)))
        wanted_rv = (scale_obj.get("metadata") or {}).get("resourceVersion")
        if wanted_rv:
            current["metadata"]["resourceVersion"] = wanted_rv
        _set_path(current, spec_path, replicas)
        updated = registry.update(rt, ctx.cluster, ctx.namespace, ctx.name, current)
        return 200, to_scale(updated)

    def get(ctx: RequestContext) -> tuple[int, dict]:
        return 200, to_scale(ctx.services.registry.get(holder[0], ctx.cluster, ctx.namespace, ctx.name))

    def update(ctx: RequestContext) -> tuple[int, dict]:
        return write(ctx, ctx.body)

    def patch(ctx: RequestContext) -> tuple[int, dict]:
        current = to_scale(ctx.services.registry.get(holder[0], ctx.cluster, ctx.namespace, ctx.name))
        content_type = ctx.request.headers.get("Content-Type", "")
        if "json-patch" in content_type:
            patched = patches.json_patch(current, ctx.body)
        elif "merge-patch" in content_type or "strategic-merge-patch" in content_type:
            patched = patches.merge_patch(current, ctx.body)
        else:
            raise errors.UnsupportedMediaType(
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json")
        return write(ctx, patched)

    return {("get", "scale"): get, ("update", "scale"): update, ("patch", "scale"): patch}
