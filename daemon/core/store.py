"""The SQLite store: sessions, repositories, the operations journal and events.

aiosqlite keeps every query off the event loop. WAL mode lets readers go on while a write
commits; ``synchronous=NORMAL`` is durable across a daemon crash (only a power cut can lose
the last commits, never corrupt the file). Migrations are numbered and applied in order;
``PRAGMA user_version`` holds the schema version.

Over 400 lines on purpose: it is one SQLite schema (its migrations) and the mapping of
every table to Python, on one connection. Sessions, the journal, cursors and events share
its transactions (a journal step and the session row it records commit together) and its
one writer; split across modules, a migration and the queries that depend on it would
drift apart.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import structlog

from daemon.core.errors import InternalError
from daemon.core.faults import JournalHook
from daemon.core.models import Repository
from daemon.core.session import SessionRecord, rfc3339, utcnow

log = structlog.get_logger(__name__)

MIGRATIONS: list[str] = [
    # 1: the first schema.
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL DEFAULT '',
        tags TEXT NOT NULL DEFAULT '[]',
        backend TEXT NOT NULL,
        agent TEXT NOT NULL,
        model TEXT,
        status TEXT NOT NULL,
        archived INTEGER NOT NULL DEFAULT 0,
        archived_at TEXT,
        agent_state TEXT NOT NULL DEFAULT 'unknown',
        prompt TEXT NOT NULL,
        no_plan_mode INTEGER NOT NULL DEFAULT 0,
        image TEXT,
        image_paths TEXT NOT NULL DEFAULT '[]',
        container_id TEXT,
        progress TEXT,
        error_message TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE repositories (
        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        path TEXT NOT NULL,
        mount_name TEXT NOT NULL,
        worktree_path TEXT NOT NULL,
        branch_name TEXT NOT NULL,
        base_branch TEXT NOT NULL,
        is_primary INTEGER NOT NULL,
        subdir TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (session_id, position)
    );
    CREATE TABLE operations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        step TEXT NOT NULL,
        state TEXT NOT NULL,
        error TEXT,
        started_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX operations_open ON operations(state) WHERE state = 'running';
    CREATE TABLE events (
        session_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        payload TEXT NOT NULL,
        timestamp TEXT NOT NULL,
        PRIMARY KEY (session_id, seq)
    ) WITHOUT ROWID;
    """,
    # 2: where each agent's transcript and hook file were read up to, and the parser state.
    """
    CREATE TABLE agent_cursors (
        session_id TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
        cursor TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    """,
    # 3: automatic recovery of each session: attempts, timing, and how it ended.
    """
    CREATE TABLE reconciliation (
        session_id TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_attempt TEXT,
        last_error TEXT,
        next_attempt TEXT,
        outcome TEXT,
        recreated INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 4: sign-in: users, their passkeys, browser sessions and API tokens (daemon/auth/).
    # Session and token secrets are stored as SHA-256 hashes only.
    """
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        display_name TEXT NOT NULL,
        handle BLOB NOT NULL UNIQUE,
        created_at TEXT NOT NULL
    );
    CREATE TABLE credentials (
        id BLOB PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        public_key BLOB NOT NULL,
        sign_count INTEGER NOT NULL,
        transports TEXT NOT NULL DEFAULT '[]',
        name TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        last_used_at TEXT
    );
    CREATE TABLE auth_sessions (
        token_hash TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    );
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        hint TEXT NOT NULL,
        created_at TEXT NOT NULL,
        last_used_at TEXT
    );
    """,
    # 5: credentials: each session's egress and budgets, the placeholder credential its
    # container holds (hashed: the gateway looks it up), and usage counted by the gateway.
    # Sessions made before this ran with an open network, and keep it.
    """
    ALTER TABLE sessions ADD COLUMN agent_state_reason TEXT;
    ALTER TABLE sessions ADD COLUMN egress TEXT NOT NULL DEFAULT 'open';
    ALTER TABLE sessions ADD COLUMN max_cost_usd REAL;
    ALTER TABLE sessions ADD COLUMN max_tokens INTEGER;
    CREATE TABLE gateway_tokens (
        session_id TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
        token_hash TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE usage (
        session_id TEXT NOT NULL,
        day TEXT NOT NULL,
        agent TEXT NOT NULL,
        model TEXT NOT NULL,
        requests INTEGER NOT NULL DEFAULT 0,
        errors INTEGER NOT NULL DEFAULT 0,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cache_read_tokens INTEGER NOT NULL DEFAULT 0,
        cache_write_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (session_id, day, model)
    );
    CREATE INDEX usage_by_day ON usage(day);
    """,
]


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


_SESSION_COLUMNS = [
    "id", "name", "description", "tags", "backend", "agent", "model", "status", "archived",
    "archived_at", "agent_state", "prompt", "no_plan_mode", "image", "image_paths",
    "container_id", "progress", "error_message", "created_at", "updated_at",
    "agent_state_reason", "egress", "max_cost_usd", "max_tokens",
]  # fmt: skip
_JSON_COLUMNS = {"tags", "image_paths"}
_TIME_COLUMNS = {"archived_at", "created_at", "updated_at"}


def _to_column(name: str, value: Any) -> Any:
    if name in _JSON_COLUMNS:
        return json.dumps(value)
    if name in _TIME_COLUMNS:
        return rfc3339(value)
    if name == "progress":
        return value.model_dump_json() if value is not None else None
    if isinstance(value, bool):
        return int(value)
    return value


_EVENT_INSERT = "INSERT INTO events (session_id, seq, type, payload, timestamp) VALUES "
_T = TypeVar("_T")
_EVENT_ROWS_PER_INSERT = 1000  # at most; five parameters a row, within SQLite's own limit


def _session_data(row: sqlite3.Row) -> dict[str, Any]:
    """A sessions row as SessionRecord fields (its repositories apart)."""
    data = {c: row[c] for c in _SESSION_COLUMNS}
    for c in _JSON_COLUMNS:
        data[c] = json.loads(data[c])
    for c in _TIME_COLUMNS:
        data[c] = _parse_time(data[c])
    data["progress"] = json.loads(data["progress"]) if data["progress"] else None
    data["archived"] = bool(data["archived"])
    data["no_plan_mode"] = bool(data["no_plan_mode"])
    return data


class StoreError(InternalError):
    """The store could not be written (disk full, read-only file, corruption).

    An API error of its own (500, its message saying what SQLite said), so a request whose
    write failed tells the client why rather than "internal error".
    """


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._operation_kinds: dict[int, str] = {}  # open operations, for the fault hook
        # Told of each journaled step; only tests install one (daemon/core/faults.py).
        self.journal_hook: JournalHook | None = None
        self._max_variables = 999  # SQLite's bound parameters per statement; read at open
        # Moves with every write to a session (done or failed); answers built from the
        # sessions are cached under it, so no code path can forget to invalidate them.
        self.sessions_changed = 0

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path)
        self._db.row_factory = sqlite3.Row
        try:
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute("PRAGMA synchronous=NORMAL")
            await self._db.execute("PRAGMA foreign_keys=ON")
            await self._db.execute("PRAGMA busy_timeout=5000")
            await self._migrate()
            self._max_variables = await self._on_thread(
                lambda db: db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            )
        except BaseException:
            await self.close()  # an open connection's thread would keep the process alive
            raise

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _migrate(self) -> None:
        async with self.db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise StoreError(
                f"store schema version {version} is newer than this corral "
                f"({len(MIGRATIONS)}); upgrade corral"
            )
        for number, sql in enumerate(MIGRATIONS[version:], start=version + 1):
            await self.db.executescript(f"BEGIN;\n{sql}\nPRAGMA user_version = {number};\nCOMMIT;")
            log.info("store_migrated", version=number)

    async def schema_version(self) -> int:
        async with self.db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def write(self, statements: Iterable[tuple[str, Iterable[Any]]]) -> int:
        """Run statements in one transaction; the last one's row count.

        The whole transaction is one trip to the store's thread, so no other coroutine's
        statement can land inside it (nor be rolled back or committed with it), and it
        costs one wake-up. A failure rolls back and raises StoreError.
        """
        rowcount, _ = await self._transaction(statements)
        return rowcount

    async def _transaction(
        self, statements: Iterable[tuple[str, Iterable[Any]]]
    ) -> tuple[int, int | None]:
        """``write``'s work: the last statement's row count and last row id."""
        batch = [(sql, tuple(params)) for sql, params in statements]

        def run(db: sqlite3.Connection) -> tuple[int, int | None]:
            result: tuple[int, int | None] = (0, None)
            try:
                for sql, params in batch:
                    cursor = db.execute(sql, params)
                    result = (cursor.rowcount, cursor.lastrowid)
                db.commit()
            except sqlite3.Error as exc:
                db.rollback()
                raise StoreError(f"the store could not be written: {exc}") from exc
            return result

        return await self._on_thread(run)

    # sessions

    async def _write_sessions(self, statements: list[tuple[str, Iterable[Any]]]) -> None:
        try:
            await self.write(statements)
        finally:
            self.sessions_changed += 1

    async def insert_session(self, record: SessionRecord) -> None:
        data = record.model_dump()
        columns = ", ".join(_SESSION_COLUMNS)
        marks = ", ".join("?" for _ in _SESSION_COLUMNS)
        statements: list[tuple[str, Iterable[Any]]] = [
            (
                f"INSERT INTO sessions ({columns}) VALUES ({marks})",  # noqa: S608 - fixed names
                [
                    _to_column(c, getattr(record, c) if c == "progress" else data[c])
                    for c in _SESSION_COLUMNS
                ],
            )
        ]
        statements += self._repository_rows(record)
        await self._write_sessions(statements)

    def _repository_rows(self, record: SessionRecord) -> list[tuple[str, Iterable[Any]]]:
        rows: list[tuple[str, Iterable[Any]]] = [
            ("DELETE FROM repositories WHERE session_id = ?", [record.id])
        ]
        for position, repo in enumerate(record.repositories):
            rows.append(
                (
                    "INSERT INTO repositories (session_id, position, path, mount_name, "
                    "worktree_path, branch_name, base_branch, is_primary, subdir) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [record.id, position, repo.path, repo.mount_name, repo.worktree_path,
                     repo.branch_name, repo.base_branch, int(repo.is_primary), repo.subdir],
                )
            )  # fmt: skip
        return rows

    async def update_session(self, record: SessionRecord, fields: Iterable[str]) -> None:
        names = [f for f in fields if f in _SESSION_COLUMNS and f != "id"]
        if not names:
            return
        assignments = ", ".join(f"{n} = ?" for n in names)
        await self._write_sessions(
            [
                (
                    f"UPDATE sessions SET {assignments} WHERE id = ?",  # noqa: S608 - fixed names
                    [_to_column(n, getattr(record, n)) for n in names] + [record.id],
                )
            ]
        )

    async def delete_session(self, session_id: str) -> None:
        await self._write_sessions(
            [
                ("DELETE FROM events WHERE session_id = ?", [session_id]),
                ("DELETE FROM agent_cursors WHERE session_id = ?", [session_id]),
                ("DELETE FROM sessions WHERE id = ?", [session_id]),
            ]
        )

    async def load_sessions(self) -> list[SessionRecord]:
        repos: dict[str, list[Repository]] = {}
        async with self.db.execute(
            "SELECT * FROM repositories ORDER BY session_id, position"
        ) as cur:
            async for row in cur:
                repos.setdefault(row["session_id"], []).append(
                    Repository(
                        path=row["path"],
                        mount_name=row["mount_name"],
                        worktree_path=row["worktree_path"],
                        branch_name=row["branch_name"],
                        base_branch=row["base_branch"],
                        is_primary=bool(row["is_primary"]),
                        subdir=row["subdir"],
                    )
                )
        records = []
        # rowid breaks ties in the order rows were made (older rows have whole seconds).
        async with self.db.execute("SELECT * FROM sessions ORDER BY created_at, rowid") as cur:
            async for row in cur:
                data = _session_data(row)
                records.append(SessionRecord(**data, repositories=repos.get(row["id"], [])))
        return records

    async def stored_fields(self, session_id: str, fields: Iterable[str]) -> dict[str, Any]:
        """What the store holds for these fields of a session (after a failed write)."""
        async with self.db.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return {}
        data = _session_data(row)
        return {f: data[f] for f in fields if f in data}

    # agent cursors

    async def load_cursor(self, session_id: str) -> dict[str, Any] | None:
        async with self.db.execute(
            "SELECT cursor FROM agent_cursors WHERE session_id = ?", (session_id,)
        ) as cur:
            row = await cur.fetchone()
        return dict(json.loads(row["cursor"])) if row else None

    async def save_cursor(self, session_id: str, cursor: dict[str, Any]) -> None:
        await self.write(
            [
                (
                    "INSERT INTO agent_cursors (session_id, cursor, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(session_id) DO UPDATE SET cursor = excluded.cursor, "
                    "updated_at = excluded.updated_at",
                    [session_id, json.dumps(cursor), rfc3339(utcnow())],
                )
            ]
        )

    # reconciliation (automatic recovery)

    async def load_reconciliation(self) -> dict[str, dict[str, Any]]:
        """Every session's stored recovery state, times parsed."""
        async with self.db.execute("SELECT * FROM reconciliation") as cur:
            rows = [dict(row) async for row in cur]
        out = {}
        for row in rows:
            for key in ("last_attempt", "next_attempt"):
                row[key] = _parse_time(row[key])
            row["recreated"] = bool(row["recreated"])
            out[row.pop("session_id")] = row
        return out

    async def save_reconciliation(self, session_id: str, state: dict[str, Any]) -> None:
        """Store one session's recovery state (keys: the table's columns)."""
        await self.write(
            [
                (
                    "INSERT INTO reconciliation (session_id, attempts, last_attempt, last_error, "
                    "next_attempt, outcome, recreated) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(session_id) DO UPDATE SET attempts = excluded.attempts, "
                    "last_attempt = excluded.last_attempt, last_error = excluded.last_error, "
                    "next_attempt = excluded.next_attempt, outcome = excluded.outcome, "
                    "recreated = excluded.recreated",
                    [session_id, state["attempts"], rfc3339(state["last_attempt"]),
                     state["last_error"], rfc3339(state["next_attempt"]), state["outcome"],
                     int(state["recreated"])],
                )
            ]
        )  # fmt: skip

    async def delete_reconciliation(self, session_id: str) -> None:
        await self.write([("DELETE FROM reconciliation WHERE session_id = ?", [session_id])])

    # operations journal

    async def begin_operation(self, session_id: str, kind: str, step: str) -> int:
        now = rfc3339(utcnow())
        _, op_id = await self._transaction(
            [("INSERT INTO operations (session_id, kind, step, state, started_at, updated_at) "
              "VALUES (?, ?, ?, 'running', ?, ?)", (session_id, kind, step, now, now))]
        )  # fmt: skip
        assert op_id is not None
        self._operation_kinds[op_id] = kind
        if self.journal_hook is not None:
            self.journal_hook.journal_step(kind, step)
        return op_id

    async def record_step(
        self, op_id: int, step: str, record: SessionRecord, fields: Iterable[str]
    ) -> None:
        """A journal step and the session's changed fields, in one transaction."""
        names = [f for f in fields if f in _SESSION_COLUMNS and f != "id"]
        assignments = ", ".join(f"{n} = ?" for n in names)
        await self._write_sessions(
            [
                ("UPDATE operations SET step = ?, updated_at = ? WHERE id = ?",
                 [step, rfc3339(utcnow()), op_id]),
                (f"UPDATE sessions SET {assignments} WHERE id = ?",  # noqa: S608 - fixed names
                 [_to_column(n, getattr(record, n)) for n in names] + [record.id]),
            ]
        )  # fmt: skip
        if self.journal_hook is not None:
            self.journal_hook.journal_step(self._operation_kinds.get(op_id, "?"), step)

    async def end_operation(self, op_id: int, state: str, error: str | None = None) -> None:
        kind = self._operation_kinds.pop(op_id, "?")
        if state == "done" and self.journal_hook is not None:
            self.journal_hook.journal_step(kind, "end")
        await self.write(
            [("UPDATE operations SET state = ?, error = ?, updated_at = ? WHERE id = ?",
              [state, error, rfc3339(utcnow()), op_id])]
        )  # fmt: skip

    async def open_operations(self) -> list[dict[str, Any]]:
        async with self.db.execute(
            "SELECT * FROM operations WHERE state = 'running' ORDER BY id"
        ) as cur:
            return [dict(row) async for row in cur]

    async def operations_for(self, session_id: str) -> list[dict[str, Any]]:
        async with self.db.execute(
            "SELECT * FROM operations WHERE session_id = ? ORDER BY id", (session_id,)
        ) as cur:
            return [dict(row) async for row in cur]

    # events

    async def max_seqs(self) -> dict[str, int]:
        async with self.db.execute(
            "SELECT session_id, MAX(seq) AS seq FROM events GROUP BY session_id"
        ) as cur:
            return {row["session_id"]: int(row["seq"]) async for row in cur}

    async def insert_events(self, rows: list[tuple[str, int, str, str, str]]) -> None:
        """Store a batch of events in one transaction, in one trip to the store's thread.

        One trip rather than one per statement and one for the commit: each trip wakes that
        thread and then the event loop, and at a thousand events a second those wake-ups
        cost more CPU than the writes. A few multi-row INSERTs rather than ``executemany``:
        sqlite3 hands the GIL back and forth around every statement step, and while the
        event loop is busy each hand-back can wait out the switch interval (5 ms).
        """
        per_insert = min(_EVENT_ROWS_PER_INSERT, self._max_variables // 5)
        statements = []
        for start in range(0, len(rows), per_insert):
            chunk = rows[start : start + per_insert]
            marks = ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk))  # placeholders only
            statements.append((_EVENT_INSERT + marks, [value for row in chunk for value in row]))
        await self.write(statements)

    async def _on_thread(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work`` with the sqlite3 connection on aiosqlite's own thread.

        aiosqlite (pinned in pyproject.toml) has no public call for this; its private
        ``_execute`` is what every one of its own methods uses.
        """
        run: Callable[..., Awaitable[_T]] = self.db._execute
        connection: sqlite3.Connection = self.db._conn
        return await run(work, connection)

    async def events_tail(
        self, session_id: str, limit: int, types: Iterable[str]
    ) -> list[dict[str, Any]]:
        """The last ``limit`` events of these types, oldest first."""
        kinds = list(types)
        marks = ", ".join("?" for _ in kinds)
        async with self.db.execute(
            f"SELECT * FROM (SELECT * FROM events WHERE session_id = ? AND type IN ({marks}) "  # noqa: S608
            "ORDER BY seq DESC LIMIT ?) ORDER BY seq",
            [session_id, *kinds, limit],
        ) as cur:
            return [_event(session_id, row) async for row in cur]

    async def events_after(
        self, session_id: str, after: int, limit: int, types: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        sql = "SELECT * FROM events WHERE session_id = ? AND seq > ?"
        params: list[Any] = [session_id, after]
        if types is not None:
            kinds = list(types)
            sql += f" AND type IN ({', '.join('?' for _ in kinds)})"
            params += kinds
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
        # One trip to the store's thread for the page: iterating the cursor would make one
        # per 64 rows, each waking that thread and then the event loop.
        rows = await self.db.execute_fetchall(sql, params)
        return [_event(session_id, row) for row in rows]


def _event(session_id: str, row: sqlite3.Row) -> dict[str, Any]:
    return {
        **json.loads(row["payload"]),
        "type": row["type"],
        "session_id": session_id,
        "seq": row["seq"],
        "timestamp": row["timestamp"],
    }
