"""Token budget windows in a small sqlite3 file next to the config (or in the state directory systemd
gives a service), so they survive a restart.

Chosen over rebuilding the windows from the access log at start-up: the log may be stdout or
off, may be rotated away, and a month of it is millions of lines to parse before the first
request (benchmarks/token_state.py has both costs).  The request path only adds to a dict;
the additions are written in one transaction at most once a second (FLUSH_INTERVAL), so a
crash forgets at most that second, and a clean stop writes them all.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Mapping

from ...decisions.budget import BUCKETS, TokenBook, bucket_seconds

FLUSH_INTERVAL = 1.0
_SCHEMA = """CREATE TABLE IF NOT EXISTS tokens (
    key TEXT NOT NULL, unit TEXT NOT NULL, bucket INTEGER NOT NULL, tokens INTEGER NOT NULL,
    PRIMARY KEY (key, unit, bucket)) WITHOUT ROWID"""


def state_path(config_path: Path, environ: Mapping[str, str]) -> Path:
    """guardproxy.toml -> guardproxy.state.sqlite3: in $STATE_DIRECTORY when it is set, else in the same folder.

    systemd sets $STATE_DIRECTORY for a unit with StateDirectory= (colon-separated when it names several:
    the first is used); the hardened unit may not write next to its config in /etc.
    """
    name = config_path.stem + ".state.sqlite3"
    state_dir = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state_dir) / name if state_dir else config_path.with_name(name)


def read_book(path: Path, windows: dict[str, float], now: float) -> TokenBook:
    """The windows as the file has them, read-only (`usage`, while a gate may be writing it)."""
    book = TokenBook()
    if path.exists():
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            _load(db, book, windows, now)
        finally:
            db.close()
    return book


def _load(db: sqlite3.Connection, book: TokenBook, windows: dict[str, float], now: float) -> None:
    rows = []
    for unit, window in windows.items():
        oldest = int(now // bucket_seconds(window)) - BUCKETS + 1
        rows += db.execute("SELECT key, unit, bucket, tokens FROM tokens WHERE unit = ? AND bucket >= ?",
                           (unit, oldest)).fetchall()
    book.load(rows, windows)


class TokenFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")      # `usage` reads while the gate writes
        self._db.execute("PRAGMA synchronous=NORMAL")    # durable at checkpoints; a crash loses the last writes
        self._db.execute(_SCHEMA)
        self._pending: dict[tuple[str, str, int], int] = {}

    def load(self, book: TokenBook, windows: dict[str, float], now: float) -> None:
        """Read what is still inside each window (`windows`: unit -> seconds) into `book`."""
        _load(self._db, book, windows, now)

    def add(self, key: str, unit: str, bucket: int, tokens: int) -> bool:
        """Remember an addition; True when it is the first since the last flush (schedule one)."""
        first = not self._pending
        k = (key, unit, bucket)
        self._pending[k] = self._pending.get(k, 0) + tokens
        return first

    def flush(self, windows: dict[str, float], now: float) -> None:
        """Write the additions, and forget buckets that have left every window."""
        pending, self._pending = self._pending, {}
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO tokens (key, unit, bucket, tokens) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT (key, unit, bucket) DO UPDATE SET tokens = tokens + excluded.tokens",
                           [(*k, n) for k, n in pending.items()])
            for unit, window in windows.items():
                db.execute("DELETE FROM tokens WHERE unit = ? AND bucket <= ?",
                           (unit, int(now // bucket_seconds(window)) - BUCKETS))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            for k, n in pending.items():   # kept for the next flush
                self._pending[k] = self._pending.get(k, 0) + n
            raise

    def close(self) -> None:
        self._db.close()
