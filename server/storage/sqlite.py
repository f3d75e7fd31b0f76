"""SQLite backend: one file, WAL, one writer thread, group commit.

Promise: an acknowledged write survives ``kill -9`` of the process (WAL with
``synchronous=NORMAL``; a power loss may drop the last transactions, which FULL would prevent
at about a quarter of the throughput).

sqlite3 releases the GIL but not the gevent hub, so every call runs on a one-thread
``gevent.threadpool.ThreadPool`` that owns the only connection; greenlets wait on it
cooperatively. One thread also means writes are naturally serialized.

**Group commit.** Handing a call to that thread and back costs more than the SQLite write itself (two thread
switches under the GIL, measured at about a third of the shard's CPU per workspace creation). So writes are
queued (``submit``) and one greenlet, the flusher, takes everything queued at once into one transaction: the
writers that arrived while the previous group was committing share the next COMMIT, and each is answered after
it, in commit order (which is resourceVersion order). A write that fails inside a group (a value SQLite refuses)
is answered with its error and the group is committed again without it, so it fails nobody else; a failed
COMMIT fails the whole group, of which nothing was stored.
"""

from __future__ import annotations

import sqlite3
from typing import Callable

import gevent
import gevent.event
import structlog
from gevent.threadpool import ThreadPool

from .errors import ObjectTooLargeError, ResourceExpiredError, StorageError

log_exception = structlog.get_logger("kcp.storage").exception

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

#: Writes in one transaction at most (bounds the time a group holds the thread and the writers behind it).
GROUP_MAX = 512


class _Pending:
    """One queued write: what to store, and how its writer learns the outcome."""

    __slots__ = ("key", "value", "reserve", "on_commit", "result")

    def __init__(self, key: str, value: bytes | None, reserve: int, on_commit: Callable[[int], None] | None):
        self.key, self.value, self.reserve, self.on_commit = key, value, reserve, on_commit
        self.result = gevent.event.AsyncResult()


class SQLiteBackend:
    """:class:`~server.storage.backend.Backend` over one SQLite file (``":memory:"`` works for tests)."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 30_000):
        self.path = str(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._pool = ThreadPool(1)
        self._conn: sqlite3.Connection | None = None
        self._queue: list[_Pending] = []
        self._flusher: gevent.Greenlet | None = None
        self._closing = False
        self.groups = 0  # transactions committed (with ``writes``: the mean group size, for the bench)
        self.writes = 0
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

    def _write_group(self, group: list[_Pending]) -> list[int | BaseException]:
        """One transaction for the whole group: each write's rv, or its own error (the others committed without
        it). Raises when the transaction itself fails (then nothing of the group is stored)."""
        conn = self._conn
        outcome: list[int | BaseException | None] = [None] * len(group)
        while True:
            failed = False
            conn.execute("BEGIN IMMEDIATE")
            try:
                for i, pending in enumerate(group):
                    if outcome[i] is not None:
                        continue  # failed in an earlier attempt
                    try:
                        (rv,) = conn.execute(_BUMP, (pending.reserve,)).fetchone()
                        if pending.value is None:
                            conn.execute(_DELETE, (pending.key,))
                        else:
                            conn.execute(_UPSERT, (pending.key, rv, pending.value))
                    except Exception as exc:  # noqa: BLE001 - this write's own answer
                        outcome[i] = (ObjectTooLargeError(f"{pending.key}: {exc}")
                                      if isinstance(exc, sqlite3.DataError) else exc)
                        failed = True
                        break
                    outcome[i] = rv
                if failed:
                    # Some errors end the transaction by themselves; start over without the write that failed.
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    outcome = [o if isinstance(o, BaseException) else None for o in outcome]
                    continue
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return outcome

    def _close(self) -> None:
        self._conn.close()

    # -- the flusher greenlet ---------------------------------------------------------------

    def _flush(self) -> None:
        """Commit what is queued, group after group, until the queue is empty; answer each writer in commit
        order, its ``on_commit`` first -- with no greenlet switch between the commit and the last answer."""
        try:
            while self._queue:
                group, self._queue = self._queue[:GROUP_MAX], self._queue[GROUP_MAX:]
                done = self._pool.spawn(self._write_group, group)
                while not done.ready():  # a kill aimed at this greenlet must not lose what the thread commits
                    try:
                        done.wait()
                    except BaseException:  # noqa: BLE001 - the group's outcome comes first
                        pass
                if done.successful():
                    outcome = done.value
                    self.groups += 1
                else:
                    outcome = [done.exception] * len(group)  # the transaction failed: nothing of it is stored
                for pending, result in zip(group, outcome):
                    if isinstance(result, BaseException):
                        pending.result.set_exception(result)
                        continue
                    self._rv = result
                    self.writes += 1
                    if pending.on_commit is not None:
                        try:
                            pending.on_commit(result)
                        except Exception:  # noqa: BLE001 - committed all the same; the others must be answered
                            log_exception("after-commit callback failed", key=pending.key)
                    pending.result.set(result)
        finally:
            self._flusher = None

    # -- Backend API (called from greenlets) -----------------------------------------------

    def _check_open(self) -> None:
        if self._conn is None or self._closing:
            raise StorageError(f"sqlite backend {self.path!r} is closed")

    def load(self) -> list[tuple[str, int, bytes]]:
        self._check_open()
        return self._pool.apply(self._load)

    def current_rv(self) -> int:
        return self._rv

    #: ``write(..., reserve=n)`` also takes the n revisions just below the row's, for nobody else (a template
    #: instance's objects, ``server.storage.templates``).
    reserves_revisions = True

    def submit(self, key: str, value: bytes | None, reserve: int = 0,
               on_commit: Callable[[int], None] | None = None) -> gevent.event.AsyncResult:
        """Queue a write without waiting: the result is its rv once committed (or its error). ``on_commit(rv)`` runs
        in the flusher right after the commit, in commit order, before any later write's -- it must not block.
        Several greenlets may submit at once (see the module docstring)."""
        self._check_open()
        pending = _Pending(key, value, reserve, on_commit)
        self._queue.append(pending)
        if self._flusher is None:
            self._flusher = gevent.spawn(self._flush)
        return pending.result

    def write(self, key: str, value: bytes | None, prev_rv: int = 0, reserve: int = 0) -> int:
        # prev_rv needs no check: this process is the file's only writer, and the store's memory is the truth.
        return self.submit(key, value, reserve).get()

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
        """Commit what is queued, then close the file."""
        if self._conn is None or self._closing:
            return
        self._closing = True  # no new writes; those queued are committed and answered
        flusher = self._flusher
        if flusher is not None and flusher is not gevent.getcurrent():
            flusher.join()
        try:
            self._pool.apply(self._close)
        finally:
            self._conn = None
            self._pool.kill()
