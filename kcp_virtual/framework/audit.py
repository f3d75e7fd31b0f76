"""What an API server notes in the WSGI environ for its audit log (``--audit-log-path``).

The log itself is the host's (``server.http.audit`` writes kube's ``audit.k8s.io/v1`` events); whoever
authorizes a request -- the shard for ``/clusters/...``, the dispatcher for each virtual workspace,
in-process or in the external process -- notes here what it decided and about what, so that one
event per request can say who did what where, the decision and why.
"""

from __future__ import annotations

from typing import Any

from kcp_virtual.framework.requestinfo import RequestInfo

__all__ = ["REQUEST_INFO", "DECISION", "AUTHENTICATED_USER", "note_decision"]

#: The request's ``RequestInfo`` (verb and object reference).
REQUEST_INFO = "kcp.audit.request_info"
#: ``(allowed, reason)`` of the authorizer.
DECISION = "kcp.audit.decision"
#: The user the credentials named, when the request then impersonated another (``kcp.user``).
AUTHENTICATED_USER = "kcp.audit.authenticated_user"


def note_decision(environ: dict, info: RequestInfo, allowed: bool, reason: Any) -> None:
    environ[REQUEST_INFO] = info
    environ[DECISION] = (allowed, str(reason or ""))
