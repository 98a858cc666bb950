"""The model gateway: time to first token, streamed throughput and CPU, vs the upstream direct.

Three processes: a local upstream (aiohttp, streaming Anthropic-shaped SSE), the gateway
(``ModelGateway`` with an allow-all guard, one API key and a meter that only counts; the
usage tap runs on every answer as in the daemon), and this process as the agent side (an
aiohttp client).

1. TTFT: from sending ``POST /v1/messages`` to the first byte of the answer (the upstream
   sends ``message_start`` at once, then a short stream), direct and through the gateway,
   interleaved, N each. Targets: p50 overhead <= 5 ms, p99 overhead <= 15 ms.
2. Throughput: one answer of SIZE bytes of ``content_block_delta`` frames, written one
   event a write as fast as the upstream can (a model server at full speed), read to the
   end; 3 interleaved rounds, median. Target ratio >= 0.95. Beside it, not a target, the
   line rate: 64 KiB writes over loopback, where "direct" runs at memory speed and the
   gateway's extra hop (a read and a write of every byte in Python) is what is measured.
3. CPU: 50 concurrent streams, each paced like a fast model (80 deltas/s for a few
   seconds); the gateway process's own CPU seconds (user + system, /proc/<pid>/stat; the
   client and the upstream are other processes) / wall time, as % of one core; 3 rounds,
   median. The baseline is a plain aiohttp pass-through proxy in its own process doing the
   same (``ClientSession.request``, ``readany``, ``StreamResponse.write``; no placeholder,
   no credential, no usage tap); the upstream's own CPU for the same streams sent direct is
   reported beside them. Target <= 10 %.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import ROOT, cpu_seconds, emit, log, median, metric, percentile, setup

STREAMS = 50
RATE = 80.0  # deltas per second per stream: a fast model


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


START = _sse(
    "message_start",
    {
        "type": "message_start",
        "message": {
            "id": "msg_bench",
            "model": "claude-bench",
            "usage": {"input_tokens": 1000, "output_tokens": 1},
        },
    },
)
DELTA = _sse(
    "content_block_delta",
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "token "}},
)
END = _sse(
    "message_delta",
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}},
) + _sse("message_stop", {"type": "message_stop"})


# --- the upstream and the gateway, each in its own process ---------------------------------


async def _until_terminated() -> None:
    # A clean exit on SIGTERM, so that a profiler wrapped around a server writes its report.
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


async def serve_upstream() -> None:
    from aiohttp import web

    block = DELTA * (65536 // len(DELTA))

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        mode = request.query.get("mode", "ttft")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(START)
        if mode == "bulk":  # the line rate: 64 KiB writes, as fast as the socket takes them
            left = int(request.query["size"])
            while left > 0:
                await response.write(block)
                left -= len(block)
        elif mode == "events":  # a model server at full speed: one write per event
            left = int(request.query["size"])
            while left > 0:
                await response.write(DELTA)
                left -= len(DELTA)
        elif mode == "paced":
            count = int(request.query["n"])
            rate = float(request.query["rate"])
            started = time.monotonic()
            for i in range(count):
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await response.write(DELTA)
        else:
            for _ in range(10):
                await response.write(DELTA)
        await response.write(END)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/messages", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(runner.addresses[0][1], flush=True)
    await _until_terminated()
    await runner.cleanup()


async def serve_gateway(upstream: str) -> None:
    import structlog

    from daemon.core.access import Credential, GatewayClient, Usage
    from daemon.gateway.server import ModelGateway
    from daemon.settings import Settings

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))

    class Guard:
        async def authorize(self, token: str, remote: str) -> GatewayClient:
            return GatewayClient("bench", "claude", "api_key", "none")

        async def session_at(self, remote: str) -> GatewayClient | None:
            return None

    class Credentials:
        async def credential(self, agent: str) -> Credential | None:
            return Credential("claude", "api_key", "sk-ant-api03-bench-" + "k" * 30, "bench")

    class Meter:
        def __init__(self) -> None:
            self.requests = 0

        def refusal(self, session_id: str) -> str | None:
            return None

        async def record(
            self, session_id: str, model: str, usage: Usage, *, error: bool = False
        ) -> None:
            self.requests += 1

        async def refused(self, session_id: str) -> None:
            pass

    with tempfile.TemporaryDirectory(prefix="corral-bench-gw-") as data:
        settings = Settings.model_validate(
            {"data_dir": data, "agents": {"anthropic_base_url": upstream}}
        )
        gateway = ModelGateway(settings, Guard(), Credentials(), Meter())
        await gateway.start()
        print(gateway.port, flush=True)
        await _until_terminated()
        await gateway.close()


async def serve_plain(upstream: str) -> None:
    """The baseline: the simplest aiohttp proxy, what the gateway did before its relay."""
    from aiohttp import web

    skip = {"host", "connection", "transfer-encoding", "content-length", "keep-alive"}
    client = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        auto_decompress=False,
        read_bufsize=256 * 1024,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=600),
    )

    async def relay(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        async with client.request(
            request.method,
            upstream + request.raw_path.removeprefix("/anthropic"),
            headers=headers,
            data=request.content,
        ) as answer:
            response = web.StreamResponse(status=answer.status)
            for name, value in answer.headers.items():
                if name.lower() not in skip:
                    response.headers.add(name, value)
            await response.prepare(request)
            while chunk := await answer.content.readany():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", relay)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(runner.addresses[0][1], flush=True)
    await _until_terminated()
    await runner.cleanup()
    await client.close()


def spawn(*args: str) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, cwd=ROOT, env=os.environ
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{args[0]} did not start")
    return proc, int(line)


# --- the agent side --------------------------------------------------------------------------

BODY = {"model": "claude-bench", "max_tokens": 100, "stream": True, "messages": []}
HEADERS = {"x-api-key": "sk-ant-api03-corral-bench", "anthropic-version": "2023-06-01"}


async def ttft(http: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    async with http.post(f"{url}/v1/messages", json=BODY, headers=HEADERS) as response:
        await response.content.readany()
        first = time.perf_counter() - started
        await response.read()
    return first * 1000


async def bulk(http: aiohttp.ClientSession, url: str, size: int, mode: str = "events") -> float:
    started = time.perf_counter()
    got = 0
    async with http.post(
        f"{url}/v1/messages?mode={mode}&size={size}", json=BODY, headers=HEADERS
    ) as response:
        async for chunk in response.content.iter_any():
            got += len(chunk)
    return got / (time.perf_counter() - started) / 1e6


async def paced(http: aiohttp.ClientSession, url: str, count: int, rate: float = RATE) -> None:
    async with http.post(
        f"{url}/v1/messages?mode=paced&n={count}&rate={rate}", json=BODY, headers=HEADERS
    ) as response:
        async for _ in response.content.iter_any():
            pass


async def streams_cpu(
    http: aiohttp.ClientSession, url: str, pid: int, count: int, rate: float = RATE
) -> tuple[float, float]:
    """(CPU % of one core of process ``pid``, wall seconds) while STREAMS streams run."""
    cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(paced(http, url, count, rate) for _ in range(STREAMS)))
    wall = time.perf_counter() - wall0
    return (cpu_seconds(pid) - cpu0) / wall * 100, wall


async def measure(quick: bool) -> None:
    upstream, up_port = spawn("--serve", "upstream")
    direct = f"http://127.0.0.1:{up_port}"
    gateway, gw_port = spawn("--serve", "gateway", direct)
    through = f"http://127.0.0.1:{gw_port}/anthropic"
    plain, plain_port = spawn("--serve", "plain", direct)
    plain_url = f"http://127.0.0.1:{plain_port}/anthropic"
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            for url in (direct, through):  # warm both paths
                for _ in range(5):
                    await ttft(http, url)
            n = 20 if quick else 300
            direct_ms: list[float] = []
            gateway_ms: list[float] = []
            for i in range(n):
                pair = [(direct, direct_ms), (through, gateway_ms)]
                for url, into in pair if i % 2 else reversed(pair):
                    into.append(await ttft(http, url))
            log.info("ttft done: direct p50 %.2f ms, gateway p50 %.2f ms",
                     percentile(direct_ms, 50), percentile(gateway_ms, 50))  # fmt: skip

            size = 5_000_000 if quick else 50_000_000
            rounds = 1 if quick else 3
            direct_mbps: list[float] = []
            gateway_mbps: list[float] = []
            direct_line: list[float] = []
            gateway_line: list[float] = []
            for i in range(rounds):
                trio = [(direct, direct_mbps, direct_line), (through, gateway_mbps, gateway_line)]
                for url, into, line in trio if i % 2 else reversed(trio):
                    into.append(await bulk(http, url, size))
                    line.append(await bulk(http, url, size * 4, "bulk"))
            log.info("throughput: direct %s MB/s, gateway %s MB/s", direct_mbps, gateway_mbps)
            log.info("line rate: direct %s MB/s, gateway %s MB/s", direct_line, gateway_line)

            count = int(RATE * (1 if quick else 5))
            await paced(http, plain_url, 5)  # warm the baseline's path
            gw_cpus: list[float] = []
            plain_cpus: list[float] = []
            upstream_cpus: list[float] = []
            walls: list[float] = []
            for i in range(1 if quick else 3):
                trio = [
                    (through, gateway.pid, gw_cpus),
                    (plain_url, plain.pid, plain_cpus),
                    (direct, upstream.pid, upstream_cpus),
                ]
                for url, pid, into in trio if i % 2 == 0 else reversed(trio):
                    cpu, wall = await streams_cpu(http, url, pid, count)
                    into.append(cpu)
                    if url == through:
                        walls.append(wall)
                log.info(
                    "cpu at %d streams: gateway %.1f %%, plain proxy %.1f %%, upstream %.1f %%",
                    STREAMS,
                    gw_cpus[-1],
                    plain_cpus[-1],
                    upstream_cpus[-1],
                )
            gw_cpu, plain_cpu, wall = median(gw_cpus), median(plain_cpus), median(walls)
    finally:
        for proc in (plain, gateway, upstream):
            proc.terminate()
            proc.wait(timeout=10)

    metrics = {
        "ttft_p50": metric(
            measured=percentile(gateway_ms, 50),
            baseline=percentile(direct_ms, 50),
            unit="ms",
            target_field="overhead",
            target_op="<=",
            target=5.0,
            samples=len(gateway_ms),
        ),
        "ttft_p99": metric(
            measured=percentile(gateway_ms, 99),
            baseline=percentile(direct_ms, 99),
            unit="ms",
            target_field="overhead",
            target_op="<=",
            target=15.0,
            samples=len(gateway_ms),
        ),
        "stream_throughput": metric(
            measured=median(gateway_mbps),
            baseline=median(direct_mbps),
            unit="MB/s",
            target_field="ratio",
            target_op=">=",
            target=0.95,
            samples=len(gateway_mbps),
            answer_bytes=size,
            # Not a target: 64 KiB writes over loopback (memory speed direct).
            line_rate_mbps={
                "direct": round(median(direct_line)),
                "gateway": round(median(gateway_line)),
            },
        ),
        "cpu_50_streams": metric(
            measured=gw_cpu,
            baseline=plain_cpu,
            unit="% of one core",
            target_field="measured",
            target_op="<=",
            target=10.0,
            samples=len(gw_cpus),
            baseline_samples=len(plain_cpus),
            streams=STREAMS,
            rounds={
                "gateway": [round(c, 1) for c in gw_cpus],
                "plain_proxy": [round(c, 1) for c in plain_cpus],
                "upstream_direct": [round(c, 1) for c in upstream_cpus],
            },
            baseline_is="a plain aiohttp pass-through proxy (readany + write) doing the same",
            upstream_direct=round(median(upstream_cpus), 1),
            deltas_per_second=round(STREAMS * count / wall),
            cpu_us_per_delta=round(gw_cpu / 100 * wall / (STREAMS * count) * 1e6, 1),
            cpu_ms_per_stream=round(gw_cpu / 100 * wall / STREAMS * 1e3, 2),
            seconds=round(wall, 2),
        ),
    }
    emit("gateway", quick, metrics)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        role = sys.argv[2]
        if role == "upstream":
            asyncio.run(serve_upstream())
        elif role == "plain":
            asyncio.run(serve_plain(sys.argv[3]))
        else:
            asyncio.run(serve_gateway(sys.argv[3]))
        return
    args = setup(__doc__.splitlines()[0])
    asyncio.run(measure(args.quick))


if __name__ == "__main__":
    main()
