"""The embedded default: conversations in one SQLite file (WAL mode), e.g.
~/.local/share/realm/conversations.sqlite.

A row is (tenant, id) -> (version, document). Compare-and-swap is `UPDATE ... WHERE version = ?`
and checking that one row changed, which holds across processes sharing the file as well as
across threads: SQLite serializes writers.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from .models import Conversation, Limits, StoreUnavailable
from .store import CasStore, Stored

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
) WITHOUT ROWID
"""


class SqliteConversationStore(CasStore[int]):
    def __init__(self, path: Path, limits: Limits | None = None) -> None:
        super().__init__(limits)
        self.path = Path(path)
        # One connection, used by one worker thread at a time (the lock): simpler than a pool and
        # enough, since SQLite runs one writer at a time anyway. Opened on first use, so a runtime
        # whose tenants never use conversations never creates the file.
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode: a power cut may lose the last transactions, never corrupt the file.
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(_SCHEMA)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _execute(self, sql: str, args: tuple[object, ...]) -> sqlite3.Cursor:
        """Run one statement; the caller holds the lock."""
        try:
            return self._connect().execute(sql, args)
        except (sqlite3.Error, OSError) as e:
            raise StoreUnavailable(f"The conversation store failed: {e}") from e

    def _read(self, tenant: str, conversation_id: str) -> tuple[Conversation, int] | None:
        with self._lock:
            row = self._execute(
                "SELECT version, doc FROM conversations WHERE tenant = ? AND id = ?",
                (tenant, conversation_id),
            ).fetchone()
        if row is None:
            return None
        return Conversation.model_validate_json(row[1]), int(row[0])

    def _insert(self, conversation: Conversation) -> None:
        with self._lock:
            self._execute(
                "INSERT INTO conversations (tenant, id, version, doc) VALUES (?, ?, ?, ?)",
                (conversation.tenant, conversation.id, conversation.version, conversation.model_dump_json()),
            )

    def _replace(self, conversation: Conversation, token: int) -> bool:
        with self._lock:
            cur = self._execute(
                "UPDATE conversations SET version = ?, doc = ? WHERE tenant = ? AND id = ? AND version = ?",
                (
                    conversation.version,
                    conversation.model_dump_json(),
                    conversation.tenant,
                    conversation.id,
                    token,
                ),
            )
        return cur.rowcount == 1

    def _delete(self, tenant: str, conversation_id: str) -> bool:
        with self._lock:
            cur = self._execute(
                "DELETE FROM conversations WHERE tenant = ? AND id = ?", (tenant, conversation_id)
            )
        return cur.rowcount == 1

    def _list(self, tenant: str, limit: int, after: str | None) -> list[Conversation]:
        with self._lock:
            rows = self._execute(
                "SELECT doc FROM conversations WHERE tenant = ? AND id > ? ORDER BY id LIMIT ?",
                (tenant, after or "", limit),
            ).fetchall()
        return [Conversation.model_validate_json(r[0]) for r in rows]

    def _usage(self, tenant: str) -> list[Stored]:
        with self._lock:
            rows = self._execute(
                "SELECT id, LENGTH(CAST(doc AS BLOB)), json_extract(doc, '$.updated_at') "
                "FROM conversations WHERE tenant = ?",
                (tenant,),
            ).fetchall()
        return [Stored(r[0], int(r[1]), float(r[2])) for r in rows]

    def _close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
