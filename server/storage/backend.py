"""The durable-backend contract the in-memory :class:`~server.storage.store.Store` writes through.

The store keeps every object in memory and serves reads and watches from there, so a backend
only has to do three things: hand back everything at startup, make one write durable and give
it the next global resourceVersion, and remember that counter across restarts. A backend that keeps
history (etcd) also answers a list at a past resourceVersion; one shared with other writers' revisions
(etcd again) reports how far its revision has moved (``revision``) so that bookmarks can follow it.

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


def key_prefix(resource: str, cluster: str | None = None, namespace: str | None = None) -> str:
    """The common start of every key of ``resource`` (in ``cluster``, in ``namespace`` when both are given)."""
    if cluster is None:
        return f"{resource}/"
    if namespace is None:
        return f"{resource}/{_escape(cluster)}/"
    return f"{resource}/{_escape(cluster)}/{_escape(namespace)}/"


def decode_key(key: str) -> tuple[str, str, str, str]:
    """Inverse of :func:`encode_key`: ``(resource, cluster, namespace, name)``."""
    resource, cluster, namespace, name = key.rsplit("/", 3)
    return resource, _unescape(cluster), _unescape(namespace), _unescape(name)


@runtime_checkable
class Backend(Protocol):
    """Durable storage behind the in-memory store.

    Only the store calls a backend, and it serializes writes, so implementations need not
    handle concurrent ``write`` calls. Calls may yield to the gevent hub but must not block it.

    A backend that commits groups of writes (SQLite) also has ``submit(key, value, reserve, on_commit)``, which
    several greenlets may call at once: the store then keeps one write per key in flight instead of one in all,
    and its ``on_commit(rv)`` callbacks run in commit order right after each commit (``server.storage.sqlite``).
    """

    def load(self) -> Iterable[tuple[str, int, bytes]]:
        """Every current object as ``(key, rv, value)``; ``rv`` is the rv of its last write."""
        ...

    def current_rv(self) -> int:
        """The highest resourceVersion ever assigned (never decreases, even after deletes)."""
        ...

    def write(self, key: str, value: bytes | None, prev_rv: int) -> int:
        """Store ``value`` under ``key`` (``None`` deletes it) and return the new global rv.

        ``prev_rv`` is the rv of the object the store holds under ``key`` (0: none); a backend that can
        compare (etcd) writes only if it still is, else raises ``ConflictError`` (someone else wrote the key:
        the store re-reads it). The write is durable when this returns; if it raises, nothing was written --
        except ``StorageUnavailableError(in_doubt=True)``, after which the store asks ``read`` what happened.
        """
        ...

    def read(self, key: str) -> tuple[int, bytes | None]:
        """``(rv, value)`` of ``key`` now; ``(current rv, None)`` when it holds nothing."""
        ...

    def range_at(self, prefix: str, rv: int) -> list[tuple[str, int, bytes]]:
        """Every ``(key, rv, value)`` under ``prefix`` as it was at ``rv``; ``ResourceExpiredError`` when that
        history is gone (compacted, or never kept)."""
        ...

    def revision(self) -> int:
        """The backend's revision now (at least ``current_rv``): no key of ours changed between the last
        write and it."""
        ...

    @property
    def healthy(self) -> bool:
        """Whether the last request reached the backend (readiness)."""
        ...

    def close(self) -> None:
        """Release connections and threads; the backend is unusable afterwards."""
        ...
