"""First run: from a fresh clone to the daemon answering, through the README's run command.

Measured: ``git clone`` of HEAD into a temporary folder, then ``scripts/serve.sh --port 0``
in it (its own .venv, the engine check, the web UI) until ``/health`` answers: the engine
present and the caches warm (pip's and npm's), as on a machine that ran corral before.
With ``--cold``, pip and npm get empty caches of their own (a fresh machine's downloads).
Baseline: ``corral serve`` alone in the same clone once prepared (the daemon's own start).
Reported beside it: serve.sh again in the prepared clone (nothing to rebuild), and each
step's own time from serve.sh's log.

Second metric: the default agent image built by ``images/agent/build-default.sh`` under a
hash tag of its own (so nothing is reused by hash); warm, the Debian base and the CLIs are
cached; ``--cold`` builds from a copy of the recipe with no CLIs installed, an empty npm
cache and a new Debian base from debootstrap (``CORRAL_AGENT_BASE=debootstrap``: minutes).
Baseline: the same script when the hash tag exists (tagging only).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _common as c

STEP = re.compile(r"serve: (.+?) \((\d+\.\d) s\)")
LISTENING = re.compile(r"listening.*?http://127\.0\.0\.1:(\d+)")


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV" and not k.startswith("CORRAL_")
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if Path(p) != c.VENV_BIN
    )
    env.update(extra)
    return env


def _serve_until_answering(
    command: list[str], clone: Path, work: Path, env: dict[str, str], log_name: str
) -> tuple[float, str]:
    """Run ``command`` in ``clone`` until the daemon's /health answers; seconds, its log."""
    log_path = work / log_name
    data_dir = work / f"data-{log_name}"
    start = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*command, "--port", "0", "--data-dir", str(data_dir)],
            cwd=clone, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        port = None
        while port is None:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{command} exited {proc.returncode}:\n{log_path.read_text()[-3000:]}"
                )
            match = LISTENING.search(log_path.read_text())
            port = int(match.group(1)) if match else None
            time.sleep(0.05)
        c.wait_http(f"http://127.0.0.1:{port}/health", timeout=60, proc=proc)
        elapsed = time.perf_counter() - start
    finally:
        c.stop_process(proc)
    return elapsed, log_path.read_text()


def bench_clone(work: Path, cold: bool) -> dict[str, object]:
    env_extra = {"CORRAL_CONFIG": str(work / "absent.toml")}
    if cold:
        env_extra["PIP_NO_CACHE_DIR"] = "1"
        env_extra["npm_config_cache"] = str(work / "npm-cache")
    env = _env(env_extra)
    clone = work / "clone"
    start = time.perf_counter()
    subprocess.run(["git", "clone", "-q", str(c.ROOT), str(clone)], check=True, timeout=120)
    clone_s = time.perf_counter() - start
    serve_s, first_log = _serve_until_answering(
        ["bash", "scripts/serve.sh"], clone, work, env, "first.log"
    )
    total = clone_s + serve_s
    steps = {name: float(sec) for name, sec in STEP.findall(first_log)}
    c.log.info("fresh clone to answering: %.1f s (clone %.1f s; %s)", total, clone_s, steps)
    rerun_s, rerun_log = _serve_until_answering(
        ["bash", "scripts/serve.sh"], clone, work, env, "rerun.log"
    )
    daemon_s, _ = _serve_until_answering(
        [str(clone / ".venv/bin/corral"), "serve"], clone, work, env, "bare.log"
    )
    c.log.info("serve.sh again: %.1f s; corral serve alone: %.1f s", rerun_s, daemon_s)
    return c.metric(
        measured=total,
        baseline=daemon_s,
        unit="s",
        target_field="measured",
        target_op="<=",
        target=30.0 if not cold else 600.0,
        samples=1,
        clone_s=round(clone_s, 2),
        steps_s=steps,
        rerun_s=round(rerun_s, 2),
        rerun_steps_s={name: float(sec) for name, sec in STEP.findall(rerun_log)},
        cold=cold,
    )


def _build(recipe: Path, tag: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    out = subprocess.run(
        ["bash", str(recipe / "build-default.sh"), tag],
        env=env, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"build-default.sh failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - start


def bench_image(work: Path, cold: bool) -> dict[str, object]:
    repo = f"corral-bench-agent-{secrets.token_hex(4)}"
    tag = f"{repo}:latest"
    env_extra = {"CORRAL_AGENT_HASH_REPO": repo}
    recipe = c.ROOT / "images" / "agent"
    if cold:
        recipe = work / "recipe"
        shutil.copytree(c.ROOT / "images" / "agent", recipe, ignore=shutil.ignore_patterns("cli"))
        env_extra["npm_config_cache"] = str(work / "npm-cache-image")
        env_extra["CORRAL_AGENT_BASE"] = "debootstrap"
    env = _env(env_extra)
    hash_tag = subprocess.run(
        ["bash", str(recipe / "build-default.sh"), "--hash-tag"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        build_s = _build(recipe, tag, env)
        reuse_s = _build(recipe, f"{repo}:again", env)
    finally:
        subprocess.run(
            ["docker", "rmi", tag, f"{repo}:again", hash_tag], capture_output=True, check=False
        )
    c.log.info("image build: %.1f s; reused by hash: %.1f s", build_s, reuse_s)
    return c.metric(
        measured=build_s,
        baseline=reuse_s,
        unit="s",
        target_field="measured",
        target_op="<=",
        target=60.0 if not cold else 900.0,
        samples=1,
        cold=cold,
    )


def main() -> None:
    if "--cold" in sys.argv:
        sys.argv.remove("--cold")
        cold = True
    else:
        cold = False
    args = c.setup(__doc__ or "")
    with c.workdir("corral-bench-first-run-") as work:
        clone = bench_clone(work, cold)
        image = bench_image(work, cold)
    c.emit("first_run", args.quick, {"clone_to_answering": clone, "image_build": image})


if __name__ == "__main__":
    main()
