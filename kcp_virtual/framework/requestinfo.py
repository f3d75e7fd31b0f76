"""Turn a request path and method into Kubernetes request attributes (kube's RequestInfoFactory).

The same attributes feed authorization, logging and the REST handlers, so they are computed
once per request from the path that remains after ``/clusters/<cluster>`` (or a virtual
workspace's prefix) is stripped. Shared by the shard and the virtual workspaces.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

__all__ = ["RequestInfo", "parse_request_info"]

_NAMESPACE_SUBRESOURCES = ("status", "finalize")

# Verbs the REST layer knows, by HTTP method.
_METHOD_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete",
                 "GET": "get", "HEAD": "get"}


@dataclass(slots=True)
class RequestInfo:
    """What a request is about. ``is_resource`` is False for discovery and other non-resource paths."""

    path: str
    verb: str
    is_resource: bool = False
    api_prefix: str = ""      # "api" or "apis"
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    parts: tuple = ()         # the path segments after api/apis for non-resource discovery paths
    #: A list or watch narrowed to one object by ``fieldSelector=metadata.name=<name>`` names it here; kube
    #: authorizes it as a request on that name, so RBAC ``resourceNames`` can grant watching one object.
    selected_name: str = ""

    def prefix_is_core(self) -> bool:
        return self.api_prefix == "api"

    @property
    def authorized_name(self) -> str:
        """The name authorization sees: the path's, or the one a list or watch selects."""
        return self.name or self.selected_name


def _split(path: str) -> list[str]:
    return [p for p in path.strip("/").split("/") if p != ""] if path.strip("/") else []


def parse_request_info(method: str, path: str, query: dict) -> RequestInfo:
    """Parse ``/api/v1/...`` or ``/apis/<g>/<v>/...``; anything else is a non-resource request.

    ``query`` is a mapping of query parameters (``watch`` turns get/list into watch).
    """
    segments = _split(path)
    verb_default = method.lower()
    if not segments or segments[0] not in ("api", "apis"):
        return RequestInfo(path=path, verb=verb_default)
    prefix = segments[0]
    rest = segments[1:]
    info = RequestInfo(path=path, verb=verb_default, api_prefix=prefix)
    if prefix == "api":
        if not rest:
            info.parts = ()
            return info
        info.version, rest = rest[0], rest[1:]
    else:
        if len(rest) < 2:
            info.group = rest[0] if rest else ""
            info.parts = tuple(rest)
            return info
        info.group, info.version, rest = rest[0], rest[1], rest[2:]
    if not rest:
        return info  # group/version discovery document
    info.is_resource = True
    # /namespaces/{ns}/{resource}... ; /namespaces/{name}[/{sub}] is the namespace object itself.
    if rest[0] == "namespaces" and len(rest) > 1:
        info.namespace = sys.intern(rest[1])  # kept by every watch in it: one string per namespace
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    info.resource = sys.intern(rest[0])
    if len(rest) >= 2:
        info.name = rest[1]
    if len(rest) >= 3:
        info.subresource = rest[2]
    if len(rest) > 3:
        info.is_resource = False  # deeper paths are not Kubernetes resource paths
        return info
    if info.resource == "namespaces" and info.prefix_is_core():
        info.namespace = info.name if info.name else ""
    watch = query.get("watch") in ("true", "1")
    if method in ("GET", "HEAD"):
        if not info.name:
            info.verb = "watch" if watch else "list"
        else:
            info.verb = "watch" if watch else "get"
    elif method == "DELETE" and not info.name:
        info.verb = "deletecollection"
    else:
        info.verb = _METHOD_VERBS.get(method, verb_default)
    if info.verb in ("list", "watch") and "metadata.name" in (query.get("fieldSelector") or ""):
        info.selected_name = _exact_name(query["fieldSelector"])
    return info


def _exact_name(field_selector: str) -> str:
    """The value of a ``metadata.name=`` (or ``==``) term of a field selector, if it is a valid path segment
    (kube's ``RequiresExactMatch`` with ``IsValidPathSegmentName``); "" when there is none."""
    for term in field_selector.split(","):
        field, operator, value = term.strip().partition("==")
        if not operator:
            field, operator, value = term.strip().partition("=")
        if operator and field.strip() == "metadata.name":
            value = value.strip()
            if value and value not in (".", "..") and "/" not in value and "%" not in value:
                return value
    return ""
