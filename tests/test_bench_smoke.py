"""The benchmarks run and report: each bench script with --quick prints one JSON line.

Timings never decide pass or fail here: only the shape of the report is checked (keys
present, figures numeric). The targets are for the full runs (see bench/README.md).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

pytestmark = pytest.mark.docker

# script -> the metrics it must report
EXPECTED = {
    "create_to_running.py": {"serial", "concurrent5"},
    "list_sessions.py": {
        "list_default_page_rps",
        "list_limit1000_rps",
        "get_session_p99_under_load",
    },
    "memory.py": {"rss_with_sessions"},
    "console_throughput.py": {"docker_throughput", "local_throughput"},
    # needs terminado (its baseline): the script exits with a message saying so when missing
    "console_latency.py": {
        "idle_p99_vs_terminado",
        "idle_p99_vs_raw",
        "flood_p99_vs_terminado",
        "flood_p99_vs_raw",
    },
    "console_memory.py": {"rss_per_full_session"},
    "reconcile_kill_to_event.py": {"kill_to_status_p99"},
    "reconcile_pass.py": {"pass_time", "pass_engine_calls"},
    "startup_reattach.py": {"start_to_consoles_reattached"},
    "events_fanout.py": {"latency_p99_1000eps", "gaps_1000eps", "max_delivered_rate"},
    "events_replay.py": {"replay_10k"},
    "diff.py": {"diff_first_page", "changes_event_latency"},
    "changes_paint.py": {"changes_first_paint"},  # needs /usr/bin/chromium
    "local_loop_lag.py": {"flood_read_tick_lateness_worst", "input_write_tick_lateness_worst"},
    "first_run.py": {"clone_to_answering", "image_build"},
    "gateway.py": {"ttft_p50", "ttft_p99", "stream_throughput", "cpu_50_streams"},
}
METRIC_NUMBERS = ("measured", "baseline", "overhead", "samples")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _run(script: str, busybox_image: str) -> dict[str, Any]:
    env = {**os.environ, "CORRALTEST_BUSYBOX_IMAGE": busybox_image}
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"{script} printed {len(lines)} lines on stdout: {proc.stdout[:2000]}"
    result = json.loads(lines[0])
    assert isinstance(result, dict)
    return result


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_bench_quick_reports_one_json_line(script: str, busybox_image: str) -> None:
    result = _run(script, busybox_image)
    assert result["bench"] == script.removesuffix(".py")
    assert result["quick"] is True
    assert isinstance(result["pass"], bool)
    metrics = result["metrics"]
    assert set(metrics) == EXPECTED[script]
    for name, m in metrics.items():
        for key in METRIC_NUMBERS:
            assert _number(m[key]), f"{name}.{key} = {m.get(key)!r}"
        assert m["samples"] >= 1
        assert m["baseline_samples"] >= 1
        assert m["measured"] >= 0
        assert m["baseline"] >= 0
        assert isinstance(m["unit"], str)
        assert m["unit"]
        assert isinstance(m["pass"], bool)
        target = m["target"]
        assert target["field"] in ("measured", "overhead", "ratio")
        assert target["op"] in ("<=", ">=")
        assert _number(target["value"])
        if target["field"] == "ratio":
            assert _number(m["ratio"])
    assert result["pass"] == all(m["pass"] for m in metrics.values())
