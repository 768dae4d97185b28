"""`Spool`: accepted items on disk, so that a crash (even SIGKILL) loses almost nothing.

The embedded default is one SQLite file in WAL mode, written by one thread (the
dispatcher's spool writer) in *group commits*: every ``window`` seconds (50 ms by
default) everything accepted since the last commit goes to disk in one transaction,
and only then is it released to the workers. A process killed at any moment has
lost at most what was accepted since the last commit began, and nothing committed
before. Delivered items are deleted in the same group commits; the leftovers of a
process that died are loaded by the next one to open the file, and sent.

``synchronous=NORMAL`` under WAL makes a commit durable against the death of the
process (the data is in the OS page cache and the WAL) but not against the loss of
power or a kernel crash before the next checkpoint; ``durability="full"`` fsyncs
every commit (``synchronous=FULL``) for that, at a cost of a disk flush per window.

The connection belongs to the process that opened it: a forked child opens its own
(SQLite connections must not cross a fork) and does not load leftovers, which are
the parent's to send.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import deque
from collections.abc import Iterable

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS items "
    "(id INTEGER PRIMARY KEY, key TEXT NOT NULL, body BLOB NOT NULL)"
)


class Spool:
    """One SQLite file; every method is called by one thread at a time (the writer, or
    the exiting thread once the writer is gone), under :attr:`lock`."""

    def __init__(self, path: str | os.PathLike[str], *, recover: bool, durability: str) -> None:
        if durability not in {"normal", "full"}:
            raise ValueError(f"durability must be 'normal' or 'full', not {durability!r}")
        self.path = os.fspath(path)
        self.lock = threading.Lock()
        self._durability = durability
        self._db: sqlite3.Connection | None = None
        self._pid = os.getpid()
        #: Row ids of delivered (or otherwise resolved) items, deleted at the next commit.
        self.finished: deque[int] = deque()
        self.rows = 0
        self.committed = 0  # rows inserted by this process
        self._leftover_last = 0  # highest leftover row id already loaded
        self._leftover_max = 0
        self.leftovers = 0  # leftover rows at open (what this process took over)
        self.leftovers_unloaded = 0
        if recover:  # a forked child (recover=False) connects on first use, off the fork hook
            db = self._connect()
            self._leftover_max = int(
                db.execute("SELECT coalesce(max(id), 0) FROM items").fetchone()[0]
            )
            self.leftovers = self.leftovers_unloaded = self.rows

    def _connect(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():
            # isolation_level=None: transactions are explicit (BEGIN ... COMMIT).
            db = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._durability.upper()}")
            db.execute(_SCHEMA)
            self.rows = int(db.execute("SELECT count(*) FROM items").fetchone()[0])
            self._db = db
            self._pid = os.getpid()
        return self._db

    def commit(self, rows: list[tuple[str, bytes]]) -> list[int]:
        """Insert ``rows`` (key, body) and delete finished rows, in one transaction;
        return the new row ids, in order."""
        db = self._connect()
        finished = []
        while self.finished:
            finished.append(self.finished.popleft())
        ids: list[int] = []
        if not rows and not finished:
            return ids
        db.execute("BEGIN IMMEDIATE")
        try:
            for key, body in rows:
                cursor = db.execute("INSERT INTO items (key, body) VALUES (?, ?)", (key, body))
                ids.append(int(cursor.lastrowid or 0))
            if finished:
                db.executemany("DELETE FROM items WHERE id = ?", [(i,) for i in finished])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self.finished.extendleft(reversed(finished))
            raise
        self.rows += len(rows) - len(finished)
        self.committed += len(rows)
        return ids

    def load_leftovers(self, limit: int) -> list[tuple[int, str, bytes]]:
        """The next ``limit`` rows left by an earlier process (oldest first)."""
        if not self.leftovers_unloaded:
            return []
        db = self._connect()
        rows = db.execute(
            "SELECT id, key, body FROM items WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
            (self._leftover_last, self._leftover_max, limit),
        ).fetchall()
        if rows:
            self._leftover_last = int(rows[-1][0])
        self.leftovers_unloaded = 0 if len(rows) < limit else self.leftovers_unloaded - len(rows)
        return [(int(i), str(k), bytes(b)) for i, k, b in rows]

    def evict_leftovers(self, n: int) -> int:
        """Delete up to ``n`` of the oldest leftovers not loaded yet; return how many."""
        if not self.leftovers_unloaded or n <= 0:
            return 0
        db = self._connect()
        ids = [
            int(r[0])
            for r in db.execute(
                "SELECT id FROM items WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                (self._leftover_last, self._leftover_max, n),
            ).fetchall()
        ]
        if not ids:
            self.leftovers_unloaded = 0
            return 0
        self._leftover_last = ids[-1]
        self.finished.extend(ids)
        self.leftovers_unloaded = max(0, self.leftovers_unloaded - len(ids))
        return len(ids)

    def discard(self, ids: Iterable[int]) -> None:
        """Rows whose items are resolved: deleted at the next commit (thread-safe)."""
        self.finished.extend(i for i in ids if i)

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None and self._pid == os.getpid():
            db.close()
