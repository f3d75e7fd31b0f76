"""Discovery documents (legacy and aggregated v2) computed from a list of resource types.

Kept independent of the shard so a virtual workspace can serve discovery for exactly the
types it exposes: pass it a different list. A type is anything with the attributes of
``server.registry.resourcetype.ResourceType`` used here (group, version, kind, plural, singular,
namespaced, short_names, categories, verbs, subresources, subresource_verbs(), group_version).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable

__all__ = ["AGGREGATED_CONTENT_TYPE", "api_versions", "api_group_list", "api_group", "api_resource_list",
           "aggregated", "root_paths", "HEALTH_PATHS"]

ResourceType = Any  # duck-typed, see the module docstring

AGGREGATED_CONTENT_TYPE = "application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList"


def _by_group(types: Iterable[ResourceType]) -> "OrderedDict[str, OrderedDict[str, list[ResourceType]]]":
    groups: OrderedDict[str, OrderedDict[str, list[ResourceType]]] = OrderedDict()
    for rt in types:
        groups.setdefault(rt.group, OrderedDict()).setdefault(rt.version, []).append(rt)
    return groups


HEALTH_PATHS = ("/healthz", "/livez", "/readyz")


def root_paths(types: Iterable[ResourceType], extra: Iterable[str] = HEALTH_PATHS) -> list[str]:
    """``GET /``: every path served, as kube lists them (``{"paths": [...]}``)."""
    paths = {"/api", "/api/v1", "/apis", "/openapi/v2", "/openapi/v3", "/version", *extra}
    for rt in types:
        if rt.group:
            paths.update((f"/apis/{rt.group}", f"/apis/{rt.group}/{rt.version}"))
    return sorted(paths)


def api_versions(types: Iterable[ResourceType], server_address: str) -> dict:
    """``/api``: the core group's versions."""
    versions = list(_by_group(types).get("", {}).keys()) or ["v1"]
    return {"kind": "APIVersions", "versions": versions,
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}


def _group_entry(name: str, versions: Iterable[str]) -> dict:
    items = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": items, "preferredVersion": items[0]}


def api_group_list(types: Iterable[ResourceType]) -> dict:
    """``/apis``: every named group, first version preferred."""
    groups = [_group_entry(g, versions) for g, versions in _by_group(types).items() if g]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(types: Iterable[ResourceType], group: str) -> dict | None:
    """``/apis/<group>``, or None when the group is not served."""
    versions = _by_group(types).get(group)
    if not group or not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_entry(group, versions)}


def api_resource_list(types: Iterable[ResourceType], group: str, version: str) -> dict | None:
    """``/api/v1`` or ``/apis/<g>/<v>``: resources and their subresources, or None when not served."""
    served = _by_group(types).get(group, {}).get(version)
    if not served:
        return None
    resources = []
    for rt in served:
        entry = {"name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced, "kind": rt.kind,
                 "verbs": sorted(rt.verbs)}
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        resources.append(entry)
        for sub in rt.subresources:
            resources.append({"name": f"{rt.plural}/{sub}", "singularName": "", "namespaced": rt.namespaced,
                              "kind": rt.kind, "verbs": rt.subresource_verbs(sub)})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": served[0].group_version,
            "resources": resources}


def aggregated(types: Iterable[ResourceType], *, core: bool, version: str = "v2") -> dict:
    """``/api`` (core=True) or ``/apis`` as an ``APIGroupDiscoveryList``; first version is preferred."""
    items = []
    for group, versions in _by_group(types).items():
        if (group == "") != core:
            continue
        entries = []
        for v, served in versions.items():
            resources = []
            for rt in served:
                kind_ref = {"group": rt.group, "version": rt.version, "kind": rt.kind}
                entry = {"resource": rt.plural, "responseKind": kind_ref,
                         "scope": "Namespaced" if rt.namespaced else "Cluster", "singularResource": rt.singular,
                         "verbs": sorted(rt.verbs)}
                if rt.short_names:
                    entry["shortNames"] = list(rt.short_names)
                if rt.categories:
                    entry["categories"] = list(rt.categories)
                if rt.subresources:
                    entry["subresources"] = [{"subresource": sub, "responseKind": kind_ref,
                                              "verbs": rt.subresource_verbs(sub)} for sub in rt.subresources]
                resources.append(entry)
            entries.append({"version": v, "resources": resources, "freshness": "Current"})
        items.append({"metadata": {"name": group, "creationTimestamp": None}, "versions": entries})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": f"apidiscovery.k8s.io/{version}", "metadata": {},
            "items": items}
