"""The APIExport controller: each export's identity, and where its virtual workspace is.

For APIExport ``e`` in logical cluster ``p``:

* identity: the secret ``spec.identity.secretRef`` (default ``kcp-system/e`` in ``p``) holds a random
  256-bit ``key``; the controller creates it (and its namespace) when the export has no identity
  yet, and sets ``status.identityHash`` to the key's sha256 once. The hash never changes (the API
  refuses it); a secret that goes missing or no longer matches only turns ``IdentityValid`` False.
* ``status.virtualWorkspaces``: one ``{url}`` per Shard object (``tenancy.kcp.dev`` ``shards`` in
  ``root``), ``<spec.virtualWorkspaceURL>/services/apiexport/p/e``, kept current as Shards change.
"""

from __future__ import annotations

import base64
import binascii
import secrets

import structlog

from kcp_virtual.apiexport import url_path
from kcp_virtual.framework import errors
from server.apis.apis_kcp import APIEXPORTS, IDENTITY_NAMESPACE, IDENTITY_SECRET_KEY, identity_hash, set_condition
from server.controllers.base import Reconciler, TriggeredController
from server.controllers.publication import ShardsChanged, virtual_workspace_urls
from server.registry.generic import Registry, now_rfc3339
from server.storage import Key

log = structlog.get_logger("kcp.controllers.apiexport")



class APIExportController(TriggeredController):
    def __init__(self, registry: Registry, *, workers: int = 2):
        self.registry = registry
        self.store = registry.store
        self.reconciler = Reconciler(self.store, APIEXPORTS.storage_key, self.reconcile, name="apiexports",
                                     workers=workers, backoff_max=5.0)
        self.triggers = [
            # A Shard change moves every export's URLs.
            ShardsChanged(registry, APIEXPORTS, self.reconciler, name="apiexports-shards"),
            # An identity secret that changes or goes away is reported.
            Reconciler(self.store, "core/secrets", self._secret_changed, name="apiexports-secrets", workers=1),
        ]

    def _secret_changed(self, key: Key) -> None:
        for export in self.store.list(APIEXPORTS.storage_key, key.cluster)[0]:
            ref = ((export.get("spec") or {}).get("identity") or {}).get("secretRef") or {}
            if ref.get("namespace") == key.namespace and ref.get("name") == key.name:
                self.reconciler.enqueue(self.registry.key(APIEXPORTS, key.cluster, "", export["metadata"]["name"]))

    # ------------------------------------------------------------------ reconcile

    def reconcile(self, key: Key) -> None:
        export = self.store.get(key)
        if export is None or export["metadata"].get("deletionTimestamp"):
            return
        if not self.registry.cluster_exists(key.cluster):
            return  # a replica of another shard's export (server.controllers.replication): that shard's to keep
        cluster, name = key.cluster, key.name
        status = dict(export.get("status") or {})
        now = now_rfc3339()
        conditions = list(status.get("conditions") or ())
        recorded = status.get("identityHash") or ""
        try:
            key_bytes = self._identity_key(cluster, export, create=not recorded)
        except _IdentityProblem as problem:
            conditions = set_condition(conditions, "IdentityValid", "False", problem.reason, str(problem), now)
        else:
            current = identity_hash(key_bytes)
            if not recorded:
                status["identityHash"] = recorded = current
            if current == recorded:
                conditions = set_condition(conditions, "IdentityValid", "True", "", "", now)
            else:
                conditions = set_condition(conditions, "IdentityValid", "False", "IdentityVerificationFailed",
                                           "the identity secret does not match status.identityHash", now)
        status["virtualWorkspaces"] = virtual_workspace_urls(self.store, url_path(cluster, name))
        conditions = set_condition(conditions, "VirtualWorkspaceURLsReady", "True", "", "", now)
        status["conditions"] = conditions
        if status == (export.get("status") or {}):
            return
        self.registry.update(APIEXPORTS, cluster, "", name, {**export, "status": status}, subresource="status")
        if not (export.get("status") or {}).get("identityHash") and recorded:
            log.info("apiexport identity", cluster=cluster, name=name, identity=recorded)

    def _identity_key(self, cluster: str, export: dict, *, create: bool) -> bytes:
        """The export's secret key, from its identity secret (created first when ``create``)."""
        ref = ((export.get("spec") or {}).get("identity") or {}).get("secretRef") or {}
        namespace = ref.get("namespace") or IDENTITY_NAMESPACE
        secret_name = ref.get("name") or export["metadata"]["name"]
        secrets_rt = self.registry.catalog.lookup(cluster, "", "v1", "secrets")
        secret = self.store.get(self.registry.key(secrets_rt, cluster, namespace, secret_name))
        if secret is None:
            if not create:
                raise _IdentityProblem("IdentityVerificationFailed",
                                       f'identity secret "{namespace}/{secret_name}" not found')
            secret = self._create_secret(cluster, namespace, secret_name, secrets_rt)
        value = (secret.get("data") or {}).get(IDENTITY_SECRET_KEY)
        try:
            key_bytes = base64.b64decode(value or "", validate=True)
        except (binascii.Error, TypeError, ValueError):
            key_bytes = b""
        if not key_bytes:
            raise _IdentityProblem("IdentityGenerationFailed" if create else "IdentityVerificationFailed",
                                   f'identity secret "{namespace}/{secret_name}" has no valid "{IDENTITY_SECRET_KEY}"')
        return key_bytes

    def _create_secret(self, cluster: str, namespace: str, name: str, secrets_rt) -> dict:
        namespaces = self.registry.catalog.lookup(cluster, "", "v1", "namespaces")
        if self.store.get(self.registry.key(namespaces, cluster, "", namespace)) is None:
            try:
                self.registry.create(namespaces, cluster, "", {"metadata": {"name": namespace}})
            except errors.AlreadyExists:
                pass
        body = {"metadata": {"name": name, "namespace": namespace},
                "type": "Opaque", "data": {IDENTITY_SECRET_KEY: base64.b64encode(secrets.token_bytes(32)).decode()}}
        try:
            return self.registry.create(secrets_rt, cluster, namespace, body)
        except errors.AlreadyExists:  # created meanwhile (another worker, or a user): use that one
            return self.store.get(self.registry.key(secrets_rt, cluster, namespace, name))


class _IdentityProblem(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


__all__ = ["APIExportController"]
