"""The audit log behind ``--audit-log-path`` (kube's flag): one ``audit.k8s.io/v1`` Event per request, JSON lines.

Why: the people who run a multi-tenant server must be able to answer "who read tenant X's objects", and
kube's event shape is what their tools already parse. Every event is level ``Metadata`` (no bodies): who
(``user``, and ``impersonatedUser`` when the credentials' user impersonated another), what (``verb``,
``objectRef``, ``requestURI``), where (annotations ``tenancy.kcp.dev/workspace`` and
``kcp.dev/virtual-workspace``), the decision and its reason (kube's ``authorization.k8s.io/decision`` and
``/reason`` annotations, noted by whoever authorized: ``kcp_virtual.framework.audit``) and the answer's code.
Stage ``ResponseComplete`` for every request, and also ``ResponseStarted`` when a watch begins, since a
watch may run for an hour. Health probes and ``/version`` are not audited. In the forwarded topology the
shard's event for ``/services/*`` has the caller and the code; the virtual workspace's decision is in the
external process's own audit log (``kcp virtual-workspaces --audit-log-path``).

Each event is one unbuffered ``write`` on an ``O_APPEND`` file (``-``: standard output): a crash loses no
event already written, and lines of concurrent processes never interleave. Cost: see README, Reliability.
"""

from __future__ import annotations

import os
import time

import orjson

from kcp_virtual.framework.audit import AUTHENTICATED_USER, DECISION, REQUEST_INFO

__all__ = ["AuditLog", "UNAUDITED_PATHS", "ENVIRON_KEYS"]

UNAUDITED_PATHS = frozenset(("/healthz", "/livez", "/readyz", "/version", "/version/"))
#: What an event is made of, for a caller that must keep it past the request's environ (a parked stream).
ENVIRON_KEYS = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "REMOTE_ADDR", "HTTP_USER_AGENT", "kcp.user",
                "kcp.cluster", AUTHENTICATED_USER, DECISION, REQUEST_INFO)
_VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def _user(user) -> dict:
    entry = {"username": user.name, "groups": list(user.groups)}
    if user.uid:
        entry["uid"] = user.uid
    if user.extra:
        entry["extra"] = {key: list(values) for key, values in user.extra.items()}
    return entry


def _timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1e6):06d}Z"


class AuditLog:
    """Writes the events; ``path`` ``-`` is standard output."""

    def __init__(self, path: str):
        self.path = path
        self._fd = 1 if path == "-" else os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    @staticmethod
    def audited(environ: dict) -> bool:
        return environ.get("PATH_INFO", "") not in UNAUDITED_PATHS

    def event(self, environ: dict, stage: str, code: int, received: float, *, request_id: str | None,
              cluster: str | None, virtual_workspace: str | None) -> dict:
        """The Event of a request; ``received`` is its wall-clock start."""
        info = environ.get(REQUEST_INFO)
        method = environ.get("REQUEST_METHOD", "")
        path = environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING")
        event = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": request_id,
                 "stage": stage, "requestURI": f"{path}?{query}" if query else path,
                 "verb": info.verb if info is not None else _VERBS.get(method, method.lower())}
        authenticated, user = environ.get(AUTHENTICATED_USER), environ.get("kcp.user")
        if authenticated is not None:
            event["user"] = _user(authenticated)
            event["impersonatedUser"] = _user(user)
        elif user is not None:
            event["user"] = _user(user)
        event["sourceIPs"] = [environ.get("REMOTE_ADDR", "")]
        agent = environ.get("HTTP_USER_AGENT")
        if agent:
            event["userAgent"] = agent
        if info is not None and info.is_resource:
            ref = {"resource": info.resource, "namespace": info.namespace, "name": info.name,
                   "apiGroup": info.group, "apiVersion": info.version, "subresource": info.subresource}
            event["objectRef"] = {key: value for key, value in ref.items() if value}
        event["responseStatus"] = {"metadata": {}, "code": code}
        event["requestReceivedTimestamp"] = _timestamp(received)
        event["stageTimestamp"] = _timestamp(time.time())
        annotations = {}
        where = cluster or environ.get("kcp.cluster")
        if where:
            annotations["tenancy.kcp.dev/workspace"] = where
        if virtual_workspace:
            annotations["kcp.dev/virtual-workspace"] = virtual_workspace
        decision = environ.get(DECISION)
        if decision is not None:
            annotations["authorization.k8s.io/decision"] = "allow" if decision[0] else "forbid"
            annotations["authorization.k8s.io/reason"] = decision[1]
        if annotations:
            event["annotations"] = annotations
        return event

    @staticmethod
    def kept(environ: dict) -> dict:
        """What an event needs of ``environ``, for after the environ is let go (``ENVIRON_KEYS``)."""
        return {key: environ[key] for key in ENVIRON_KEYS if key in environ}

    def write(self, event: dict) -> None:
        os.write(self._fd, orjson.dumps(event, default=str) + b"\n")

    def close(self) -> None:
        if self._fd > 2:
            os.close(self._fd)
            self._fd = -1
