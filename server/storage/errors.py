"""Storage exceptions, kept free of HTTP so backends and the store can raise them.

The API layer maps them to ``metav1.Status`` errors (AlreadyExists, NotFound, Conflict,
410 Expired).
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every storage failure."""


class KeyExistsError(StorageError):
    """``create`` of a key that already holds an object."""


class KeyNotFoundError(StorageError):
    """``update``/``delete`` of a key that holds no object."""


class ConflictError(StorageError):
    """The caller's expected resourceVersion is not the stored one (optimistic concurrency)."""


class ResourceExpiredError(StorageError):
    """A watch asked for history that is no longer in the event window (HTTP 410 Expired)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class StorageUnavailableError(StorageError):
    """The backend cannot be reached (HTTP 503). ``in_doubt``: a write was sent but whether it was stored is
    not known yet; the store finds out (``Store`` settles the key) before it takes another write."""

    def __init__(self, message: str, *, in_doubt: bool = False):
        super().__init__(message)
        self.in_doubt = in_doubt


class PrefixInUseError(StorageError):
    """Refused at start: the backend's key space (an etcd prefix) belongs to, or overlaps, another shard's."""


class ObjectTooLargeError(StorageError):
    """The backend refuses a value this large (etcd's request limit; HTTP 413)."""
