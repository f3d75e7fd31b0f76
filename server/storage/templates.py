"""Content every logical cluster starts with, stored once and shared by all of them (copy-on-write).

Each new workspace gets the same default ClusterRoles, bindings, ``default`` Namespace and ServiceAccount. Written
for real they cost a dozen rows and tens of KiB of memory per workspace, all identical but for a few metadata
fields. A :class:`Template` holds them once; a cluster *instantiates* it with one backend row
(``INSTANCES``/<cluster>) that reserves one resourceVersion per object, and from then on the store serves each
object as kube would show it: its own uid (a uuid5 of the instance's uid and the object's key), the instance's
creationTimestamp, its reserved resourceVersion, the cluster's annotation. The first write of a tenant to one of
them makes it a real row (an update) or a tombstone row (a delete), which shadows the template from then on.

The template itself is persisted too (``TEMPLATES``/<name>, named by a hash of its content), so an instance keeps
its exact content across restarts even when the code's defaults change.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import NamedTuple

import orjson

#: Storage keys of the internal rows; no API resource maps to them.
TEMPLATES = "kcp.internal/templates"
INSTANCES = "kcp.internal/instances"
#: The value of a row that hides a template object (the object was deleted): ``{TOMBSTONE: <instance rv>}``.
TOMBSTONE = "kcp.internal/tombstone"

_UID_NAMESPACE = uuid.UUID("6f1c1d8e-3b0f-4c43-9a57-5a8f0d7a4c11")


class TemplateObject(NamedTuple):
    resource: str
    namespace: str
    name: str
    index: int  # its resourceVersion is the instance's first reserved one plus this
    obj: dict


class Template:
    """Objects shared by every cluster that instantiates it; ``cluster_annotation`` is set to the cluster's name.
    ``owner_binding``: the (resource, namespace, name) of a binding whose first subject is each instance's owner (so
    a workspace's owner grant costs no row of its own either)."""

    def __init__(self, objects: list[tuple[str, str, str, dict]], cluster_annotation: str,
                 owner_binding: tuple[str, str, str] | None = None):
        self.cluster_annotation = cluster_annotation
        self.owner_binding = tuple(owner_binding) if owner_binding else None
        self.objects = [TemplateObject(r, ns, n, i, obj) for i, (r, ns, n, obj) in enumerate(objects)]
        self.by_resource: dict[str, dict[tuple[str, str], TemplateObject]] = {}
        for entry in self.objects:
            self.by_resource.setdefault(entry.resource, {})[(entry.namespace, entry.name)] = entry
        self.sorted_keys = {resource: sorted(entries) for resource, entries in self.by_resource.items()}
        content = {"clusterAnnotation": cluster_annotation,
                   "objects": [[r, ns, n, obj] for r, ns, n, _, obj in self.objects]}
        if self.owner_binding:
            content["ownerBinding"] = list(self.owner_binding)
        self.encoded = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
        self.name = "t-" + hashlib.sha256(self.encoded).hexdigest()[:16]

    @classmethod
    def decode(cls, value: bytes) -> "Template":
        data = orjson.loads(value)
        return cls([tuple(o) for o in data["objects"]], data["clusterAnnotation"], data.get("ownerBinding"))

    def __len__(self) -> int:
        return len(self.objects)


class Instance:
    """One cluster's use of a template: about 200 bytes, all a workspace's default content costs in memory."""

    __slots__ = ("template", "cluster", "uid", "created", "rv", "owner")

    def __init__(self, template: Template, cluster: str, uid: str, created: str, rv: int, owner: str = ""):
        self.template = template
        self.cluster = cluster
        self.uid = uid
        self.created = created
        self.rv = rv
        self.owner = owner  # the user the template's owner binding names  # of the instance row; the objects have rv - len(template) + 1 + index... see ``object_rv``

    @property
    def first_rv(self) -> int:
        return self.rv - len(self.template)

    def entry(self, resource: str, namespace: str, name: str) -> TemplateObject | None:
        entries = self.template.by_resource.get(resource)
        return entries.get((namespace, name)) if entries is not None else None

    def materialize(self, entry: TemplateObject, rv: int | None = None) -> dict:
        """The object as this cluster's own (a fresh dict; ``rv`` overrides its resourceVersion: a deletion's)."""
        obj = dict(entry.obj)
        md = dict(obj.get("metadata") or {})
        md["uid"] = str(uuid.uuid5(_UID_NAMESPACE, f"{self.uid}/{entry.resource}/{entry.namespace}/{entry.name}"))
        md["creationTimestamp"] = self.created
        md["resourceVersion"] = str(self.first_rv + entry.index if rv is None else rv)
        md["annotations"] = {**(md.get("annotations") or {}), self.template.cluster_annotation: self.cluster}
        managed = md.get("managedFields")
        if managed:
            md["managedFields"] = [{**e, "time": self.created} if "time" in e else e for e in managed]
        obj["metadata"] = md
        if self.owner and (entry.resource, entry.namespace, entry.name) == self.template.owner_binding:
            first, *rest = obj["subjects"]
            obj["subjects"] = [{**first, "name": self.owner}, *rest]
        return obj

    def record(self) -> bytes:
        record = {"template": self.template.name, "uid": self.uid, "creationTimestamp": self.created}
        if self.owner:
            record["owner"] = self.owner
        return orjson.dumps(record)
