"""Assemble a running shard from its parts: PKI, storage, registry, WSGI app and the TLS server.

``Shard`` is what ``kcp start`` runs and what ``server.testing`` starts in a background thread;
both go through ``start()``/``stop()`` so tests exercise exactly the production wiring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import structlog

from kcp_virtual.framework import plugins
from kcp_virtual.framework.dispatcher import Dispatcher
from kcp_virtual.framework.plugins import VirtualWorkspaceFactory
from kcp_virtual.framework.inflight import InFlightLimiter
from kcp_virtual.initializingworkspaces import url_path as initializing_url_path
from kcp_virtual.initializingworkspaces.initializers import initializer_name
from server import pki
from server.apis import builtin_types
from server.apis.apiextensions import CustomResourceIndex
from server.apis.bound import BoundResourceIndex
from server.apis.logicalclusters import default_content
from server.apis.tenancy import ROOT, SHARD_NAME, WORKSPACE_TYPES
from server.app import ShardApp
from server.auth.authn import ClientCertificateAuthenticator, TokenFileAuthenticator, UnionAuthenticator
from server.auth.bootstrap_policy import ensure_bootstrap_policy
from server.auth.rbac import RBACAuthorizer
from server.auth.requestheader import DEFAULT_ALLOWED_NAMES, RequestHeaderAuthenticator
from server.auth.serviceaccounts import ServiceAccountAuthenticator, ServiceAccountTokens
from server.controllers import Controller
from server.controllers.apibinding import APIBindingController
from server.controllers.apiexport import APIExportController
from server.controllers.crd import CRDController
from server.controllers.placement import PlacementController
from server.controllers.publication import URLPublisher
from server.controllers.replication import REPLICATED_RESOURCES, Replicator
from server.controllers.serviceaccounts import ServiceAccountController
from server.controllers.shards import ParentReviews, ShardDirectory, ShardRegistration
from server.controllers.synctarget import SyncTargetController
from server.controllers.workloadstatus import WorkloadStatusController
from server.controllers.workspaces import WorkspaceController
from server.http.audit import AuditLog
from server.http.forwarding import Forwarder
from server.http.logs import RequestLogMiddleware
from server.http.metrics import Metrics
from server.http.serving import BODY_TIMEOUT, HEADER_TIMEOUT, IDLE_TIMEOUT, Server, client_url
from server.registry.generic import Registry
from server.registry.repair import repair_stored_types
from server.registry.resourcetype import Catalog
from server.shardclient import InProcessShardClient
from server.storage import EtcdBackend, SQLiteBackend, Store
from server.storage.etcd import DEFAULT_PREFIX as DEFAULT_ETCD_PREFIX, normalize_prefix

log = structlog.get_logger("kcp.shard")



@dataclass
class ShardConfig:
    root_directory: Path = Path(".kcp")
    bind_address: str = "127.0.0.1"
    secure_port: int = 6443
    storage: str | None = None           # a SQLite file; default <root>/kcp.db
    token_auth_file: str | None = None
    max_connections: int = 20000
    max_requests_in_flight: int = 400            # read-only requests (kube's --max-requests-inflight); 0: no limit
    max_mutating_requests_in_flight: int = 200   # kube's --max-mutating-requests-inflight; 0: no limit
    bookmark_interval: float = 60.0
    # Slow clients (server.http.serving): keep-alive silence and any blocked read or write, request head, body.
    idle_timeout: float = IDLE_TIMEOUT
    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    watch_history_seconds: float = 300.0     # how far back a watch may resume; older gets 410 Expired
    watch_history_events: int = 100_000
    extra_client_ca_files: list[str] = field(default_factory=list)
    requestheader_client_ca_file: str | None = None   # default: the generated <root>/requestheader-ca.crt
    requestheader_allowed_names: list[str] = field(default_factory=lambda: list(DEFAULT_ALLOWED_NAMES))
    # Served in-process: None is every installed plugin (kcp_virtual.framework.plugins); otherwise plugin names
    # and factories (a callable taking the ShardClient), as kcp_virtual.framework.plugins.select takes them.
    virtual_workspaces: tuple[str | VirtualWorkspaceFactory, ...] | None = None
    run_virtual_workspaces: bool = True       # False: /services/* is forwarded to shard_virtual_workspace_url
    shard_virtual_workspace_url: str | None = None   # published in status; default: the shard's own URL
    request_timeout: float = 60.0             # kube's --request-timeout: the longest a forwarded request waits upstream
    audit_log_path: str | None = None         # kube's --audit-log-path: one audit.k8s.io/v1 Event per request
    # -- etcd storage (instead of SQLite when etcd_servers is set)
    etcd_servers: list[str] = field(default_factory=list)
    etcd_prefix: str = DEFAULT_ETCD_PREFIX
    etcd_cafile: str | None = None
    etcd_certfile: str | None = None
    etcd_keyfile: str | None = None
    etcd_compaction_interval: float = 300.0
    # -- sharding
    shard_name: str = SHARD_NAME              # this shard's Shard object in root
    root_shard_kubeconfig: str | None = None  # set: join that root shard; unset: this shard is the root

    def storage_path(self) -> Path:
        if self.storage:
            return Path(self.storage.removeprefix("sqlite://"))
        return Path(self.root_directory) / "kcp.db"


class Shard:
    def __init__(self, config: ShardConfig):
        self.config = config
        self.name = config.shard_name
        self.root = Path(config.root_directory)
        self.server: Server | None = None
        self.store: Store | None = None
        self.audit: AuditLog | None = None
        self.controllers: list[Controller] = []
        self.controllers_running = False  # /readyz's "controllers" check

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "Shard":
        if not self.config.run_virtual_workspaces and not self.config.shard_virtual_workspace_url:
            raise ValueError("run_virtual_workspaces=False needs shard_virtual_workspace_url (the external "
                             "virtual-workspace server to forward /services/* to)")
        self.root.mkdir(parents=True, exist_ok=True)
        if self.config.root_shard_kubeconfig:  # one CA for the whole deployment (server.controllers.shards)
            pki.adopt_shared_cas(self.root, Path(self.config.root_shard_kubeconfig).resolve().parent)
        self.pki = pki.ensure_shard_pki(self.root, self.config.bind_address)
        self.store = Store(self._backend(), history_seconds=self.config.watch_history_seconds,
                           history_max_events=self.config.watch_history_events)
        self.catalog = Catalog(builtin_types())
        self.crds = CustomResourceIndex(self.store, self.catalog.builtin_types)
        self.bound = BoundResourceIndex(self.store)
        self.catalog.add_source(self.bound)  # first: a bound resource keeps its name against a later CRD
        self.catalog.add_source(self.crds)
        self.registry = Registry(self.store, self.catalog)
        self.registry.cluster_hooks.append(ensure_bootstrap_policy)
        self.registry.replicated_resources = REPLICATED_RESOURCES
        self.registry.cluster_template = default_content(self.registry)
        self.registry.owned_cluster_template = default_content(self.registry, owned=True)
        if self.is_root:  # elsewhere root's objects are replicas (server.controllers.replication)
            self.registry.ensure_logical_cluster(ROOT)
        repair_stored_types(self.registry)
        self.authorizer = RBACAuthorizer(self.registry)
        authenticators = [ClientCertificateAuthenticator(issuers=[self.pki.ca.common_name])]
        if self.config.token_auth_file:
            authenticators.append(TokenFileAuthenticator(self.config.token_auth_file))
        self.service_account_tokens = ServiceAccountTokens.load_or_create(self.root)
        authenticators.append(ServiceAccountAuthenticator(self.service_account_tokens, self.registry))
        requestheader_ca = self.config.requestheader_client_ca_file or str(self.pki.requestheader_ca_cert_path)
        authenticators.append(RequestHeaderAuthenticator.from_file(requestheader_ca,
                                                                   self.config.requestheader_allowed_names))
        self.metrics = Metrics()
        limiter = InFlightLimiter(self.config.max_requests_in_flight, self.config.max_mutating_requests_in_flight)
        self.metrics.track_in_flight_limit(limiter)
        self.app = ShardApp(self.registry, self.catalog, UnionAuthenticator(authenticators),
                            self.authorizer, metrics=self.metrics, limiter=limiter,
                            bookmark_interval=self.config.bookmark_interval)
        self.app.token_issuer = self.service_account_tokens
        self.shard_client = InProcessShardClient(self.app)
        if self.config.run_virtual_workspaces:
            factories = plugins.select(self.config.virtual_workspaces)
            self.virtual_workspaces = Dispatcher(build(self.shard_client) for build in factories)
            self.app.services = self.virtual_workspaces
            self.app.readiness.update(self.virtual_workspaces.readiness())
        else:
            self.virtual_workspaces = None
            self.app.services = Forwarder(
                self.config.shard_virtual_workspace_url, ca_file=str(self.pki.ca_cert_path),
                cert_file=str(self.pki.shard_proxy_cert_path), key_file=str(self.pki.shard_proxy_key_path),
                current_resource_version=self.registry.current_resource_version, timeout=self.config.request_timeout)
        self.audit = AuditLog(self.config.audit_log_path) if self.config.audit_log_path else None
        access_log = RequestLogMiddleware(self.app, self.metrics, audit=self.audit)
        # Forwarded /services/* skip the WSGI stack (server.http.forwarding.Forwarder.forward_raw).
        intercept = access_log.intercepting(self.app.intercept) if self.virtual_workspaces is None else None
        self.server = Server(access_log, intercept=intercept, intercept_prefix="/services/",
                             host=self.config.bind_address,
                             port=self.config.secure_port, certfile=str(self.pki.serving_cert_path),
                             keyfile=str(self.pki.serving_key_path),
                             client_ca_files=[*self.pki.client_ca_files, *self.config.extra_client_ca_files,
                                              *([requestheader_ca] if self.config.requestheader_client_ca_file
                                                else [])],
                             max_connections=self.config.max_connections, idle_timeout=self.config.idle_timeout,
                             header_timeout=self.config.header_timeout, body_timeout=self.config.body_timeout)
        self.server.start()
        self.app.server_address = f"{self.config.bind_address}:{self.port}"
        self.directory = ShardDirectory(self.registry, name=self.name, url=self.url, ca_file=str(self.pki.ca_cert_path),
                                        cert_file=str(self.pki.admin_cert_path), key_file=str(self.pki.admin_key_path),
                                        root_kubeconfig=self.config.root_shard_kubeconfig)
        self.kubeconfig_path = pki.write_admin_kubeconfig(
            self.root, self.pki, port=self.port, root_url=None if self.is_root else self.directory.root.url)
        self.authorizer.parent_reviews = ParentReviews(self.directory)
        virtual_workspace_url = self.config.shard_virtual_workspace_url or self.url
        workspaces = WorkspaceController(self.registry, base_url=self.url, virtual_workspace_url=virtual_workspace_url,
                                         shard_name=self.name, directory=self.directory)
        self.app.delete_logical_cluster = workspaces.delete_logical_cluster
        self.controllers.append(Replicator(self.registry, self.directory))
        self.controllers.append(ServiceAccountController(self.registry))
        self.controllers.append(CRDController(self.registry, self.crds))
        self.controllers.append(APIExportController(self.registry))
        self.controllers.append(APIBindingController(self.registry, self.bound))
        self.controllers.append(URLPublisher(  # where each WorkspaceType's initializer is initialized
            self.registry, WORKSPACE_TYPES, lambda cluster, name: initializing_url_path(initializer_name(cluster, name)),
            name="workspacetypes"))
        self.controllers.append(SyncTargetController(self.registry))
        self.controllers.append(PlacementController(self.registry))
        self.controllers.append(WorkloadStatusController(self.registry))
        self.controllers.append(workspaces)
        self.controllers.append(ShardRegistration(self.registry, self.directory, spec={
            "baseURL": self.url, "virtualWorkspaceURL": virtual_workspace_url}))
        # Not ready before the controllers run: the workspace controller makes root's WorkspaceTypes, without
        # which a ClusterWorkspace created at once would be refused (422).
        self.app.readiness["controllers"] = lambda: self.controllers_running
        for controller in self.controllers:
            controller.start()
        self.controllers_running = True
        log.info("serving", url=self.url, kubeconfig=str(self.kubeconfig_path), storage=self.storage_description)
        return self

    @property
    def is_root(self) -> bool:
        """Whether this is the root shard (the one holding ``root``), not one joining it."""
        return not self.config.root_shard_kubeconfig

    def _backend(self):
        config = self.config
        if not config.etcd_servers:
            return SQLiteBackend(str(config.storage_path()))
        return EtcdBackend(config.etcd_servers, prefix=config.etcd_prefix, owner=self.name,
                           ca_file=config.etcd_cafile, cert_file=config.etcd_certfile, key_file=config.etcd_keyfile,
                           compaction_interval=config.etcd_compaction_interval)

    @property
    def storage_description(self) -> str:
        if self.config.etcd_servers:
            return f"etcd {','.join(self.config.etcd_servers)} prefix {normalize_prefix(self.config.etcd_prefix)}"
        return str(self.config.storage_path())

    def stop(self) -> None:
        self.controllers_running = False
        for controller in reversed(self.controllers):
            controller.stop()
        self.controllers = []
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.audit is not None:
            self.audit.close()
            self.audit = None

    def serve_forever(self) -> None:
        self.server.serve_forever()

    # ------------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        """The base URL clients use (loopback when bound to every interface)."""
        return client_url(self.config.bind_address, self.port)
