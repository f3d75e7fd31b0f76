"""Object storage: durable backend + authoritative in-memory cache + in-process watch log.

Typical use::

    store = Store(SQLiteBackend("/var/lib/kcp/objects.db"))   # or EtcdBackend(["http://127.0.0.1:2379"])
    store.create(Key("core/configmaps", "root:org", "default", "cm"), {...})
    items, rv = store.list("core/configmaps", "root:org", None)
    w = store.watch("core/configmaps", "root:org", None, rv)
    for event in w.next(timeout=5): stream.write(event.line())
"""

from .backend import Backend, decode_key, encode_key
from .errors import (ConflictError, KeyExistsError, KeyNotFoundError, ObjectTooLargeError, PrefixInUseError,
                     ResourceExpiredError, StorageError, StorageUnavailableError)
from .etcd import EtcdBackend
from .sqlite import SQLiteBackend
from .store import ADDED, DELETED, MODIFIED, Event, Key, Store, Watcher

__all__ = [
    "ADDED", "DELETED", "MODIFIED",
    "Backend", "ConflictError", "EtcdBackend", "Event", "Key", "KeyExistsError", "KeyNotFoundError",
    "ObjectTooLargeError", "PrefixInUseError", "ResourceExpiredError", "SQLiteBackend", "StorageError",
    "StorageUnavailableError", "Store", "Watcher",
    "decode_key", "encode_key",
]
