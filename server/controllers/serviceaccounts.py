"""The service-account controller: every namespace of every workspace has a ``default`` ServiceAccount.

kube's ``serviceaccounts-controller`` does this, and many tools assume it (``kubectl create token
default``, pods and controllers that name no account, Helm charts). It reconciles namespaces and
ServiceAccounts alike, so a ``default`` account that is deleted comes back, as in kube; namespaces
being deleted get none.
"""

from __future__ import annotations

from kcp_virtual.framework import errors
from server.apis.logicalclusters import SERVICE_ACCOUNT_MANAGER
from server.controllers.base import Reconciler
from server.registry.generic import Registry
from server.storage import Key

DEFAULT = "default"


class ServiceAccountController:
    def __init__(self, registry: Registry, *, workers: int = 2):
        self.registry = registry
        self.namespaces = registry.catalog.lookup("root", "", "v1", "namespaces")
        self.accounts = registry.catalog.lookup("root", "", "v1", "serviceaccounts")
        self.reconcilers = [
            Reconciler(registry.store, self.namespaces.storage_key, self._namespace, name="serviceaccounts",
                       workers=workers, backoff_max=5.0),
            Reconciler(registry.store, self.accounts.storage_key, self._account, name="serviceaccounts-deleted",
                       workers=1, backoff_max=5.0)]

    def start(self) -> None:
        for reconciler in self.reconcilers:
            reconciler.start()

    def stop(self) -> None:
        for reconciler in self.reconcilers:
            reconciler.stop()

    @property
    def idle(self) -> bool:
        return all(r.idle for r in self.reconcilers)

    def _namespace(self, key: Key) -> None:
        namespace = self.registry.store.get(key)
        if namespace is None or namespace["metadata"].get("deletionTimestamp"):
            return
        self._ensure(key.cluster, key.name)

    def _account(self, key: Key) -> None:
        if key.name == DEFAULT and self.registry.store.get(key) is None:
            self._namespace(Key(self.namespaces.storage_key, key.cluster, "", key.namespace))

    def _ensure(self, cluster: str, namespace: str) -> None:
        if self.registry.store.get(Key(self.accounts.storage_key, cluster, namespace, DEFAULT)) is not None:
            return
        try:
            self.registry.create(self.accounts, cluster, namespace, {"metadata": {"name": DEFAULT}},
                                 field_manager=SERVICE_ACCOUNT_MANAGER)
        except (errors.AlreadyExists, errors.NotFound):
            pass  # created meanwhile, or the namespace (or workspace) went away
        except errors.Forbidden:
            pass  # the namespace is terminating
