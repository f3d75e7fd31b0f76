"""``/healthz``, ``/livez`` and ``/readyz`` as kube-apiserver answers them, for the shard and the external
virtual-workspace process alike (this package never imports ``server``, so the shard uses it from here).

``/readyz`` runs the host's readiness checks, the other two only ``ping``; ``/<base>/<check>`` runs one
check (an unknown one is a 404 Status), and ``?verbose`` or a failure lists every check, ``[+]``/``[-]``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from werkzeug.wrappers import Request, Response

from kcp_virtual.framework import errors

__all__ = ["HEALTH_PATHS", "is_health_path", "health_response"]

HEALTH_PATHS = ("/healthz", "/livez", "/readyz")
_HEALTH_PREFIXES = tuple(p + "/" for p in HEALTH_PATHS)
_PING: Mapping[str, Callable[[], bool]] = {"ping": lambda: True}


def is_health_path(path: str) -> bool:
    return path in HEALTH_PATHS or path.startswith(_HEALTH_PREFIXES)


def _safe(probe: Callable[[], bool], log: Any) -> bool:
    try:
        return bool(probe())
    except Exception:  # noqa: BLE001 - a failing probe is "not ready", not a 500 from the health endpoint itself
        if log is not None:
            log.exception("readiness check failed")
        return False


def health_response(request: Request, path: str, readiness: Mapping[str, Callable[[], bool]], *,
                    log: Any = None) -> Response:
    """The answer to the health ``path``; ``log``, if given, records the traceback of a probe that raised."""
    base, _, check = path.lstrip("/").partition("/")
    checks = readiness if base == "readyz" else _PING
    if check:
        probe = checks.get(check)
        if probe is None:
            raise errors.NotFound.path()
        ok = _safe(probe, log)
        return Response("ok" if ok else f"{check} failed", status=200 if ok else 500, content_type="text/plain")
    results = {name: _safe(probe, log) for name, probe in checks.items()}
    healthy = all(results.values())
    if "verbose" in request.args or not healthy:
        lines = [f"[{'+' if ok else '-'}]{name} {'ok' if ok else 'failed'}" for name, ok in results.items()]
        lines.append(f"{base} check {'passed' if healthy else 'failed'}")
        return Response("\n".join(lines) + "\n", status=200 if healthy else 500, content_type="text/plain")
    return Response("ok", content_type="text/plain")
