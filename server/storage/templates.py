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

A *named* template is instantiated many times in one cluster, once per name (a workspace's owner grants in its
parent, one pair per child workspace): its object names are a prefix followed by :data:`NAME`, and :data:`NAME` and
:data:`OWNER` anywhere in their content stand for the instance's name and owner. Its ``named`` is the family it
belongs to (the versions of one template the code made over time): a cluster has one instance per family and name,
whichever version it was made from. Its instance row is ``INSTANCES``/<cluster>/<name>/<template>.
"""

from __future__ import annotations

import hashlib
import sys
import uuid
from typing import NamedTuple

import orjson

#: Storage keys of the internal rows; no API resource maps to them.
TEMPLATES = "kcp.internal/templates"
INSTANCES = "kcp.internal/instances"
#: The value of a row that hides a template object (the object was deleted): ``{TOMBSTONE: <instance rv>}``.
TOMBSTONE = "kcp.internal/tombstone"

#: What a named template's objects say where the instance's name and owner belong.
NAME = "$(kcp.name)"
OWNER = "$(kcp.owner)"

_UID_NAMESPACE = uuid.UUID("6f1c1d8e-3b0f-4c43-9a57-5a8f0d7a4c11")


class TemplateObject(NamedTuple):
    resource: str
    namespace: str
    name: str
    index: int  # its resourceVersion is the instance's first reserved one plus this
    obj: dict
    params: tuple[str, ...] = ()  # in a named template: the top-level fields that mention NAME or OWNER

    def name_in(self, instance_name: str) -> str:
        """The object's name in the instance of that name."""
        return self.name.replace(NAME, instance_name) if instance_name else self.name


class Template:
    """Objects shared by every cluster that instantiates it; ``cluster_annotation`` is set to the cluster's name.
    ``owner_binding``: the (resource, namespace, name) of a binding whose first subject is each instance's owner (so
    a workspace's owner grant costs no row of its own either)."""

    def __init__(self, objects: list[tuple[str, str, str, dict]], cluster_annotation: str,
                 owner_binding: tuple[str, str, str] | None = None, named: str = ""):
        self.cluster_annotation = cluster_annotation
        self.owner_binding = tuple(owner_binding) if owner_binding else None
        self.named = named
        if named and not all(n.endswith(NAME) and n != NAME for _, _, n, _ in objects):
            raise ValueError(f"the objects of a named template are named <prefix>{NAME}")
        self.objects = [TemplateObject(r, ns, n, i, obj, tuple(k for k, v in obj.items() if k != "metadata" and (
            NAME.encode() in orjson.dumps(v) or OWNER.encode() in orjson.dumps(v))) if named else ())
            for i, (r, ns, n, obj) in enumerate(objects)]
        # resource -> (namespace, name prefix) -> object: how a named template finds the object a key names
        self.prefixes = {r: {(e.namespace, e.name[:-len(NAME)]): e for e in self.objects if e.resource == r}
                         for r in {e.resource for e in self.objects}} if named else {}
        self.by_resource: dict[str, dict[tuple[str, str], TemplateObject]] = {}
        for entry in self.objects:
            self.by_resource.setdefault(entry.resource, {})[(entry.namespace, entry.name)] = entry
        self.sorted_keys = {resource: sorted(entries) for resource, entries in self.by_resource.items()}
        content = {"clusterAnnotation": cluster_annotation,
                   "objects": [[e.resource, e.namespace, e.name, e.obj] for e in self.objects]}
        if self.owner_binding:
            content["ownerBinding"] = list(self.owner_binding)
        if named:
            content["named"] = named
        self.encoded = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
        self.name = "t-" + hashlib.sha256(self.encoded).hexdigest()[:16]

    @classmethod
    def decode(cls, value: bytes) -> "Template":
        data = orjson.loads(value)
        return cls([tuple(o) for o in data["objects"]], data["clusterAnnotation"], data.get("ownerBinding"),
                   data.get("named") or "")

    def match(self, resource: str, namespace: str, name: str) -> tuple[TemplateObject, str] | None:
        """The object of a named template that ``name`` is an instance of, with that instance's name."""
        for (ns, prefix), entry in (self.prefixes.get(resource) or {}).items():
            if ns == namespace and len(name) > len(prefix) and name.startswith(prefix):
                return entry, name[len(prefix):]
        return None

    def __len__(self) -> int:
        return len(self.objects)


class Instance:
    """One cluster's use of a template: about 200 bytes, all a workspace's default content costs in memory."""

    __slots__ = ("template", "cluster", "uid", "created", "rv", "owner", "name")

    def __init__(self, template: Template, cluster: str, uid: str, created: str, rv: int, owner: str = "",
                 name: str = ""):
        self.template = template
        self.cluster = cluster
        self.uid = uid
        self.created = sys.intern(created)  # (the workspaces made in one second share one string, as one owner's)
        self.rv = rv  # of the instance row; its objects have the len(template) revisions just below
        self.owner = sys.intern(owner)  # the user the template's owner binding (or OWNER) names
        self.name = name  # an instance of a named template: what NAME stands for

    @property
    def first_rv(self) -> int:
        return self.rv - len(self.template)

    def entry(self, resource: str, namespace: str, name: str) -> TemplateObject | None:
        if self.name:
            match = self.template.match(resource, namespace, name)
            return match[0] if match is not None and match[1] == self.name else None
        entries = self.template.by_resource.get(resource)
        return entries.get((namespace, name)) if entries is not None else None

    def materialize(self, entry: TemplateObject, rv: int | None = None) -> dict:
        """The object as this cluster's own (a fresh dict; ``rv`` overrides its resourceVersion: a deletion's)."""
        obj = self.fields(entry)
        md = dict(entry.obj.get("metadata") or {})
        name = entry.name_in(self.name)
        if self.name:
            md["name"] = name
        md["uid"] = str(uuid.uuid5(_UID_NAMESPACE, f"{self.uid}/{entry.resource}/{entry.namespace}/{name}"))
        md["creationTimestamp"] = self.created
        md["resourceVersion"] = str(self.first_rv + entry.index if rv is None else rv)
        md["annotations"] = {**(md.get("annotations") or {}), self.template.cluster_annotation: self.cluster}
        managed = md.get("managedFields")
        if managed:
            md["managedFields"] = [{**e, "time": self.created} if "time" in e else e for e in managed]
        obj["metadata"] = md
        return obj

    def fields(self, entry: TemplateObject, only: tuple[str, ...] | None = None) -> dict:
        """The object's top-level fields but metadata as this instance has them (``only``: just those), a fresh
        dict; what an index that needs a few fields of many objects asks for, instead of the whole object."""
        obj = {k: v for k, v in entry.obj.items() if k != "metadata" and (only is None or k in only)}
        for field in entry.params:
            if field in obj:
                obj[field] = self._substitute(obj[field])
        if (self.owner and "subjects" in obj
                and (entry.resource, entry.namespace, entry.name) == self.template.owner_binding):
            first, *rest = obj["subjects"]
            obj["subjects"] = [{**first, "name": self.owner}, *rest]
        return obj

    def _substitute(self, value):
        encoded = orjson.dumps(value).replace(NAME.encode(), orjson.dumps(self.name)[1:-1])
        return orjson.loads(encoded.replace(OWNER.encode(), orjson.dumps(self.owner)[1:-1]))

    def record(self) -> bytes:
        record = {"template": self.template.name, "uid": self.uid, "creationTimestamp": self.created}
        if self.owner:
            record["owner"] = self.owner
        return orjson.dumps(record)
