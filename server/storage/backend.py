"""The durable-backend contract the in-memory :class:`~server.storage.store.Store` writes through.

The store keeps every object in memory and serves reads and watches from there, so a backend
only has to do three things: hand back everything at startup, make one write durable and give
it the next global resourceVersion, and remember that counter across restarts.

Key encoding (shared by every backend, so data can be moved between them)::

    <resource>/<cluster>/<namespace>/<name>

* ``resource`` is the caller's resource key (``apps/deployments``, ``core/configmaps``,
  ``/configmaps``...). It is written verbatim and may itself contain ``/``.
* ``cluster``, ``namespace`` and ``name`` are escaped: ``%`` becomes ``%25`` and ``/`` becomes
  ``%2F``. ``namespace`` is empty for cluster-scoped objects.

The last three segments therefore never contain a raw ``/``, so ``key.rsplit("/", 3)`` recovers
all four parts whatever the resource key looks like. Kubernetes names never contain ``/`` or
``%``, so real keys read naturally, e.g. ``apps/deployments/root:org/default/web``.
"""

from __future__ import annotations

from typing import Iterable, Protocol, runtime_checkable


def _escape(part: str) -> str:
    if "%" in part:
        part = part.replace("%", "%25")
    if "/" in part:
        part = part.replace("/", "%2F")
    return part


def _unescape(part: str) -> str:
    if "%" in part:
        part = part.replace("%2F", "/").replace("%25", "%")
    return part


def encode_key(resource: str, cluster: str, namespace: str, name: str) -> str:
    """The backend key for one object (see the module docstring for the format)."""
    return f"{resource}/{_escape(cluster)}/{_escape(namespace)}/{_escape(name)}"


def decode_key(key: str) -> tuple[str, str, str, str]:
    """Inverse of :func:`encode_key`: ``(resource, cluster, namespace, name)``."""
    resource, cluster, namespace, name = key.rsplit("/", 3)
    return resource, _unescape(cluster), _unescape(namespace), _unescape(name)


@runtime_checkable
class Backend(Protocol):
    """Durable storage behind the in-memory store.

    Only the store calls a backend, and it serializes writes, so implementations need not
    handle concurrent ``write`` calls. Calls may yield to the gevent hub but must not block it.
    """

    def load(self) -> Iterable[tuple[str, int, bytes]]:
        """Every current object as ``(key, rv, value)``; ``rv`` is the rv of its last write."""
        ...

    def current_rv(self) -> int:
        """The highest resourceVersion ever assigned (never decreases, even after deletes)."""
        ...

    def write(self, key: str, value: bytes | None) -> int:
        """Store ``value`` under ``key`` (``None`` deletes it) and return the new global rv.

        The write is durable when this returns; if it raises, nothing was written.
        """
        ...

    def close(self) -> None:
        """Release connections and threads; the backend is unusable afterwards."""
        ...
