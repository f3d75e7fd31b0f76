"""The shards of a deployment as one of them sees them, and this shard's own ``Shard`` object in ``root``.

Every shard of a deployment shares the root shard's CAs (``server.pki.adopt_shared_cas``), so each one's admin
certificate is good on all of them, and each serving certificate is checked against the same CA.

* ``ShardDirectory``: the Shard objects in cluster ``root`` of this shard's store -- real on the root shard,
  replicas elsewhere (``server.controllers.replication``) -- and a ``RemoteShardClient`` for each shard's
  ``spec.baseURL``. A shard that is not the root reaches the root shard through ``--root-shard-kubeconfig``.
* ``ParentReviews``: the tenancy rule for a workspace whose parent lives on another shard (who may enter
  ``root:org:team`` is decided by RBAC in ``root:org``): a SubjectAccessReview on the parent's shard, named in
  the workspace's LogicalCluster record by the shard that created it there, remembered briefly.
* ``ShardRegistration``: keeps this shard's Shard object current: ``spec`` (its URLs) on start, and
  ``status.logicalClusters`` (how many logical clusters it holds: the scheduler's measure of load) whenever
  it changes, at most every ``interval`` seconds. The root shard writes its own object locally, the others
  through the root shard's API; a root shard that cannot be reached is retried, never fatal.
"""

from __future__ import annotations

import time

import gevent
import structlog

from kcp_virtual.external.remote import RemoteShardClient
from kcp_virtual.framework import errors
from kcp_virtual.framework.shardclient import GroupVersionResource
from kcp_virtual.transport import httpclient
from server.apis.logicalclusters import PARENT_SHARD_ANNOTATION
from server.apis.tenancy import ROOT, SHARDS
from server.auth.authz import Attributes, Decision
from server.registry.generic import LOGICAL_CLUSTERS, Registry
from server.storage import Key, StorageError

log = structlog.get_logger("kcp.controllers.shards")

SHARDS_GVR = GroupVersionResource(SHARDS.group, SHARDS.version, SHARDS.plural)


def shard_base_url(shard: dict) -> str:
    return ((shard.get("spec") or {}).get("baseURL") or "").rstrip("/")


def root_shard_name(shards, root_url: str) -> str | None:
    """Which of ``shards`` is the root shard: the one at the root kubeconfig's URL."""
    for shard in shards:
        if shard_base_url(shard) == root_url.rstrip("/"):
            return shard["metadata"]["name"]
    return None


class ShardDirectory:
    """Who the shards are (``shards``/``get``) and a client for each (``client``); see the module docstring."""

    def __init__(self, registry: Registry, *, name: str, url: str, ca_file: str, cert_file: str, key_file: str,
                 root_kubeconfig: str | None = None):
        self.registry = registry
        self.store = registry.store
        self.name = name
        self.url = url.rstrip("/")
        self._context = httpclient.client_context(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
        self._clients: dict[str, RemoteShardClient] = {}
        #: the root shard, when this one is not it
        self.root = RemoteShardClient.from_kubeconfig(root_kubeconfig, "root") if root_kubeconfig else None

    @property
    def is_root(self) -> bool:
        return self.root is None

    def shards(self) -> list[dict]:
        return self.store.list(SHARDS.storage_key, ROOT)[0]

    def get(self, name: str) -> dict | None:
        return self.store.get(Key(SHARDS.storage_key, ROOT, "", name))

    def client(self, name: str) -> RemoteShardClient | None:
        """A client for shard ``name`` (None while it is not known or has no URL)."""
        shard = self.get(name)
        url = shard_base_url(shard) if shard is not None else ""
        if not url:
            return None
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = RemoteShardClient(url, ssl_context=self._context)
        return client


class ParentReviews:
    """``RBACAuthorizer.parent_reviews``: content access (``access``/``admin`` on ``clusterworkspaces/content`` in
    the parent) asked of the parent's shard. Answers are kept ``allowed_ttl`` seconds when allowed and
    ``denied_ttl`` when denied, as kube's webhook authorizer caches them; a parent shard that cannot be reached
    denies (never allows) and is asked again next time."""

    def __init__(self, directory: ShardDirectory, *, allowed_ttl: float = 10.0, denied_ttl: float = 1.0,
                 limit: int = 10_000):
        self.directory = directory
        self.allowed_ttl, self.denied_ttl, self.limit = allowed_ttl, denied_ttl, limit
        self._answers: dict[tuple, tuple[float, Decision]] = {}

    def __call__(self, attributes: Attributes) -> Decision | None:
        record = self.directory.store.get(Key(LOGICAL_CLUSTERS, f"{attributes.cluster}:{attributes.name}", "",
                                              "cluster"))
        shard = ((record or {}).get("metadata", {}).get("annotations") or {}).get(PARENT_SHARD_ANNOTATION)
        if not shard:
            return None  # not a workspace another shard made here
        user = attributes.user
        key = (user.name, user.uid, tuple(user.groups), tuple(sorted((k, tuple(v)) for k, v in user.extra.items())),
               attributes.cluster, attributes.name, attributes.verb)
        now = time.monotonic()
        answer = self._answers.get(key)
        if answer is not None and answer[0] > now:
            return answer[1]
        client = self.directory.client(shard)
        if client is None:
            return Decision(False, f'the shard "{shard}" of the parent workspace is not registered')
        try:
            review = client.subject_access_review(user, attributes)
        except errors.StatusError as exc:
            log.warning("parent workspace's shard cannot review", shard=shard, error=exc.message)
            return Decision(False, f'the shard "{shard}" of the parent workspace cannot be asked: {exc.message}')
        decision = Decision(review.allowed, review.reason)
        if len(self._answers) >= self.limit:
            self._answers.clear()
        self._answers[key] = (now + (self.allowed_ttl if decision.allowed else self.denied_ttl), decision)
        return decision


class ShardRegistration:
    """Keeps this shard's Shard object in ``root`` current (spec on start, load in status); a controller."""

    def __init__(self, registry: Registry, directory: ShardDirectory, *, spec: dict, interval: float = 1.0):
        self.registry = registry
        self.directory = directory
        self.spec = spec
        self.interval = interval
        self.registered = False
        self._reported: int | None = None
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self._sync()  # a first attempt now: the shard is in the list before it serves anything
        self._greenlet = gevent.spawn(self._loop)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None

    @property
    def idle(self) -> bool:
        return self.registered and self._reported == self._load()

    def _load(self) -> int:
        return self.registry.store.count(LOGICAL_CLUSTERS)

    def _loop(self) -> None:
        delay = self.interval
        while True:
            gevent.sleep(delay)
            delay = self.interval if self._sync() else min(delay * 2, 10 * self.interval)

    def _sync(self) -> bool:
        """One round; False when the root shard could not be reached (or refused)."""
        try:
            if not self.registered:
                self._register()
                self.registered = True
                log.info("shard registered", shard=self.directory.name, spec=self.spec)
            load = self._load()
            if load != self._reported:
                self._report(load)
                self._reported = load
            return True
        except (errors.StatusError, StorageError) as exc:
            log.warning("shard registration failed", shard=self.directory.name,
                        error=getattr(exc, "message", str(exc)))
            self.registered = False if isinstance(exc, errors.NotFound) else self.registered
            return False

    # ---- the Shard object, locally on the root shard, through its API elsewhere

    def _get(self) -> dict | None:
        name = self.directory.name
        if self.directory.is_root:
            return self.registry.store.get(Key(SHARDS.storage_key, ROOT, "", name))
        try:
            return self.directory.root.get(SHARDS_GVR, ROOT, "", name)
        except errors.NotFound:
            return None

    def _register(self) -> None:
        current = self._get()
        name = self.directory.name
        if current is not None and current.get("spec") == self.spec:
            return
        if self.directory.is_root:
            if current is None:
                self.registry.create(SHARDS, ROOT, "", {"metadata": {"name": name}, "spec": self.spec})
            else:
                self.registry.update(SHARDS, ROOT, "", name, {**current, "spec": self.spec})
            return
        root = self.directory.root
        body = {"apiVersion": SHARDS.api_version, "kind": SHARDS.kind, "metadata": {"name": name}, "spec": self.spec}
        if current is None:
            root.create(SHARDS_GVR, ROOT, "", body)
        else:
            root.update(SHARDS_GVR, ROOT, "", name, {**current, "spec": self.spec})

    def _report(self, load: int) -> None:
        current = self._get()
        if current is None:
            raise errors.NotFound.for_resource(SHARDS.plural, SHARDS.group, self.directory.name)
        status = {**(current.get("status") or {}), "logicalClusters": load}
        if status == current.get("status"):
            return
        body = {**current, "status": status}
        if self.directory.is_root:
            self.registry.update(SHARDS, ROOT, "", self.directory.name, body, subresource="status")
        else:
            self.directory.root.update(SHARDS_GVR, ROOT, "", self.directory.name, body, subresource="status")
