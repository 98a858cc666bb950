"""GET /api/sessions throughput with 1,000 stored sessions vs a naive aiosqlite handler.

The store is filled by starting the daemon once (it migrates the schema), stopping it and
inserting 1,000 stopped sessions (one repository each) with sqlite3, then starting it again.
The baseline is bench/_naive_server.py in its own process on the same database: on every
request it opens aiosqlite, reads the page (sessions joined with repositories) and
json.dumps it. Each server is loaded in turn by a separate load-generator process holding
50 keep-alive connections, for a fixed duration, in interleaved rounds (median reported).

Targets: corral rps >= 5x naive rps (default page of 100; limit=1000 reported too), and
GET /api/sessions/{id} p99 <= 30 ms under the same load (50 connections, 80% list requests,
20% single-session requests to random ids).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import (
    ROOT,
    Daemon,
    busybox_image,
    cpu_seconds,
    emit,
    free_port,
    insert_session_rows,
    log,
    make_repo,
    median,
    metric,
    percentile,
    run_load,
    setup,
    stop_process,
    wait_http,
    workdir,
)

CONCURRENCY = 50
SESSIONS = 1000


def fill_store(db_path: Path, repo: Path, data_dir: Path, image: str, count: int) -> list[str]:
    """Insert ``count`` stopped sessions with one repository each; returns their ids."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ids: list[str] = []
    sessions = []
    repos = []
    for i in range(count):
        sid = str(uuid.uuid4())
        name = f"bench-{i:04d}"
        ts = (start + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
        ids.append(sid)
        sessions.append(
            (sid, name, f"benchmark session {i}", json.dumps(["bench", f"t{i % 7}"]), "docker",
             "claude", None, "stopped", 0, None, "unknown", f"prompt number {i}: do the thing",
             0, image, "[]", None, None, None, ts, ts)
        )  # fmt: skip
        repos.append(
            (sid, 0, str(repo), "repo", str(data_dir / "worktrees" / name / "repo"),
             f"corral/{name}", "main", 1, "")
        )  # fmt: skip
    insert_session_rows(db_path, sessions, repos)
    return ids


def check_servers(corral: str, naive: str, count: int) -> dict[str, int]:
    """Both answer the same page; returns the body sizes (bytes) for the report."""
    import urllib.request

    sizes = {}
    for label, base in (("corral", corral), ("naive", naive)):
        for limit in (100, 1000):
            with urllib.request.urlopen(f"{base}/api/sessions?limit={limit}", timeout=10) as r:
                raw = r.read()
            body = json.loads(raw)
            expected = min(limit, count)
            if len(body["sessions"]) != expected or body["total"] != count:
                raise RuntimeError(
                    f"{label} answered {len(body['sessions'])} sessions, total {body['total']}"
                )
            sizes[f"{label}_limit{limit}_bytes"] = len(raw)
        newest = json.loads(
            urllib.request.urlopen(f"{base}/api/sessions?limit=1", timeout=10).read()
        )
        if newest["sessions"][0]["name"] != f"bench-{count - 1:04d}":
            raise RuntimeError(f"{label}: not newest first: {newest['sessions'][0]['name']}")
    return sizes


PHASES: dict[str, list[tuple[str, str, float]]] = {
    "list100": [("list", "/api/sessions", 1.0)],
    "list1000": [("list", "/api/sessions?limit=1000", 1.0)],
    "mixed": [("list", "/api/sessions", 0.8), ("detail", "/api/sessions/{id}", 0.2)],
}


def main() -> None:
    args = setup(__doc__ or "")
    rounds = 1 if args.quick else 3
    duration = 0.5 if args.quick else 5.0
    count = SESSIONS
    image = busybox_image()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {"corral": {}, "naive": {}}
    with workdir("corral-bench-list-") as root:
        repo = make_repo(root / "repo")
        data_dir = root / "data"
        daemon = Daemon(data_dir, image)
        naive: subprocess.Popen[bytes] | None = None
        try:
            daemon.start()
            daemon.stop()  # the schema is in place
            ids = fill_store(data_dir / "corral.db", repo, data_dir, image, count)
            daemon.start()
            naive_port = free_port()
            naive = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "_naive_server.py"),
                 "--db", str(data_dir / "corral.db"), "--port", str(naive_port)],
                stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr,
            )  # fmt: skip
            naive_url = f"http://127.0.0.1:{naive_port}"
            wait_http(f"{naive_url}/health", proc=naive)
            sizes = check_servers(daemon.url, naive_url, count)
            log.info("bodies: %s", sizes)
            servers = {"corral": (daemon.port, daemon.pid), "naive": (naive_port, naive.pid)}
            for r in range(rounds):
                for phase, paths in PHASES.items():
                    order = ("corral", "naive") if r % 2 == 0 else ("naive", "corral")
                    for label in order:
                        port, pid = servers[label]
                        cpu0 = cpu_seconds(pid)
                        res = run_load(port, paths, concurrency=CONCURRENCY, duration=duration,
                                       ids=ids, seed=r * 1000 + 7)  # fmt: skip
                        server_cpu = (cpu_seconds(pid) - cpu0) / res.duration
                        if res.errors:
                            raise RuntimeError(f"{label} {phase}: {res.errors} non-200 answers")
                        lat = res.latencies
                        entry: dict[str, Any] = {
                            "rps": res.rps,
                            "requests": res.requests,
                            "server_cpu": server_cpu,
                            "client_cpu": res.client_cpu / res.duration,
                            "p50_ms": {k: percentile(v, 50) * 1e3 for k, v in lat.items()},
                            "p99_ms": {k: percentile(v, 99) * 1e3 for k, v in lat.items()},
                            "n": {k: len(v) for k, v in res.latencies.items()},
                        }  # fmt: skip
                        results[label].setdefault(phase, []).append(entry)
                        log.info("round %d %-6s %-8s %8.0f rps  server cpu %3.0f%%  client cpu "
                                 "%3.0f%%  p99 %s", r + 1, label, phase, res.rps,
                                 server_cpu * 100, entry["client_cpu"] * 100,
                                 {k: round(v, 1) for k, v in entry["p99_ms"].items()})  # fmt: skip
        finally:
            if naive is not None:
                stop_process(naive)
            daemon.stop()
            daemon.sweep()

    def med(label: str, phase: str, key: str, sub: str | None = None) -> float:
        rows = results[label][phase]
        return median([row[key][sub] if sub else row[key] for row in rows])

    def total(label: str, phase: str, sub: str) -> int:
        return sum(row["n"][sub] for row in results[label][phase])

    def cpu(phase: str) -> dict[str, Any]:
        return {f"{label}_{side}_cpu": round(med(label, phase, f"{side}_cpu"), 3)
                for label in ("corral", "naive") for side in ("server", "client")}  # fmt: skip

    metrics = {
        "list_default_page_rps": metric(
            measured=med("corral", "list100", "rps"), baseline=med("naive", "list100", "rps"),
            unit="req/s", target_field="ratio", target_op=">=", target=5.0, samples=rounds,
            requests=total("corral", "list100", "list"),
            baseline_requests=total("naive", "list100", "list"), **cpu("list100"),
        ),
        "list_limit1000_rps": metric(
            measured=med("corral", "list1000", "rps"), baseline=med("naive", "list1000", "rps"),
            unit="req/s", target_field="ratio", target_op=">=", target=5.0, samples=rounds,
            requests=total("corral", "list1000", "list"),
            baseline_requests=total("naive", "list1000", "list"), **cpu("list1000"),
        ),
        "get_session_p99_under_load": metric(
            measured=med("corral", "mixed", "p99_ms", "detail"),
            baseline=med("naive", "mixed", "p99_ms", "detail"),
            unit="ms", target_field="measured", target_op="<=", target=30.0, samples=rounds,
            requests=total("corral", "mixed", "detail"),
            baseline_requests=total("naive", "mixed", "detail"),
            measured_p50=round(med("corral", "mixed", "p50_ms", "detail"), 3),
            list_p99_ms=round(med("corral", "mixed", "p99_ms", "list"), 3),
            mixed_rps=round(med("corral", "mixed", "rps"), 1),
            baseline_mixed_rps=round(med("naive", "mixed", "rps"), 1), **cpu("mixed"),
        ),
    }  # fmt: skip
    emit("list_sessions", args.quick, metrics, sessions=count, concurrency=CONCURRENCY,
         duration_s=duration, rounds=rounds, **sizes)  # fmt: skip


if __name__ == "__main__":
    main()
