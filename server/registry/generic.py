"""The generic object store semantics of a Kubernetes API server, per logical cluster.

This is where create/update/patch/delete/list/watch get their meaning (uid, generation,
generateName, optimistic concurrency, finalizers, status subresource, selectors, paging,
resourceVersion rules); the HTTP layer only decodes requests and encodes results. The same
methods serve in-process callers such as controllers and embedded virtual workspaces.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from datetime import datetime, timezone

import orjson

from kcp_virtual.framework import decoding, errors, offhub
from server.registry import managedfields, patch as patches, strategicpatch, validation
from server.registry.resourcetype import Catalog, ResourceType
from server.registry.schema import builtins as builtin_schemas, structural, typecheck
from server.registry.schema.fieldvalidation import FieldValidation
from server.registry.selectors import FieldSelector, LabelSelector
from server.registry.watch import RegistryWatch
from server.storage import ConflictError, Key, KeyExistsError, KeyNotFoundError, ResourceExpiredError, Store
from server.storage.templates import Template

CLUSTER_ANNOTATION = "kcp.dev/cluster"
LOGICAL_CLUSTERS = "core.kcp.dev/logicalclusters"
WILDCARD = "*"
_GENERATE_NAME_ATTEMPTS = 8
_PATCH_ATTEMPTS = 16
#: Namespaces kube's NamespaceLifecycle admission never lets anyone delete (in every workspace here).
IMMORTAL_NAMESPACES = frozenset(("default", "kube-system", "kube-public"))
#: The field manager of writes that name none (in-process callers: controllers, virtual workspaces).
DEFAULT_FIELD_MANAGER = "kcp"


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class ListOptions:
    label_selector: LabelSelector | None = None
    field_selector: FieldSelector | None = None
    limit: int = 0
    continue_token: str = ""
    resource_version: str = ""
    resource_version_match: str = ""

    def matches(self, obj: dict) -> bool:
        if self.label_selector is not None and not self.label_selector.matches(
                (obj.get("metadata") or {}).get("labels")):
            return False
        return self.field_selector is None or self.field_selector.matches(obj)

    @property
    def filtered(self) -> bool:
        return self.label_selector is not None or self.field_selector is not None


class Registry:
    """CRUD, list and watch with Kubernetes semantics on top of a ``Store``."""

    def __init__(self, store: Store, catalog: Catalog):
        self.store = store
        self.catalog = catalog
        # fn(registry, cluster), run (idempotently) each time a logical cluster is ensured: default content
        self.cluster_hooks: list = []
        # storage keys of the kinds other shards' clusters are replicated here with (server.controllers.replication)
        self.replicated_resources: tuple[str, ...] = ()
        # The default content of a new logical cluster, shared by all (server.storage.templates); None: each gets
        # its own rows, written by ``cluster_hooks`` (and always on a backend that cannot reserve revisions).
        self.cluster_template: Template | None = None
        # The same for a cluster with an owner: with the owner's binding, its subject each instance's owner.
        self.owned_cluster_template: Template | None = None

    # ------------------------------------------------------------------ logical clusters

    def cluster_exists(self, cluster: str) -> bool:
        return self.store.get(Key(LOGICAL_CLUSTERS, cluster, "", "cluster")) is not None

    def ensure_logical_cluster(self, cluster: str, *, owner: str = "", prepare: Callable[[], None] | None = None,
                               annotations: dict[str, str] | None = None) -> None:
        """Create logical cluster ``cluster`` with its ``default`` namespace (idempotent). Its record comes last, after
        the content (and ``prepare()``), so a cluster that exists is complete: a retry after a crash half-way
        finishes it. With ``cluster_template`` the default content is one write of a template instance; without
        (or on a backend that cannot reserve revisions) the namespace and the ``cluster_hooks`` write rows."""
        key = Key(LOGICAL_CLUSTERS, cluster, "", "cluster")
        template = self.owned_cluster_template if owner and self.owned_cluster_template else self.cluster_template
        fresh = False
        if (template is not None and self.store.supports_templates and self.store.get(key) is None
                and not self.store.has_instance(cluster)):
            # The default content in one write (server.storage.templates): nothing for the hooks to add.
            try:
                self.store.instantiate(cluster, template, str(uuid.uuid4()), now_rfc3339(),
                                       owner if template is self.owned_cluster_template else "")
                fresh = True
            except KeyExistsError:
                pass  # another caller's, just now
        if not fresh:
            namespaces = self.catalog.lookup(cluster, "", "v1", "namespaces")
            if self.store.get(Key(namespaces.storage_key, cluster, "", "default")) is None:
                try:
                    self.create(namespaces, cluster, "", {"metadata": {"name": "default"}})
                except errors.AlreadyExists:
                    pass
            for hook in self.cluster_hooks:
                hook(self, cluster)
        if prepare is not None:
            prepare()
        if self.store.get(key) is None:
            obj = {"apiVersion": "core.kcp.dev/v1alpha1", "kind": "LogicalCluster",
                   "metadata": {"name": "cluster", "uid": str(uuid.uuid4()),
                                "creationTimestamp": now_rfc3339(),
                                "annotations": {**(annotations or {}), CLUSTER_ANNOTATION: cluster,
                                                **({"kcp.dev/owner": owner} if owner else {})}},
                   "status": {"phase": "Ready"}}
            try:
                self.store.create(key, obj)
            except KeyExistsError:
                pass

    def delete_logical_cluster(self, cluster: str) -> None:
        """Remove every object of ``cluster``, then the cluster itself."""
        self.store.drop_instances(cluster)
        for rt in self.catalog.types(cluster):
            items, _ = self.store.list(rt.storage_key, cluster, None)
            for item in items:
                meta = item["metadata"]
                try:
                    self.store.delete(Key(rt.storage_key, cluster, meta.get("namespace", ""), meta["name"]))
                except KeyNotFoundError:
                    pass
        try:
            self.store.delete(Key(LOGICAL_CLUSTERS, cluster, "", "cluster"))
        except KeyNotFoundError:
            pass

    def current_resource_version(self) -> int:
        """The store's resourceVersion now: every write acknowledged so far has one at most this high (the
        freshness the ``/services`` forwarder vouches for, ``X-Kcp-Shard-Resource-Version``)."""
        return self.store.current_rv()

    def require_cluster(self, cluster: str, *, replicas: bool = False) -> None:
        """404 unless ``cluster`` lives here -- or, with ``replicas``, this shard holds replicas of its objects
        (``replicated_resources``: another shard's cluster, read-only here)."""
        if cluster != WILDCARD and not self.cluster_exists(cluster) and not (replicas and self._holds_replicas(cluster)):
            raise errors.NotFound(f'logical cluster "{cluster}" not found', details={"name": cluster})

    def _holds_replicas(self, cluster: str) -> bool:
        return any(self.store.list(resource, cluster)[0] for resource in self.replicated_resources)

    # ------------------------------------------------------------------ reads

    def key(self, rt: ResourceType, cluster: str, namespace: str, name: str) -> Key:
        return Key(rt.storage_key, cluster, namespace if rt.namespaced else "", name)

    def get(self, rt: ResourceType, cluster: str, namespace: str, name: str) -> dict:
        obj = self.store.get(self.key(rt, cluster, namespace, name))
        if obj is None:
            raise errors.NotFound.for_resource(rt.plural, rt.group, name)
        return obj

    def list(self, rt: ResourceType, cluster: str, namespace: str, options: ListOptions) -> dict:
        """A ``<Kind>List`` with ``metadata.resourceVersion`` from which a watch misses nothing."""
        store_cluster = None if cluster == WILDCARD else cluster
        store_namespace = namespace if rt.namespaced and namespace else None
        exact = self._check_list_resource_version(rt, options, self.store.current_rv())
        if exact is not None:  # resourceVersionMatch=Exact in the past: the backend's history, if it keeps it
            try:
                items, rv = self.store.list_at(rt.storage_key, store_cluster, store_namespace, exact), exact
            except ResourceExpiredError:
                raise errors.Gone(f"too old resource version: {exact} ({self.store.current_rv()})") from None
        else:
            items, rv = self.store.list(rt.storage_key, store_cluster, store_namespace)
        start = None
        if options.continue_token:
            token_rv, start = self._decode_continue(options.continue_token)
            if token_rv < self.store.oldest_rv(rt.storage_key):
                raise errors.Gone(
                    "The provided continue parameter is too old to display a consistent list result. You can "
                    "start a new list without the continue parameter, or use the continue token in this "
                    "response to retrieve the remainder of the results. Continuing with the provided token "
                    "results in an inconsistent list - objects that were created, modified, or deleted between "
                    "the time the first chunk was returned and now may show up in the list.")
            rv = token_rv
        candidates = _after(items, start)
        selected: list[dict] = []
        continue_token = ""
        remaining = None
        for index, obj in enumerate(candidates):
            if not options.matches(obj):
                continue
            if options.limit and len(selected) == options.limit:
                continue_token = self._encode_continue(rv, _sort_key(selected[-1]))
                if not options.filtered:
                    remaining = len(candidates) - index
                break
            selected.append(obj)
        metadata: dict = {"resourceVersion": str(rv)}
        if continue_token:
            metadata["continue"] = continue_token
            if remaining is not None and remaining > 0:
                metadata["remainingItemCount"] = remaining
        return {"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": metadata, "items": selected}

    def _check_list_resource_version(self, rt: ResourceType, options: ListOptions, current: int) -> int | None:
        """Refuse what cannot be listed; the past resourceVersion of an ``Exact`` list, if it asks for one."""
        requested = options.resource_version
        if options.resource_version_match and not requested:
            raise errors.BadRequest("resourceVersionMatch is forbidden unless resourceVersion is provided")
        if requested in ("", "0"):
            return None
        rv = parse_resource_version(requested)
        if rv > current:
            current = self.store.catch_up(rv)  # etcd: other prefixes' writes move the revision too
        if rv > current:
            raise errors.Timeout(f"Too large resource version: {rv}, current: {current}",
                                 details={"causes": [{"type": "ResourceVersionTooLarge",
                                                      "message": "Too large resource version"}],
                                          "retryAfterSeconds": 1})
        if options.resource_version_match == "Exact" and rv != current:
            return rv
        return None

    @staticmethod
    def _encode_continue(rv: int, start: tuple) -> str:
        return base64.urlsafe_b64encode(orjson.dumps({"v": 1, "rv": rv, "start": list(start)})).decode()

    @staticmethod
    def _decode_continue(token: str) -> tuple[int, tuple]:
        try:
            data = orjson.loads(base64.urlsafe_b64decode(token.encode() + b"=" * (-len(token) % 4)))
            return int(data["rv"]), tuple(data["start"])
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            raise errors.BadRequest("continue key is not valid: malformed continue token") from None

    # ------------------------------------------------------------------ watch

    def watch(self, rt: ResourceType, cluster: str, namespace: str, options: ListOptions, *,
              send_initial_events: bool | None = None, bookmark_interval: float = 60.0,
              allow_bookmarks: bool = False, progress_notify: bool = False,
              deadline: float | None = None) -> RegistryWatch:
        """A push watch (``server.registry.watch``) of ``rt`` until ``deadline`` (monotonic) or ``close()``.

        Expired resource versions are reported as one ERROR event carrying a 410 Status, as the
        apiserver's watch cache does, never as an exception. ``progress_notify`` (with
        ``allow_bookmarks``) adds a BOOKMARK about every ``watch.PROGRESS_NOTIFY_INTERVAL`` whenever the
        watcher's progress went past what the client was last told -- also when only other resources
        were written -- so a watch-fed cache can prove it has seen everything up to a resourceVersion.
        Objects are shown in ``rt``'s version (``rt.convert``).
        """
        store_cluster = None if cluster == WILDCARD else cluster
        store_namespace = namespace if rt.namespaced and namespace else None
        requested = options.resource_version
        initial = send_initial_events if send_initial_events is not None else requested in ("", "0")
        bookmark = _bookmark_maker(rt.kind, rt.api_version)
        try:
            if initial:
                items, since = self.store.list(rt.storage_key, store_cluster, store_namespace)
                if requested not in ("", "0") and parse_resource_version(requested) > since:
                    raise errors.Timeout(f"Too large resource version: {requested}, current: {since}")
            else:
                since = parse_resource_version(requested)
                items = ()
            watcher = self.store.watch(rt.storage_key, store_cluster, store_namespace, since)
        except ResourceExpiredError as exc:
            return RegistryWatch.failed(errors.Gone(str(exc)).status(), bookmark)
        except errors.StatusError as exc:
            return RegistryWatch.failed(exc.status(), bookmark)
        return RegistryWatch(watcher, options, items, since, bookmark=bookmark,
                             send_initial=bool(send_initial_events), allow_bookmarks=allow_bookmarks,
                             progress=progress_notify, bookmark_interval=bookmark_interval, deadline=deadline,
                             convert=rt.convert)


    # ------------------------------------------------------------------ writes

    def create(self, rt: ResourceType, cluster: str, namespace: str, body: dict, *, dry_run: bool = False,
               field_validation: FieldValidation | None = None, field_manager: str | None = None,
               _applied: bool = False) -> dict:
        obj = self.new_object(rt, cluster, namespace, body, field_validation=field_validation,
                              field_manager=field_manager, _applied=_applied)
        meta = obj["metadata"]
        generate = not meta.get("name") and meta.get("generateName")
        for attempt in range(_GENERATE_NAME_ATTEMPTS if generate else 1):
            if generate:
                meta["name"] = validation.generate_name(meta["generateName"])
            key = self.key(rt, cluster, namespace, meta["name"])
            if dry_run:
                if self.store.get(key) is not None:
                    break
                return obj
            try:
                return self.store.create(key, obj)
            except KeyExistsError:
                continue
        if generate:
            raise errors.AlreadyExists(
                f'{rt.qualified} "{meta["name"]}" already exists, the server was not able to generate a unique '
                "name for the object", details={"name": meta["name"], "group": rt.group, "kind": rt.plural,
                                                "retryAfterSeconds": 1})
        raise errors.AlreadyExists.for_resource(rt.plural, rt.group, meta["name"])

    def new_object(self, rt: ResourceType, cluster: str, namespace: str, body: dict, *,
                   field_validation: FieldValidation | None = None, field_manager: str | None = None,
                   _applied: bool = False, in_namespace: bool = True) -> dict:
        """``body`` as a create would store it (validated, defaulted, uid, managedFields), not stored;
        ``in_namespace=False``: whether ``namespace`` exists is not asked (a template's object)."""
        obj, size = self._check_body(rt, body)
        offhub.run_if(size, self._conform, rt, obj, field_validation)
        meta = obj.setdefault("metadata", {})
        self._check_namespace(rt, cluster, namespace, meta)
        for server_field in ("uid", "resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds",
                             "selfLink"):
            meta.pop(server_field, None)
        meta["creationTimestamp"] = now_rfc3339()
        meta["uid"] = str(uuid.uuid4())
        meta["annotations"] = {**(meta.get("annotations") or {}), CLUSTER_ANNOTATION: cluster}
        if rt.tracks_generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        if rt.has_status and rt.plural != "namespaces":
            obj.pop("status", None)
        causes = rt.prepare(obj, None)
        rt.derive(obj)
        causes += offhub.run_if(size, _validation_causes, rt, obj, None)
        if causes:
            raise errors.Invalid.for_fields(rt.kind, rt.group, meta.get("name") or meta.get("generateName", ""),
                                            causes)
        if not _applied:  # server-side apply computed them already
            _set_managed_fields(obj, offhub.run_if(size, _managed_fields, rt, None, obj, field_manager, ""))
        if rt.namespaced and in_namespace:
            self._require_namespace(cluster, namespace)
        return obj

    def update(self, rt: ResourceType, cluster: str, namespace: str, name: str, body: dict, *,
               subresource: str = "", dry_run: bool = False, _expected_rv: int | None = None,
               field_validation: FieldValidation | None = None, field_manager: str | None = None,
               _applied: bool = False) -> dict:
        obj, size = self._check_body(rt, body)
        offhub.run_if(size, self._conform, rt, obj, field_validation)
        meta = obj.setdefault("metadata", {})
        if meta.get("name") and meta["name"] != name:
            raise errors.BadRequest(f"the name of the object ({meta['name']}) does not match the name on the URL "
                                    f"({name})")
        meta["name"] = name
        self._check_namespace(rt, cluster, namespace, meta)
        key = self.key(rt, cluster, namespace, name)
        old = self.store.get(key)
        if old is None:
            raise errors.NotFound.for_resource(rt.plural, rt.group, name)
        expected = _expected_rv
        if meta.get("resourceVersion"):
            expected = parse_resource_version(meta["resourceVersion"], field="metadata.resourceVersion")
        elif expected is None and not rt.allow_unconditional_update:
            raise errors.Invalid.for_fields(rt.kind, rt.group, name, [{
                "type": "FieldValueInvalid", "field": "metadata.resourceVersion",
                "message": "Invalid value: 0x0: must be specified for an update"}])
        if expected is not None and expected != _rv(old):
            raise errors.Conflict.modified(rt.plural, rt.group, name)
        new = self._merge_update(rt, old, obj, subresource)
        causes = [] if subresource else rt.prepare(new, old)
        rt.derive(new)
        causes += offhub.run_if(size, _validation_causes, rt, new, old)
        if causes:
            raise errors.Invalid.for_fields(rt.kind, rt.group, name, causes)
        if _applied and subresource:
            _set_managed_fields(new, obj["metadata"].get("managedFields"))
        if not _applied:  # server-side apply computed them already
            _set_managed_fields(new, offhub.run_if(size, _managed_fields, rt, old, new, field_manager, subresource))
        if _same(old, new):
            return old
        if dry_run:  # as stored, but not: the version stays
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            return new
        try:
            if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
                return self.store.delete(key, expected_rv=_rv(old))
            return self.store.update(key, new, expected_rv=_rv(old))
        except (ConflictError, KeyNotFoundError):
            raise errors.Conflict.modified(rt.plural, rt.group, name) from None

    def _merge_update(self, rt: ResourceType, old: dict, obj: dict, subresource: str) -> dict:
        """The object to store: server-owned fields from ``old``, the rest from the request."""
        old_meta = old["metadata"]
        if subresource == "status":
            new = _deep_copy(old)
            if obj.get("status") is None:
                new.pop("status", None)
            else:
                new["status"] = _deep_copy(obj["status"])
            return new
        new = obj
        meta = new["metadata"]
        for owned in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            if owned in old_meta:
                meta[owned] = old_meta[owned]
            else:
                meta.pop(owned, None)
        meta.pop("resourceVersion", None)
        meta["annotations"] = {**(meta.get("annotations") or {}), CLUSTER_ANNOTATION: cluster_of(old_meta)}
        if rt.namespaced:
            meta["namespace"] = old_meta.get("namespace")
        if rt.has_status:
            if "status" in old:
                new["status"] = _deep_copy(old["status"])
            else:
                new.pop("status", None)
        if rt.tracks_generation and _spec_changed(old, new):
            meta["generation"] = old_meta.get("generation", 1) + 1
        return new

    def patch(self, rt: ResourceType, cluster: str, namespace: str, name: str, patch_type: str, patch_body, *,
              subresource: str = "", dry_run: bool = False, field_validation: FieldValidation | None = None,
              field_manager: str | None = None, force: bool = False) -> dict:
        """Apply a patch to the current object, retrying on concurrent writes unless the patch pins a version."""
        if patch_type == patches.APPLY_PATCH:
            return self.apply(rt, cluster, namespace, name, patch_body, field_manager=field_manager, force=force,
                              subresource=subresource, dry_run=dry_run, field_validation=field_validation)[0]
        for _ in range(_PATCH_ATTEMPTS):
            old = self.get(rt, cluster, namespace, name)
            current = rt.convert(old) if rt.convert is not None else old  # the patch is against this version
            patched = self._apply_patch(rt, _deep_copy(current), patch_type, patch_body)
            if not isinstance(patched, dict) or not isinstance(patched.get("metadata", {}), dict):
                raise errors.BadRequest("the patched object is not a valid JSON object")
            if patch_type == patches.JSON_PATCH:  # its paths, unlike a body, can nest an object deeper
                decoding.check_nesting(patched, "the patched object: ")
            meta = patched.setdefault("metadata", {})
            # A patch that names another resourceVersion asked for optimistic locking: no retry then.
            if str(meta.get("resourceVersion", "")) != old["metadata"]["resourceVersion"]:
                raise errors.Conflict.modified(rt.plural, rt.group, name)
            try:
                return self.update(rt, cluster, namespace, name, patched, subresource=subresource, dry_run=dry_run,
                                   field_validation=field_validation, field_manager=field_manager)
            except errors.Conflict:
                continue  # a concurrent write landed between our read and write: patch the new state
        raise errors.Conflict.modified(rt.plural, rt.group, name)

    def apply(self, rt: ResourceType, cluster: str, namespace: str, name: str, config, *, field_manager: str | None,
              force: bool = False, subresource: str = "", dry_run: bool = False,
              field_validation: FieldValidation | None = None) -> tuple[dict, bool]:
        """Server-side apply (``server.registry.managedfields``): ``(object, created)``; creates a missing object."""
        managedfields.check_field_manager(field_manager or "", "PatchOptions", required=True)
        if not isinstance(config, dict):
            raise errors.BadRequest("error decoding YAML: the apply configuration must be an object")
        config = _deep_copy(config)
        schema = rt.structural_schema()
        if schema is not None:  # unknown fields are reported (Strict: refused) and never owned
            unknown = structural.prune(schema, config, object_meta=builtin_schemas.object_meta())
            if field_validation is not None:
                field_validation.report(unknown)
        meta = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}
        if meta.get("name") not in (None, name):
            raise errors.BadRequest(f"the name of the object ({meta['name']}) does not match the name on the URL "
                                    f"({name})")
        pinned = bool(meta.get("resourceVersion"))
        hidden = (CLUSTER_ANNOTATION,)
        for _ in range(_PATCH_ATTEMPTS):
            old = self.store.get(self.key(rt, cluster, namespace, name))
            if old is None:
                if subresource:
                    raise errors.NotFound.for_resource(rt.plural, rt.group, name)
                obj = managedfields.applied_object(rt, None, config, field_manager, force=force, hidden=hidden)
                obj.setdefault("metadata", {})["name"] = name
                try:
                    return self.create(rt, cluster, namespace, obj, dry_run=dry_run, _applied=True), True
                except errors.AlreadyExists:
                    continue
            current = rt.convert(old) if rt.convert is not None else old
            obj = managedfields.applied_object(rt, current, config, field_manager, force=force,
                                               subresource=subresource, hidden=hidden)
            try:
                return self.update(rt, cluster, namespace, name, obj, subresource=subresource, dry_run=dry_run,
                                   _applied=True), False
            except errors.Conflict:
                if pinned:
                    raise
        raise errors.Conflict.modified(rt.plural, rt.group, name)

    @staticmethod
    def _apply_patch(rt: ResourceType, current: dict, patch_type: str, patch_body):
        if patch_type == patches.MERGE_PATCH:
            return patches.merge_patch(current, patch_body)
        if patch_type == patches.JSON_PATCH:
            return patches.json_patch(current, patch_body)
        if patch_type == patches.STRATEGIC_MERGE_PATCH:
            return strategicpatch.patch_object(rt, current, patch_body)
        raise errors.UnsupportedMediaType(
            "the body of the request was in an unknown format - accepted media types include: "
            "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json")

    def delete(self, rt: ResourceType, cluster: str, namespace: str, name: str, options: dict | None = None) -> dict:
        """Delete at once, or mark for deletion when finalizers remain; answers what kube answers."""
        options = options or {}
        dry_run = "All" in (options.get("dryRun") or [])
        policy = options.get("propagationPolicy")
        if policy not in (None, "Background", "Foreground", "Orphan"):
            raise errors.Invalid(f'DeleteOptions.propagationPolicy: Unsupported value: "{policy}": supported '
                                 'values: "Foreground", "Background", "Orphan"')
        if rt.plural == "namespaces" and not rt.group and name in IMMORTAL_NAMESPACES:
            raise errors.Forbidden(f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                                   details={"name": name, "kind": "namespaces"})
        key = self.key(rt, cluster, namespace, name)
        # Like kube's GuaranteedUpdate: a concurrent write (a controller updating status) between our
        # read and our write is retried against the new state; the preconditions are checked each time.
        for _ in range(_PATCH_ATTEMPTS):
            old = self.store.get(key)
            if old is None:
                raise errors.NotFound.for_resource(rt.plural, rt.group, name)
            try:
                return self._delete_once(rt, cluster, key, old, options, dry_run)
            except ConflictError:
                continue
            except KeyNotFoundError:
                raise errors.NotFound.for_resource(rt.plural, rt.group, name) from None
        raise errors.Conflict.modified(rt.plural, rt.group, name)

    def _delete_once(self, rt: ResourceType, cluster: str, key: Key, old: dict, options: dict, dry_run: bool) -> dict:
        name = old["metadata"]["name"]
        preconditions = options.get("preconditions") or {}
        meta = old["metadata"]
        if preconditions.get("uid") and preconditions["uid"] != meta.get("uid"):
            raise errors.Conflict.precondition(rt.plural, rt.group, name,
                                               f"Precondition failed: UID in precondition: {preconditions['uid']}, "
                                               f"UID in object meta: {meta.get('uid')}")
        if preconditions.get("resourceVersion") and preconditions["resourceVersion"] != meta.get("resourceVersion"):
            raise errors.Conflict.precondition(
                rt.plural, rt.group, name,
                f"Precondition failed: ResourceVersion in precondition: {preconditions['resourceVersion']}, "
                f"ResourceVersion in object meta: {meta.get('resourceVersion')}")
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return old
            marked = _deep_copy(old)
            marked["metadata"]["deletionTimestamp"] = now_rfc3339()
            marked["metadata"]["deletionGracePeriodSeconds"] = 0
            if rt.plural == "namespaces":
                marked.setdefault("status", {})["phase"] = "Terminating"
            if dry_run:
                return marked
            return self.store.update(key, marked, expected_rv=_rv(old))
        if dry_run:
            return old if rt.returns_deleted_object else errors.status_success(name, rt.group, rt.plural, meta["uid"])
        if rt.plural == "namespaces":
            self._delete_namespace_content(cluster, name)
        deleted = self.store.delete(key, expected_rv=_rv(old))
        return deleted if rt.returns_deleted_object else errors.status_success(name, rt.group, rt.plural,
                                                                              meta["uid"])

    def delete_collection(self, rt: ResourceType, cluster: str, namespace: str, options: ListOptions,
                          delete_options: dict | None = None) -> dict:
        listed = self.list(rt, cluster, namespace, ListOptions(options.label_selector, options.field_selector))
        deleted = []
        for obj in listed["items"]:
            meta = obj["metadata"]
            try:
                result = self.delete(rt, cluster, meta.get("namespace", ""), meta["name"], delete_options)
            except errors.NotFound:
                continue
            deleted.append(result if result.get("kind") != "Status" else obj)
        return {"kind": rt.list_kind, "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self.store.current_rv())}, "items": deleted}

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _conform(rt: ResourceType, obj: dict, field_validation: FieldValidation | None) -> None:
        """Prune the fields the type's schema does not know, refuse values a built-in kind's Go types
        refuse (400, ``server.registry.schema.typecheck``), report the unknown fields to
        ``field_validation`` (Strict refuses them), then apply the schema's defaults, as kube does when
        decoding a body."""
        schema = rt.structural_schema()
        if schema is None:
            return
        unknown = structural.prune(schema, obj, object_meta=builtin_schemas.object_meta())
        Registry.check_decodable(rt, obj)
        if field_validation is not None:
            field_validation.report(unknown)
        structural.default(schema, obj)

    @staticmethod
    def check_decodable(rt: ResourceType, obj: dict) -> None:
        """A 400 for a value of a built-in kind that its Go type refuses (``schema.typecheck``), as kube's
        typed decoding answers; custom resources' types are judged by their own schema instead (422)."""
        if rt.schema is not None:
            return
        schema = rt.structural_schema()
        message = typecheck.decode_error(rt.kind, rt.version, schema, obj) if schema is not None else None
        if message:
            raise errors.BadRequest(message)

    def _delete_namespace_content(self, cluster: str, namespace: str) -> None:
        for rt in self.catalog.types(cluster):
            if not rt.namespaced:
                continue
            items, _ = self.store.list(rt.storage_key, cluster, namespace)
            for item in items:
                try:
                    self.store.delete(Key(rt.storage_key, cluster, namespace, item["metadata"]["name"]))
                except KeyNotFoundError:
                    pass

    def _require_namespace(self, cluster: str, namespace: str) -> None:
        ns = self.store.get(Key("core/namespaces", cluster, "", namespace))
        if ns is None:
            raise errors.NotFound.for_resource("namespaces", "", namespace)
        if ns["metadata"].get("deletionTimestamp"):
            raise errors.Forbidden(f'unable to create new content in namespace {namespace} because it is being '
                                   "terminated", details={"name": namespace, "kind": "namespaces"})

    @staticmethod
    def _check_namespace(rt: ResourceType, cluster: str, namespace: str, meta: dict) -> None:
        if not rt.namespaced:
            meta.pop("namespace", None)
            return
        if not namespace:
            raise errors.BadRequest("the namespace of the object is required on the request path")
        if meta.get("namespace") and meta["namespace"] != namespace:
            raise errors.BadRequest("the namespace of the provided object does not match the namespace sent on "
                                    "the request")
        meta["namespace"] = namespace

    @staticmethod
    def _check_body(rt: ResourceType, body) -> tuple[dict, int]:
        """A private copy of the body, and its size as JSON (what decides whether the work on it is heavy
        enough for the hub's worker thread, ``kcp_virtual.framework.offhub``)."""
        if not isinstance(body, dict):
            raise errors.BadRequest(f"the body of the request is not a {rt.kind} object")
        encoded = orjson.dumps(body)
        obj = offhub.run_if(len(encoded), orjson.loads, encoded)
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if api_version and api_version != rt.api_version:
            raise errors.BadRequest(f"the API version in the data ({api_version}) does not match the expected API "
                                    f"version ({rt.api_version})")
        if kind and kind != rt.kind:
            raise errors.BadRequest(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        if "metadata" in obj and not isinstance(obj["metadata"], dict):
            raise errors.BadRequest("metadata must be an object")
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        return obj, len(encoded)


# ---------------------------------------------------------------------- module helpers

def parse_resource_version(value, field: str = "resourceVersion") -> int:
    try:
        rv = int(value)
        if rv < 0:
            raise ValueError
        return rv
    except (TypeError, ValueError):
        raise errors.BadRequest(f'{field}: Invalid value: "{value}": must be a non-negative integer') from None


def cluster_of(meta: dict) -> str:
    return (meta.get("annotations") or {}).get(CLUSTER_ANNOTATION, "")


def _sort_key(obj: dict) -> tuple:
    """The store's list order: every stored object names its logical cluster in an annotation."""
    meta = obj["metadata"]
    return (cluster_of(meta), meta.get("namespace", ""), meta["name"])


def _after(items: list[dict], start: tuple | None):
    if start is None:
        return items
    return items[_skipped(items, start):]


def _skipped(items: list[dict], start: tuple | None) -> int:
    if start is None:
        return 0
    lo, hi = 0, len(items)
    while lo < hi:
        mid = (lo + hi) // 2
        if _sort_key(items[mid]) <= start:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _rv(obj: dict) -> int:
    return int(obj["metadata"]["resourceVersion"])


def _deep_copy(obj: dict) -> dict:
    """Stored objects are shared and immutable; patches work on a copy (orjson round trip is fastest)."""
    return orjson.loads(orjson.dumps(obj))


def _same(old: dict, new: dict) -> bool:
    a = {k: v for k, v in old.items()}
    a["metadata"] = {k: v for k, v in old["metadata"].items() if k != "resourceVersion"}
    b = {k: v for k, v in new.items()}
    b["metadata"] = {k: v for k, v in new["metadata"].items() if k != "resourceVersion"}
    return a == b


def _spec_changed(old: dict, new: dict) -> bool:
    ignored = ("metadata", "status", "apiVersion", "kind")
    return ({k: v for k, v in old.items() if k not in ignored} != {k: v for k, v in new.items() if k not in ignored})


def _validation_causes(rt: ResourceType, new: dict, old: dict | None) -> list[dict]:
    """Why ``new`` is invalid (pure: it may run on the hub's worker thread, as the type hooks are)."""
    causes = validation.validate_object_meta(new, namespaced=rt.namespaced, name_rule=rt.name_rule)
    causes += rt.validate(new, old)
    if old is not None:
        causes += validation.validate_object_meta_update(new, old)
    return causes


def _managed_fields(rt: ResourceType, old: dict | None, new: dict, manager: str | None, subresource: str):
    """The managedFields of a write (pure: it may run on the hub's worker thread)."""
    return managedfields.after_update(rt, old, new, manager or DEFAULT_FIELD_MANAGER, subresource=subresource,
                                      hidden=(CLUSTER_ANNOTATION,))


def _set_managed_fields(obj: dict, entries: list | None) -> None:
    if entries:
        obj["metadata"]["managedFields"] = entries
    else:
        obj["metadata"].pop("managedFields", None)


@lru_cache(maxsize=4096)
def _bookmark_maker(kind: str, api_version: str) -> Callable[..., dict]:
    """``bookmark(rv, initial_events_end=False)`` for a watch of ``kind``: one shared per kind and version (an
    idle watch keeps it for its lifetime, so a partial each would be ~180 bytes per watch)."""
    return partial(_bookmark, kind, api_version)


def _bookmark(kind: str, api_version: str, rv: int, initial_events_end: bool = False) -> dict:
    metadata: dict = {"resourceVersion": str(rv)}
    if initial_events_end:
        metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
    return {"kind": kind, "apiVersion": api_version, "metadata": metadata}
