"""``/services/*`` forwarded to an external virtual-workspace server (``kcp start --run-virtual-workspaces=false``).

The shard has authenticated the caller (and resolved any impersonation); the external process must
believe that identity without re-authenticating it, so the request goes out over mTLS with the
shard's proxy certificate (``<root>/shard-proxy.crt``, issued by the requestheader CA) and the
identity in ``X-Remote-User``/``-Uid``/``-Group``/``-Extra-<key>`` -- the same contract kube's
aggregator uses. Whatever identity headers or credentials the caller sent are dropped first.

Responses stream through (``kcp_virtual.httpclient.relay``): a watch passes unbuffered and its
upstream closes as soon as the client leaves. While the external process is down every request is
answered at once with a 503 Status; nothing is cached about the failure, so the first request after
it returns goes through.
"""

from __future__ import annotations

from urllib.parse import quote

import structlog
import urllib3
from werkzeug.wrappers import Request, Response

from kcp_virtual import httpclient
from server.auth.user import UserInfo

__all__ = ["ServicesForwarder", "identity_headers"]

log = structlog.get_logger("kcp.forwarding")


def _header_key(key: str) -> str:
    """An extra key as a header-name suffix: percent-encoded (``/``), ``_`` too (WSGI servers drop such headers)."""
    return quote(key, safe="").replace("_", "%5F")


def identity_headers(user: UserInfo) -> urllib3.HTTPHeaderDict:
    """The requestheaders asserting ``user`` (groups and extra values one header line each)."""
    headers = urllib3.HTTPHeaderDict({"X-Remote-User": user.name})
    if user.uid:
        headers["X-Remote-Uid"] = user.uid
    for group in user.groups:
        headers.add("X-Remote-Group", group)
    for key, values in (user.extra or {}).items():
        for value in values:
            headers.add(f"X-Remote-Extra-{_header_key(key)}", value)
    return headers


class ServicesForwarder:
    """``forwarder(request, user) -> Response`` for ``ShardApp.services``: the request, as ``user``, to ``url``."""

    def __init__(self, url: str, *, ca_file: str, cert_file: str, key_file: str, maxsize: int = 256):
        self.url = url.rstrip("/")
        context = httpclient.client_context(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
        self.pool = httpclient.https_pool(self.url, context, maxsize=maxsize)
        self._what = f"the virtual workspace server at {self.url}"

    def __call__(self, request: Request, user: UserInfo) -> Response:
        if request.args.get("watch") in ("true", "1"):  # counted as an open watch, not an in-flight request
            structlog.contextvars.bind_contextvars(verb="watch")
        headers = httpclient.proxy_request_headers(request.headers)
        headers.extend(identity_headers(user))
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        if request_id:
            headers["X-Request-Id"] = request_id
        body = httpclient.read_body(request.stream, request.content_length)
        path = httpclient.request_target(request)
        try:
            upstream = self.pool.urlopen(request.method, path, body=body, headers=headers, preload_content=False,
                                         decode_content=False, redirect=False, assert_same_host=False)
        except httpclient.UPSTREAM_ERRORS as exc:
            log.info("virtual workspace server unavailable", url=self.url, error=str(exc))
            raise httpclient.unavailable(self._what, exc) from None
        return httpclient.relay(upstream, request.environ, self._what)
