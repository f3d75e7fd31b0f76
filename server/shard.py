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
from server import pki
from server.apis import builtin_types
from server.apis.apiextensions import CustomResourceIndex
from server.apis.bound import BoundResourceIndex
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
from server.controllers.synctarget import SyncTargetController
from server.controllers.workloadstatus import WorkloadStatusController
from server.controllers.workspaces import WorkspaceController
from server.http.forwarding import ServicesForwarder
from server.http.logs import RequestLogMiddleware
from server.http.metrics import Metrics
from server.http.serving import Server
from server.registry.generic import Registry
from server.registry.resourcetype import Catalog
from server.shardclient import InProcessShardClient
from server.storage import SQLiteBackend, Store

log = structlog.get_logger("kcp.shard")



@dataclass
class ShardConfig:
    root_directory: Path = Path(".kcp")
    bind_address: str = "127.0.0.1"
    secure_port: int = 6443
    storage: str | None = None           # a SQLite file; default <root>/kcp.db
    token_auth_file: str | None = None
    max_connections: int = 20000
    max_requests_in_flight: int = 400
    bookmark_interval: float = 60.0
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

    def storage_path(self) -> Path:
        if self.storage:
            return Path(self.storage.removeprefix("sqlite://"))
        return Path(self.root_directory) / "kcp.db"


class Shard:
    def __init__(self, config: ShardConfig):
        self.config = config
        self.root = Path(config.root_directory)
        self.server: Server | None = None
        self.store: Store | None = None
        self.controllers: list[Controller] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "Shard":
        if not self.config.run_virtual_workspaces and not self.config.shard_virtual_workspace_url:
            raise ValueError("run_virtual_workspaces=False needs shard_virtual_workspace_url (the external "
                             "virtual-workspace server to forward /services/* to)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.pki = pki.ensure_shard_pki(self.root, self.config.bind_address)
        self.store = Store(SQLiteBackend(str(self.config.storage_path())),
                           history_seconds=self.config.watch_history_seconds,
                           history_max_events=self.config.watch_history_events)
        self.catalog = Catalog(builtin_types())
        self.crds = CustomResourceIndex(self.store, self.catalog.builtin_types)
        self.bound = BoundResourceIndex(self.store)
        self.catalog.add_source(self.bound)  # first: a bound resource keeps its name against a later CRD
        self.catalog.add_source(self.crds)
        self.registry = Registry(self.store, self.catalog)
        self.registry.cluster_hooks.append(ensure_bootstrap_policy)
        self.registry.ensure_logical_cluster("root")
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
        self.app = ShardApp(self.registry, self.catalog, UnionAuthenticator(authenticators),
                            self.authorizer, metrics=self.metrics,
                            max_requests_in_flight=self.config.max_requests_in_flight,
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
            self.app.services = ServicesForwarder(
                self.config.shard_virtual_workspace_url, ca_file=str(self.pki.ca_cert_path),
                cert_file=str(self.pki.shard_proxy_cert_path), key_file=str(self.pki.shard_proxy_key_path),
                current_resource_version=self.registry.current_resource_version)
        access_log = RequestLogMiddleware(self.app, self.metrics)
        # Forwarded /services/* skip the WSGI stack (server.http.forwarding.ServicesForwarder.forward_raw).
        intercept = access_log.intercepting(self.app.intercept) if self.virtual_workspaces is None else None
        self.server = Server(access_log, intercept=intercept, intercept_prefix="/services/",
                             host=self.config.bind_address,
                             port=self.config.secure_port, certfile=str(self.pki.serving_cert_path),
                             keyfile=str(self.pki.serving_key_path),
                             client_ca_files=[*self.pki.client_ca_files, *self.config.extra_client_ca_files,
                                              *([requestheader_ca] if self.config.requestheader_client_ca_file
                                                else [])],
                             max_connections=self.config.max_connections)
        self.server.start()
        self.app.server_address = f"{self.config.bind_address}:{self.port}"
        self.kubeconfig_path = pki.write_admin_kubeconfig(self.root, self.pki, port=self.port)
        self.controllers.append(CRDController(self.registry, self.crds))
        self.controllers.append(APIExportController(self.registry))
        self.controllers.append(APIBindingController(self.registry, self.bound))
        self.controllers.append(SyncTargetController(self.registry))
        self.controllers.append(PlacementController(self.registry))
        self.controllers.append(WorkloadStatusController(self.registry))
        self.controllers.append(WorkspaceController(
            self.registry, base_url=self.url,
            virtual_workspace_url=self.config.shard_virtual_workspace_url or self.url))
        for controller in self.controllers:
            controller.start()
        log.info("serving", url=self.url, kubeconfig=str(self.kubeconfig_path),
                 storage=str(self.config.storage_path()))
        return self

    def stop(self) -> None:
        for controller in reversed(self.controllers):
            controller.stop()
        self.controllers = []
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def serve_forever(self) -> None:
        self.server.serve_forever()

    # ------------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        """The base URL clients use (loopback when bound to every interface)."""
        host = self.config.bind_address
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{self.port}"
