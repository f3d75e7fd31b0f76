"""``kcp front-proxy``: one URL for the workspaces of every shard.

``/clusters/<path>/...`` goes to the shard that holds logical cluster ``<path>``, found in a watch-fed index
(``WorkspaceIndex``): the root shard's Shard objects, and every shard's ClusterWorkspaces (one informer each,
over HTTPS). ``root`` lives on the root shard; ``root:a:b`` lives where ClusterWorkspace ``b`` of ``root:a``
says (``status.location.current``), and that object is on the shard of ``root:a``: a path is resolved from the
root down, a dictionary lookup per segment. Paths outside ``/clusters/`` go to the root shard (as a shard
serves them for ``root``), except ``/services/``: clients use the URLs published in status, as with kcp.

The caller: a client certificate of the deployment's CA is verified here and its identity asserted to the
shard as the shards' own forwarders do (``X-Remote-*`` over mTLS with the proxy certificate of the shared
requestheader CA, ``server.http.forwarding``); anything else (a bearer token, a service account's token,
impersonation requests, no credentials at all) is passed on for the shard to authenticate and authorize.

Answers of its own, as ``metav1.Status``: 404 for a path that resolves to no shard (no such workspace, one
not scheduled yet, a shard no longer registered) and for ``/clusters/*``; 503 for a shard that cannot be
reached -- nothing about the failure is remembered, so the first request after the shard is back goes through --
and while the index has not listed the shards yet. Its TLS is its own (a serving certificate of the shared CA
in its ``--root-directory``, with its own ``admin.kubeconfig`` there).
"""

from __future__ import annotations

import re
from pathlib import Path

import structlog
from werkzeug.wrappers import Request, Response

from kcp_virtual.external.informer import Informer
from kcp_virtual.external.remote import RemoteShardClient
from kcp_virtual.framework import errors
from kcp_virtual.framework.health import health_response, is_health_path
from kcp_virtual.framework.httprequest import HTTPRequest
from kcp_virtual.framework.shardclient import GroupVersionResource
from kcp_virtual.transport import httpclient
from server import pki
from server.apis.tenancy import CLUSTER_WORKSPACES, ROOT
from server.app import VERSION_INFO
from server.auth.authn import ClientCertificateAuthenticator
from server.controllers.shards import SHARDS_GVR, root_shard_name, shard_base_url
from server.controllers.workspaces import location_of
from server.endpoints.rest import json_response
from server.http.forwarding import Forwarder
from server.http.logs import RequestLogMiddleware
from server.http.metrics import Metrics
from server.http.serving import Server, client_url

log = structlog.get_logger("kcp.front-proxy")

WORKSPACES_GVR = GroupVersionResource(CLUSTER_WORKSPACES.group, CLUSTER_WORKSPACES.version, CLUSTER_WORKSPACES.plural)
_OWN_PATHS = ("/version", "/version/", "/metrics")
_CLUSTER_PATH = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(:[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class WorkspaceIndex:
    """Logical cluster path -> the shard holding it; see the module docstring."""

    def __init__(self, root: RemoteShardClient, ssl_context):
        self.root = root
        self._context = ssl_context
        self.shards = Informer(root, SHARDS_GVR, progress_notify=False)
        self.shards.add_listener(lambda address: self._sync())
        self.workspaces: dict[str, Informer] = {}  # shard name -> its ClusterWorkspaces
        self._urls: dict[str, str] = {}             # shard name -> base URL
        self.root_name: str | None = None

    def start(self) -> "WorkspaceIndex":
        self.shards.start()
        return self

    def stop(self) -> None:
        self.shards.stop()
        for informer in self.workspaces.values():
            informer.stop()
        self.workspaces.clear()

    @property
    def ready(self) -> bool:
        return self.shards.synced

    def _sync(self) -> None:
        shards = {(cluster, name): obj for cluster, _, name in self.shards.addresses()
                  if (obj := self.shards.peek(cluster, "", name)) is not None and cluster == ROOT}
        urls = {name: shard_base_url(obj) for (_, name), obj in shards.items() if shard_base_url(obj)}
        self.root_name = root_shard_name(shards.values(), self.root.url) or self.root_name
        for name in list(self.workspaces):
            if urls.get(name) != self._urls.get(name):
                self.workspaces.pop(name).stop()
                log.info("shard gone from the index", shard=name)
        for name, url in urls.items():
            if name not in self.workspaces:
                client = self.root if name == self.root_name else RemoteShardClient(url, ssl_context=self._context)
                self.workspaces[name] = Informer(client, WORKSPACES_GVR, progress_notify=False).start()
                log.info("shard in the index", shard=name, url=url)
        self._urls = urls

    def url(self, shard: str) -> str | None:
        return self._urls.get(shard)

    def resolve(self, path: str) -> str | None:
        """The shard holding logical cluster ``path`` (None: none does, as far as the index knows)."""
        parts = path.split(":")
        if parts[0] != ROOT or self.root_name is None:
            return None
        shard = self.root_name
        for depth in range(1, len(parts)):
            informer = self.workspaces.get(shard)
            workspace = informer.peek(":".join(parts[:depth]), "", parts[depth]) if informer is not None else None
            shard = location_of(workspace) if workspace is not None else ""
            if not shard:
                return None
        return shard if shard in self._urls else None


class FrontProxy:
    """The proxy's WSGI app and raw interceptor around a ``WorkspaceIndex``."""

    def __init__(self, index: WorkspaceIndex, *, ca_file: str, cert_file: str, key_file: str, issuer: str):
        self.index = index
        self.authenticator = ClientCertificateAuthenticator(issuers=[issuer])
        self._proxy_credentials = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}
        self._forwarders: dict[str, Forwarder] = {}
        self.readiness = {"ping": lambda: True, "shards": lambda: self.index.ready}
        self.metrics: Metrics | None = None

    def _forwarder(self, path: str) -> Forwarder:
        """Where ``path`` goes, or the Status saying why nowhere."""
        if path.startswith("/clusters/"):
            cluster = path[len("/clusters/"):].partition("/")[0]
            structlog.contextvars.bind_contextvars(cluster=cluster)
            if cluster == "*":
                raise errors.NotFound("the front-proxy serves one workspace at a time: /clusters/* is a shard's "
                                      "(ask each shard)", details={})
            if not _CLUSTER_PATH.match(cluster):
                raise errors.BadRequest(f'invalid logical cluster name "{cluster}"')
        elif path.startswith("/services/") or path == "/services":
            raise errors.NotFound("the front-proxy does not serve /services: use the virtual workspace URLs "
                                  "published in status", details={})
        else:
            cluster = ROOT
        if not self.index.ready:
            raise errors.ServiceUnavailable("the front-proxy has not listed the shards yet")
        shard = self.index.resolve(cluster)
        url = self.index.url(shard) if shard is not None else None
        if url is None:
            raise errors.NotFound(f'workspace "{cluster}" not found', details={"name": cluster, "kind": "workspaces"})
        forwarder = self._forwarders.get(url)
        if forwarder is None:
            forwarder = self._forwarders[url] = Forwarder(url, what=f"shard {shard}", pass_credentials=True,
                                                          **self._proxy_credentials)
        return forwarder

    def intercept(self, environ: dict, exchange) -> bool:
        """The common case before WSGI: forwarded as bytes (``Forwarder.forward_raw``)."""
        path = environ.get("PATH_INFO", "")
        if is_health_path(path) or path in _OWN_PATHS:
            return False
        try:
            forwarder = self._forwarder(path)
        except errors.StatusError:
            return False  # the app answers it
        user = self.authenticator.authenticate(environ)
        if user is not None:
            structlog.contextvars.bind_contextvars(user=user.name)
        return forwarder.forward_raw(environ, exchange, user)

    def __call__(self, environ, start_response):
        response = errors.respond(self.dispatch, HTTPRequest(environ), log)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        path = request.path
        if is_health_path(path):
            return health_response(request, path, self.readiness)
        if path in ("/version", "/version/"):
            return json_response(VERSION_INFO)
        if path == "/metrics" and self.metrics is not None:
            return self.metrics.wsgi_response(request.environ)
        forwarder = self._forwarder(path)
        user = self.authenticator.authenticate(request.environ)
        return forwarder(request, user)


class FrontProxyServer:
    """``kcp front-proxy``: PKI in ``root_directory`` (the root shard's CAs, adopted), index, proxy, TLS server."""

    def __init__(self, *, root_shard_kubeconfig: str, root_directory: str | Path, bind_address: str = "127.0.0.1",
                 secure_port: int = 6443, max_connections: int = 20000):
        self.root_shard_kubeconfig = root_shard_kubeconfig
        self.root = Path(root_directory)
        self.bind_address = bind_address
        self.secure_port = secure_port
        self.max_connections = max_connections
        self.server: Server | None = None
        self.index: WorkspaceIndex | None = None

    def start(self) -> "FrontProxyServer":
        pki.adopt_shared_cas(self.root, Path(self.root_shard_kubeconfig).resolve().parent)
        self.pki = pki.ensure_shard_pki(self.root, self.bind_address)
        context = httpclient.client_context(ca_file=str(self.pki.ca_cert_path), cert_file=str(self.pki.admin_cert_path),
                                            key_file=str(self.pki.admin_key_path))
        root = RemoteShardClient.from_kubeconfig(self.root_shard_kubeconfig, "root")
        self.index = WorkspaceIndex(root, context).start()
        self.proxy = FrontProxy(self.index, ca_file=str(self.pki.ca_cert_path),
                                cert_file=str(self.pki.shard_proxy_cert_path),
                                key_file=str(self.pki.shard_proxy_key_path), issuer=self.pki.ca.common_name)
        self.metrics = self.proxy.metrics = Metrics()
        access_log = RequestLogMiddleware(self.proxy, self.metrics)
        self.server = Server(access_log, intercept=access_log.intercepting(self.proxy.intercept), intercept_prefix="/",
                             host=self.bind_address, port=self.secure_port, certfile=str(self.pki.serving_cert_path),
                             keyfile=str(self.pki.serving_key_path), client_ca_files=[str(self.pki.ca_cert_path)],
                             max_connections=self.max_connections)
        self.server.start()
        self.kubeconfig_path = pki.write_admin_kubeconfig(self.root, self.pki, port=self.server.port)
        log.info("front-proxy serving", url=self.url, root_shard=root.url, kubeconfig=str(self.kubeconfig_path))
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.index is not None:
            self.index.stop()
            self.index = None

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return client_url(self.bind_address, self.port)
