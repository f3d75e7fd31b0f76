"""SQLite backend: one file, WAL, one writer thread.

Promise: an acknowledged write survives ``kill -9`` of the process (WAL with
``synchronous=NORMAL``; a power loss may drop the last transactions, which FULL would prevent
at about a quarter of the throughput).

sqlite3 releases the GIL but not the gevent hub, so every call runs on a one-thread
``gevent.threadpool.ThreadPool`` that owns the only connection; greenlets wait on it
cooperatively. One thread also means writes are naturally serialized.
"""

from __future__ import annotations

import sqlite3

from gevent.threadpool import ThreadPool

from .errors import ResourceExpiredError, StorageError

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, rv INTEGER NOT NULL, value BLOB NOT NULL)",
    # One row holding the last assigned rv: MAX(objects.rv) would go backwards after the newest
    # object is deleted, and clients must never see a resourceVersion reused.
    "CREATE TABLE IF NOT EXISTS revision (id INTEGER PRIMARY KEY CHECK (id = 0), rv INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO revision (id, rv) VALUES (0, 0)",
)

_BUMP = "UPDATE revision SET rv = rv + 1 + ? WHERE id = 0 RETURNING rv"
_UPSERT = ("INSERT INTO objects (key, rv, value) VALUES (?, ?, ?) "
           "ON CONFLICT (key) DO UPDATE SET rv = excluded.rv, value = excluded.value")
_DELETE = "DELETE FROM objects WHERE key = ?"


class SQLiteBackend:
    """:class:`~server.storage.backend.Backend` over one SQLite file (``":memory:"`` works for tests)."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 30_000):
        self.path = str(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._pool = ThreadPool(1)
        self._conn: sqlite3.Connection | None = None
        try:
            self._rv = self._pool.apply(self._open)
        except BaseException:
            self._pool.kill()
            raise

    # -- runs on the pool thread ------------------------------------------------------------

    def _open(self) -> int:
        # check_same_thread=False: the pool may replace its thread, but only one ever uses it.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            conn.execute("BEGIN IMMEDIATE")
            for stmt in _SCHEMA:
                conn.execute(stmt)
            conn.execute("COMMIT")
            (rv,) = conn.execute("SELECT rv FROM revision WHERE id = 0").fetchone()
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return rv

    def _load(self) -> list[tuple[str, int, bytes]]:
        return self._conn.execute("SELECT key, rv, value FROM objects").fetchall()

    def _read(self, key: str) -> tuple[int, bytes] | None:
        return self._conn.execute("SELECT rv, value FROM objects WHERE key = ?", (key,)).fetchone()

    def _write(self, key: str, value: bytes | None, reserve: int) -> int:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            (rv,) = conn.execute(_BUMP, (reserve,)).fetchone()
            if value is None:
                conn.execute(_DELETE, (key,))
            else:
                conn.execute(_UPSERT, (key, rv, value))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return rv

    def _close(self) -> None:
        self._conn.close()

    # -- Backend API (called from greenlets) -----------------------------------------------

    def _check_open(self) -> None:
        if self._conn is None:
            raise StorageError(f"sqlite backend {self.path!r} is closed")

    def load(self) -> list[tuple[str, int, bytes]]:
        self._check_open()
        return self._pool.apply(self._load)

    def current_rv(self) -> int:
        return self._rv

    #: ``write(..., reserve=n)`` also takes the n revisions just below the row's, for nobody else (a template
    #: instance's objects, ``server.storage.templates``).
    reserves_revisions = True

    def write(self, key: str, value: bytes | None, prev_rv: int = 0, reserve: int = 0) -> int:
        # prev_rv needs no check: this process is the file's only writer, and the store's memory is the truth.
        self._check_open()
        rv = self._pool.apply(self._write, (key, value, reserve))
        self._rv = rv
        return rv

    def read(self, key: str) -> tuple[int, bytes | None]:
        self._check_open()
        row = self._pool.apply(self._read, (key,))
        return (row[0], row[1]) if row is not None else (self._rv, None)

    def range_at(self, prefix: str, rv: int) -> list[tuple[str, int, bytes]]:
        raise ResourceExpiredError(f"too old resource version: {rv} ({self._rv})")  # no history kept

    def revision(self) -> int:
        return self._rv

    @property
    def healthy(self) -> bool:
        return self._conn is not None

    def close(self) -> None:
        if self._conn is None:
            return
        try:
            self._pool.apply(self._close)
        finally:
            self._conn = None
            self._pool.kill()
