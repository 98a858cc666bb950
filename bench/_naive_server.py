"""The naive baseline for list_sessions.py: an aiohttp server that, on every request, opens
the store with aiosqlite, reads the page of sessions joined with their repositories and
serialises it with json.dumps. No cache, no in-memory records.

    python bench/_naive_server.py --db DATA/corral.db --port N [--shared]

``--shared`` keeps one aiosqlite connection for the process instead of one per request
(a less naive variant, reported for information).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import aiosqlite
from aiohttp import web

SESSION_FIELDS = (
    "id", "name", "description", "tags", "backend", "agent", "model", "status", "archived",
    "archived_at", "agent_state", "prompt", "no_plan_mode", "image", "container_id",
    "progress", "error_message", "created_at", "updated_at",
)  # fmt: skip
REPO_FIELDS = ("path", "mount_name", "worktree_path", "branch_name", "base_branch", "is_primary")

PAGE_SQL = f"""
SELECT {", ".join("s." + f for f in SESSION_FIELDS)},
       {", ".join("r." + f for f in REPO_FIELDS)}
FROM (SELECT * FROM sessions WHERE archived = 0
      ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?) AS s
JOIN repositories AS r ON r.session_id = s.id
ORDER BY s.created_at DESC, s.id DESC, r.position
"""
ONE_SQL = f"""
SELECT {", ".join("s." + f for f in SESSION_FIELDS)},
       {", ".join("r." + f for f in REPO_FIELDS)}
FROM sessions AS s JOIN repositories AS r ON r.session_id = s.id
WHERE s.id = ? ORDER BY r.position
"""


def _sessions(rows: list[Any]) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    n = len(SESSION_FIELDS)
    for row in rows:
        sid = row[0]
        session = out.get(sid)
        if session is None:
            session = dict(zip(SESSION_FIELDS, row[:n], strict=True))
            session["tags"] = json.loads(session["tags"])
            session["archived"] = bool(session["archived"])
            session["no_plan_mode"] = bool(session["no_plan_mode"])
            session["progress"] = json.loads(session["progress"]) if session["progress"] else None
            session["repositories"] = []
            out[sid] = session
        repo = dict(zip(REPO_FIELDS, row[n:], strict=True))
        repo["is_primary"] = bool(repo["is_primary"])
        session["repositories"].append(repo)
        if repo["is_primary"]:
            session.update(
                repo_path=repo["path"], worktree_path=repo["worktree_path"],
                branch_name=repo["branch_name"], base_branch=repo["base_branch"],
            )  # fmt: skip
    return list(out.values())


def make_app(db_path: str, shared: bool) -> web.Application:
    app = web.Application()
    state: dict[str, aiosqlite.Connection] = {}

    async def query(sql: str, params: tuple[Any, ...]) -> list[Any]:
        if shared:
            return list(await state["db"].execute_fetchall(sql, params))
        async with aiosqlite.connect(db_path) as db:
            return list(await db.execute_fetchall(sql, params))

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "healthy"})

    async def list_sessions(request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "100"))
        offset = int(request.query.get("offset", "0"))
        rows = await query(PAGE_SQL, (limit, offset))
        total = (await query("SELECT COUNT(*) FROM sessions WHERE archived = 0", ()))[0][0]
        body = json.dumps({"sessions": _sessions(rows), "total": total})
        return web.Response(body=body.encode(), content_type="application/json")

    async def get_session(request: web.Request) -> web.Response:
        rows = await query(ONE_SQL, (request.match_info["session_id"],))
        if not rows:
            return web.json_response({"error": "not found"}, status=404)
        body = json.dumps({"session": {**_sessions(rows)[0], "chat_history": []}})
        return web.Response(body=body.encode(), content_type="application/json")

    async def open_shared(app: web.Application) -> Any:
        if shared:
            state["db"] = await aiosqlite.connect(db_path)
        yield
        if shared:
            await state["db"].close()

    app.cleanup_ctx.append(open_shared)
    app.router.add_get("/health", health)
    app.router.add_get("/api/sessions", list_sessions)
    app.router.add_get("/api/sessions/{session_id}", get_session)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--shared", action="store_true")
    args = parser.parse_args()
    web.run_app(make_app(args.db, args.shared), host="127.0.0.1", port=args.port,
                print=None, access_log=None)  # fmt: skip


if __name__ == "__main__":
    main()
