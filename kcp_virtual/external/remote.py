"""The remote ``ShardClient``: virtual workspaces in their own process reach the shard over HTTPS.

The protocol (``kcp_virtual.framework.shardclient``) is the Kubernetes API cut down, so this is a thin
mapping onto the shard's HTTP API: objects by ``/clusters/<cluster>/api[s]/...`` paths, watches as the
shard's chunked JSON lines relayed event by event (bookmarks and 410 ERROR events included), ``user=``
as impersonation headers (the client's own identity must be allowed to impersonate: the shard's admin
kubeconfig is), SubjectAccessReviews and TokenReviews POSTed to the logical cluster concerned, and the
proxy kind's ``forward`` streamed through with impersonation. Every failure the shard answers becomes
the same ``errors`` Status exception with the shard's code, reason, message and details; a shard that
cannot be reached is a 503.

All I/O is gevent-cooperative without monkey-patching (``kcp_virtual.transport.httpclient``).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import gevent
import orjson
import structlog
from werkzeug.wrappers import Request as HTTPRequest, Response

from kcp_virtual.external.informer import BOOKMARK_INTERVAL, Informer, Informers
from kcp_virtual.framework import errors
from kcp_virtual.framework.authorization import Attributes, Decision, is_master
from kcp_virtual.framework.shardclient import GroupVersionResource, ListQuery, Rules, User, WatchEvent
from kcp_virtual.framework.watchstream import Watch
from kcp_virtual.transport import http1, httpclient

__all__ = ["RemoteShardClient", "RemoteWatch", "status_error", "impersonation_headers"]

log = structlog.get_logger("kcp.remote")

JSON = "application/json"
USER_AGENT = "kcp-virtual-workspaces"
REQUEST_TIMEOUT = 60.0
_CLUSTER_SUFFIX = re.compile(r"/clusters/[^/]+/?$")
#: Not a DNS label, so no namespace (and no RoleBinding) has it: a rules review "in" it lists cluster-wide rules.
_NO_NAMESPACE = "*"

_BY_CODE: dict[int, type[errors.StatusError]] = {
    400: errors.BadRequest, 401: errors.Unauthorized, 403: errors.Forbidden, 404: errors.NotFound,
    405: errors.MethodNotAllowed, 406: errors.NotAcceptable, 409: errors.Conflict, 410: errors.Gone,
    413: errors.RequestEntityTooLarge, 415: errors.UnsupportedMediaType, 422: errors.Invalid,
    429: errors.TooManyRequests, 500: errors.InternalError, 503: errors.ServiceUnavailable, 504: errors.Timeout}


def status_error(code: int, data: bytes, headers: Any = None) -> errors.StatusError:
    """The exception for an error answer of the shard: its Status (code, reason, message, details) kept
    as is, as the class ``except`` clauses expect (``Conflict``, ``NotFound``...)."""
    try:
        body = orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status":
        message, reason, details = str(body.get("message") or ""), body.get("reason") or None, body.get("details")
    else:
        message, reason, details = data.decode("utf-8", "replace").strip() or f"HTTP {code}", None, None
    cls = errors.AlreadyExists if code == 409 and reason == "AlreadyExists" else _BY_CODE.get(code, errors.StatusError)
    retry_after = headers.get("Retry-After") if headers is not None else None
    exc = cls.__new__(cls)  # skip the subclasses' own message formatting: the shard's message is final
    errors.StatusError.__init__(exc, message, reason=reason, code=code, details=details or None,
                                headers={"Retry-After": retry_after} if retry_after else None)
    return exc


def _extra_key(key: str) -> str:
    return quote(key, safe="").replace("_", "%5F")


def impersonation_headers(user: Any) -> list[tuple[str, str]]:
    """``Impersonate-*`` headers acting as ``user`` (name, uid, every group, every extra value)."""
    headers = [("Impersonate-User", user.name)]
    if getattr(user, "uid", ""):
        headers.append(("Impersonate-Uid", user.uid))
    headers.extend(("Impersonate-Group", group) for group in getattr(user, "groups", ()) or ())
    for key, values in (getattr(user, "extra", None) or {}).items():
        headers.extend((f"Impersonate-Extra-{_extra_key(key)}", value) for value in values)
    return headers


def _add_request_id(headers: list[tuple[str, str]]) -> None:
    """The request being served names the shard requests it causes, so both logs correlate."""
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    if request_id:
        headers.append(("X-Request-Id", request_id))


def _user(info: dict) -> User:
    extra = {k: tuple(v) for k, v in (info.get("extra") or {}).items() if isinstance(v, list)}
    return User(info.get("username", ""), info.get("uid", "") or "", tuple(info.get("groups") or ()), extra)


class RemoteWatch(Watch):
    """A watch of the shard (a push ``Watch``): a greenlet reads the upstream response and hands its events on;
    ``close()`` drops the upstream connection (interrupting that read at once)."""

    def __init__(self, response: http1.Response):
        super().__init__()
        self._response = response
        self._greenlet: gevent.Greenlet | None = None
        self._complete = False

    def _run(self) -> None:
        self._greenlet = gevent.spawn(self._pump)

    def _pump(self) -> None:
        try:
            for event in self._read():
                if self.closed:
                    return
                self._emit((event,))
        finally:
            self._greenlet = None
            self._end()

    def _stop(self) -> None:
        if not self._complete:
            if self._greenlet is not None and self._greenlet is not gevent.getcurrent():
                self._response.interrupt()  # the reader ends; the connection never goes back into the pool
            else:
                self._response.close()

    def _read(self):
        pending = b""
        try:
            for chunk in self._response.stream():
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if line.strip():
                        yield _event(line)
            if pending.strip():
                yield _event(pending)
            self._complete = True
        except httpclient.UPSTREAM_ERRORS as exc:
            log.debug("watch of the shard ended", error=repr(exc))
            self._response.close()


def _event(line: bytes) -> WatchEvent:
    try:
        event = orjson.loads(line)
        return WatchEvent(event["type"], event["object"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return WatchEvent("ERROR", errors.InternalError("the shard sent a malformed watch event").status())


class RemoteShardClient:
    """``ShardClient`` over HTTPS. ``url`` is the shard's base URL (a ``/clusters/<name>`` suffix, as in
    an admin kubeconfig's current context, is ignored); ``token`` is a bearer token for clients without
    a certificate."""

    def __init__(self, url: str, *, ssl_context, token: str | None = None, maxsize: int = 128,
                 request_timeout: float = REQUEST_TIMEOUT, bookmark_interval: float = BOOKMARK_INTERVAL):
        parts = urlsplit(url)
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.prefix = _CLUSTER_SUFFIX.sub("", parts.path).rstrip("/")
        self.pool = httpclient.https_pool(self.url, ssl_context, maxsize=maxsize)
        self._auth = [("Authorization", f"Bearer {token}")] if token else []
        self.request_timeout = request_timeout
        self._version: dict | None = None
        self._what = f"the shard at {self.url}"
        # watches served from the informers bookmark as often as the shard's own (its ``bookmark_interval``)
        self.informers = Informers(self, bookmark_interval=bookmark_interval)

    @classmethod
    def from_kubeconfig(cls, path: str, context: str | None = None, **options) -> "RemoteShardClient":
        """Server, CA and client credentials of a kubeconfig context (the current one by default)."""
        from kubernetes import client as k8s_client, config as k8s_config

        configuration = k8s_client.Configuration()
        k8s_config.load_kube_config(config_file=path, context=context, client_configuration=configuration,
                                    persist_config=False)
        ssl_context = httpclient.client_context(ca_file=configuration.ssl_ca_cert, cert_file=configuration.cert_file,
                                                key_file=configuration.key_file,
                                                verify=bool(configuration.verify_ssl))
        authorization = (configuration.api_key or {}).get("authorization", "")
        token = authorization[len("Bearer "):] if authorization.startswith("Bearer ") else None
        return cls(configuration.host, ssl_context=ssl_context, token=token, **options)

    # ------------------------------------------------------------------ plumbing

    def _headers(self, user: Any = None, content_type: str | None = None) -> list[tuple[str, str]]:
        headers = [("Accept", JSON), ("User-Agent", USER_AGENT), *self._auth]
        _add_request_id(headers)
        if content_type:
            headers.append(("Content-Type", content_type))
        if user is not None:
            headers.extend(impersonation_headers(user))
        return headers

    def _path(self, gvr: GroupVersionResource, cluster: str, namespace: str, name: str = "",
              subresource: str = "") -> str:
        api = f"/apis/{gvr.group}/{gvr.version}" if gvr.group else f"/api/{gvr.version}"
        path = f"{self.prefix}/clusters/{cluster}{api}"
        if namespace:
            path += f"/namespaces/{quote(namespace, safe='')}"
        path += f"/{gvr.path_resource}"
        if name:
            path += f"/{quote(name, safe='')}"
        if subresource:
            path += f"/{subresource}"
        return path

    def _open(self, method: str, path: str, *, query: dict | None = None, body: bytes | None = None,
              headers: list[tuple[str, str]], stream: bool = False) -> http1.Response:
        """The response with its head read; its body is the caller's to read (``_call`` reads it whole)."""
        url = f"{path}?{urlencode(query)}" if query else path
        try:
            return self.pool.request(method, url, headers, body, timeout=None if stream else self.request_timeout)
        except httpclient.UPSTREAM_ERRORS as exc:
            raise httpclient.unavailable(self._what, exc) from None

    def _read(self, response: http1.Response) -> bytes:
        try:
            return response.read()
        except httpclient.UPSTREAM_ERRORS as exc:
            raise httpclient.unavailable(self._what, exc) from None

    def _call(self, method: str, path: str, *, query: dict | None = None, body: Any = None,
              content_type: str = JSON, user: Any = None) -> dict:
        data = None if body is None else orjson.dumps(body)
        response = self._open(method, path, query=query, body=data,
                              headers=self._headers(user, content_type if data is not None else None))
        payload = self._read(response)
        if response.status >= 400:
            raise status_error(response.status, payload, response.headers)
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise errors.InternalError(f"the shard answered {method} {path} with a body that is not JSON") from None

    @staticmethod
    def _dry_run(dry_run: bool) -> dict | None:
        return {"dryRun": "All"} if dry_run else None

    # ------------------------------------------------------------------ reads

    def get(self, gvr: GroupVersionResource, cluster: str, namespace: str, name: str, *, user: Any = None) -> dict:
        return self._call("GET", self._path(gvr, cluster, namespace, name), user=user)

    def list(self, gvr: GroupVersionResource, cluster: str, namespace: str, query: ListQuery, *,
             user: Any = None) -> dict:
        return self._call("GET", self._path(gvr, cluster, namespace), query=query.query_params(), user=user)

    def watch(self, gvr: GroupVersionResource, cluster: str, namespace: str, query: ListQuery, *,
              user: Any = None) -> RemoteWatch:
        params = {"watch": "true", **query.query_params()}
        if query.send_initial_events:  # validated with it; the parsed query no longer carries it
            params["resourceVersionMatch"] = "NotOlderThan"
        response = self._open("GET", self._path(gvr, cluster, namespace), query=params, headers=self._headers(user),
                              stream=True)
        if response.status != 200:
            raise status_error(response.status, self._read(response), response.headers)
        return RemoteWatch(response)

    # ------------------------------------------------------------------ writes

    def create(self, gvr: GroupVersionResource, cluster: str, namespace: str, body: dict, *, dry_run: bool = False,
               user: Any = None) -> dict:
        return self._call("POST", self._path(gvr, cluster, namespace), query=self._dry_run(dry_run), body=body,
                          user=user)

    def update(self, gvr: GroupVersionResource, cluster: str, namespace: str, name: str, body: dict, *,
               subresource: str = "", dry_run: bool = False, user: Any = None) -> dict:
        return self._call("PUT", self._path(gvr, cluster, namespace, name, subresource),
                          query=self._dry_run(dry_run), body=body, user=user)

    def patch(self, gvr: GroupVersionResource, cluster: str, namespace: str, name: str, patch_type: str, patch: Any,
              *, subresource: str = "", dry_run: bool = False, user: Any = None, field_manager: str = "",
              force: bool = False) -> dict:
        query = {**(self._dry_run(dry_run) or {}), **({"fieldManager": field_manager} if field_manager else {}),
                 **({"force": "true"} if force else {})}
        return self._call("PATCH", self._path(gvr, cluster, namespace, name, subresource),
                          query=query or None, body=patch, content_type=patch_type, user=user)

    def delete(self, gvr: GroupVersionResource, cluster: str, namespace: str, name: str, *,
               options: dict | None = None, user: Any = None) -> dict:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", **options} if options else None
        return self._call("DELETE", self._path(gvr, cluster, namespace, name), body=body, user=user)

    # ------------------------------------------------------------------ reviews

    def subject_access_review(self, user: Any, attributes: Attributes) -> Decision:
        """A SubjectAccessReview in ``attributes.cluster``. The shard cannot review the cross-cluster view;
        its rule there is fixed (only ``system:masters``), so that answer is given here."""
        cluster = attributes.cluster
        if cluster in ("", "*"):
            if is_master(user):
                return Decision(True, "system:masters")
            return Decision(False, "the cross-cluster view is reserved for system:masters" if cluster
                            else "no logical cluster")
        spec: dict = {"user": user.name, "uid": getattr(user, "uid", "") or "",
                      "groups": list(getattr(user, "groups", ()) or ()),
                      "extra": {k: list(v) for k, v in (getattr(user, "extra", None) or {}).items()}}
        if attributes.is_resource:
            spec["resourceAttributes"] = {
                "namespace": attributes.namespace, "verb": attributes.verb, "group": attributes.api_group,
                "version": attributes.api_version, "resource": attributes.resource,
                "subresource": attributes.subresource, "name": attributes.name}
        else:
            spec["nonResourceAttributes"] = {"path": attributes.path, "verb": attributes.verb}
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        try:
            review = self._call("POST", f"{self.prefix}/clusters/{cluster}/apis/authorization.k8s.io/v1/"
                                        "subjectaccessreviews", body=body)
        except errors.NotFound:
            return Decision(False, f'workspace "{cluster}" not found')
        status = review.get("status") or {}
        return Decision(bool(status.get("allowed")), status.get("reason") or status.get("evaluationError") or "")

    def rules_for(self, user: Any, cluster: str, namespace: str = "") -> Rules:
        """A SelfSubjectRulesReview in ``cluster``, POSTed as ``user`` (impersonation), so the shard applies the
        same gate as to the user's own review (403 where it may not enter). A review needs a namespace; for the
        cluster-wide rules alone it names one no object can live in, so no RoleBinding contributes."""
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
                "spec": {"namespace": namespace or _NO_NAMESPACE}}
        review = self._call("POST", f"{self.prefix}/clusters/{cluster}/apis/authorization.k8s.io/v1/"
                                    "selfsubjectrulesreviews", body=body, user=user)
        status = review.get("status") or {}
        return Rules(tuple(r for r in status.get("resourceRules") or () if isinstance(r, dict)),
                     tuple(r for r in status.get("nonResourceRules") or () if isinstance(r, dict)),
                     bool(status.get("incomplete")))

    def token_review(self, token: str, cluster: str) -> tuple[User | None, str]:
        """``(user, "")`` when the shard accepts ``token`` in logical cluster ``cluster``, else ``(None, why)``."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        try:
            review = self._call("POST", f"{self.prefix}/clusters/{cluster}/apis/authentication.k8s.io/v1/"
                                        "tokenreviews", body=body)
        except errors.NotFound:
            return None, f'workspace "{cluster}" not found'
        status = review.get("status") or {}
        if not status.get("authenticated"):
            return None, status.get("error") or "invalid bearer token"
        return _user(status.get("user") or {}), ""

    # ------------------------------------------------------------------ the rest

    def forward(self, request: HTTPRequest, user: Any, cluster: str, path: str, prefix: str) -> Response:
        """The request to ``/clusters/<cluster><path>`` as ``user``, streamed back. OpenAPI's root names
        its documents by server-relative URLs: those are moved under ``prefix``."""
        headers = httpclient.environ_request_headers(request.environ)
        headers += self._auth
        headers.extend(impersonation_headers(user))
        _add_request_id(headers)
        body = httpclient.read_body(request.stream, request.content_length)
        target = quote(f"{self.prefix}/clusters/{cluster}{path}", safe="/:@!$&'()*+,;=")
        query = request.environ.get("QUERY_STRING", "")
        upstream = self._open(request.method, f"{target}?{query}" if query else target, body=body, headers=headers,
                              stream=True)
        rewrite = None
        if path.rstrip("/") == "/openapi/v3":
            ours, theirs = f'"{self.prefix}/clusters/{cluster}/openapi/'.encode(), f'"{prefix}/openapi/'.encode()
            rewrite = lambda data: data.replace(ours, theirs)  # noqa: E731
        return httpclient.relay(upstream, request.environ, self._what, rewrite)

    def informer(self, gvr: GroupVersionResource, label_selector: str = "") -> Informer | None:
        """A watch-fed cache of ``gvr``'s objects matching ``label_selector`` in every logical cluster, started
        on first use (``kcp_virtual.external.informer``); None beyond the informer limit (reads then stay live)."""
        return self.informers.informer(gvr, label_selector)

    def version(self) -> dict:
        if self._version is None:
            self._version = self._call("GET", f"{self.prefix}/version")
        return self._version

    def ready(self) -> bool:
        """Whether the shard answers its ``/readyz`` (the external process's own readiness check)."""
        try:
            response = self.pool.request("GET", f"{self.prefix}/readyz", self._headers(), timeout=5.0)
            response.read()
        except httpclient.UPSTREAM_ERRORS:
            return False
        return response.status == 200
