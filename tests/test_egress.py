"""The egress policy's parts: the allowlist proxy and the sealed Docker network.

The proxy runs for real on 127.0.0.1 (or a sealed network's host address) with a fake
``SessionGuard`` that names the session of a peer address; upstreams are TCP and HTTP
servers of the test on 127.0.0.1. With a real engine, a container on an internal network
reaches the proxy at that network's host address and through it a listed server, is refused
an unlisted one, and reaches nothing else: not a container on the default bridge.
Traffic goes only to 127.0.0.1, the Docker gateways and the test's own containers.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from backends.base import BackendError
from backends.docker import SEALED_NETWORK, DockerBackend
from backends.local import LocalBackend
from daemon.core.access import AccessDenied, GatewayClient
from daemon.gateway import egress
from daemon.gateway.egress import EgressProxy, HostRule, matching_rule, parse_head, parse_rules
from daemon.gateway.ports import PORTS_FILE
from daemon.settings import Settings
from tests.model_server import bridge_gateway

SESSION = "0b5e7a58-6f2d-4a8e-9c43-5d3f7e2a1c90"


def client_of(egress_policy: str = "allowlist", session_id: str = SESSION) -> GatewayClient:
    return GatewayClient(session_id, "claude", "api_key", egress_policy)  # type: ignore[arg-type]


class FakeGuard:
    """Names the session of each known peer address; nothing else."""

    def __init__(self, sessions: dict[str, GatewayClient] | None = None) -> None:
        self.sessions = dict(sessions or {})
        self.asked: list[str] = []

    async def authorize(self, token: str, remote: str) -> GatewayClient:
        raise AccessDenied("the proxy never asks this")

    async def session_at(self, remote: str) -> GatewayClient | None:
        self.asked.append(remote)
        return self.sessions.get(remote)


def make_settings(tmp_path: Path, allowed: list[str]) -> Settings:
    return Settings.model_validate(
        {"data_dir": str(tmp_path / "data"), "egress": {"allowed_hosts": allowed}}
    )


# -- the allowlist ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "host", "port", "allowed"),
    [
        ("pypi.org", "pypi.org", 443, True),
        ("pypi.org", "PyPI.org.", 80, True),  # case and the root dot do not matter
        ("pypi.org", "pypi.org", 8443, False),  # a port not named: 80 and 443 only
        ("pypi.org", "files.pypi.org", 443, False),  # exact: no subdomain
        ("pypi.org", "evilpypi.org", 443, False),
        ("pypi.org", "pypi.org.evil.com", 443, False),
        ("*.example.com", "a.example.com", 443, True),
        ("*.example.com", "a.b.example.com", 443, True),
        ("*.example.com", "example.com", 443, False),  # subdomains only
        ("*.example.com", "badexample.com", 443, False),
        ("registry.local:8443", "registry.local", 8443, True),
        ("registry.local:8443", "registry.local", 443, False),  # a named port replaces both
        ("*.internal.test:5000", "pkg.internal.test", 5000, True),
        ("10.1.2.3", "10.1.2.3", 443, True),
        ("[::1]:9000", "::1", 9000, True),
        ("localhost:3000", "localhost", 3000, True),
        ("localhost:3000", "127.0.0.1", 3000, False),  # the name, not what it resolves to
    ],
)
def test_host_rules(entry: str, host: str, port: int, allowed: bool) -> None:
    rules = parse_rules([entry])
    assert len(rules) == 1
    assert (matching_rule(rules, host, port) is not None) is allowed


def test_entries_that_mean_nothing_are_left_out() -> None:
    assert parse_rules(["", "host:99999", "host:x", "*.10.0.0.1", "a b", "[::1"]) == []
    assert HostRule.parse("localhost").literal  # type: ignore[union-attr]
    assert HostRule.parse("10.0.0.1:80").literal  # type: ignore[union-attr]
    assert not HostRule.parse("pypi.org").literal  # type: ignore[union-attr]


def test_request_heads() -> None:
    tunnel = parse_head(b"CONNECT PyPI.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n")
    assert (tunnel.tunnel, tunnel.host, tunnel.port) == (True, "pypi.org", 443)
    plain = parse_head(
        b"GET http://deb.debian.org/debian/dists?x=1 HTTP/1.1\r\nHost: deb.debian.org\r\n"
        b"Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\n"
        b"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nAccept: */*\r\n\r\n"
    )
    assert (plain.tunnel, plain.host, plain.port) == (False, "deb.debian.org", 80)
    assert plain.upstream_head == (
        b"GET /debian/dists?x=1 HTTP/1.1\r\nHost: deb.debian.org\r\nAccept: */*\r\n"
        b"Connection: close\r\n\r\n"
    )
    for bad in (
        b"GET /relative HTTP/1.1\r\n\r\n",  # not a proxy request
        b"GET https://pypi.org/ HTTP/1.1\r\n\r\n",  # https goes through CONNECT
        b"CONNECT pypi.org HTTP/1.1\r\n\r\n",  # no port
        b"CONNECT pypi.org:443 HTTP/2\r\n\r\n",
        b"GET http://user:pw@pypi.org/ HTTP/1.1\r\n\r\n",
        b"GET http://pypi.org/ HTTP/1.1\r\n folded\r\n\r\n",
        b"CONNECT a\xffb:443 HTTP/1.1\r\n\r\n",
    ):
        with pytest.raises(egress._Reply) as refused:
            parse_head(bad)
        assert refused.value.status == 400


def test_inward_addresses() -> None:
    own = frozenset({"192.0.2.2"})
    for address in ("127.0.0.1", "::1", "169.254.169.254", "0.0.0.0", "::ffff:127.0.0.1"):
        assert egress._inward(address, own), address
    assert egress._inward("192.0.2.2", own)
    assert not egress._inward("151.101.0.223", own)
    # The machine's own table names its loopback and its interfaces.
    assert "127.0.0.1" in egress._read_own_addresses()


# -- the proxy on 127.0.0.1 --------------------------------------------------------------------


@pytest.fixture
async def echo_server() -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that answers each chunk with ``echo:<chunk>``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(b"echo:" + data)
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


@dataclass
class HttpServer:
    port: int
    seen: list[tuple[str, str]]  # (method, path and query) of each request


@pytest.fixture
async def http_server() -> AsyncIterator[HttpServer]:
    """An HTTP server on 127.0.0.1 that answers with the request it saw, as JSON."""
    server = HttpServer(0, [])

    async def seen(request: web.Request) -> web.Response:
        server.seen.append((request.method, request.path_qs))
        return web.json_response(
            {"path": request.path_qs, "headers": {k.lower(): v for k, v in request.headers.items()}}
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", seen)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = int(runner.addresses[0][1])
    yield server
    await runner.cleanup()


ProxyFactory = Callable[..., Awaitable[tuple[EgressProxy, int]]]


@pytest.fixture
async def proxy_at(tmp_path: Path) -> AsyncIterator[ProxyFactory]:
    """Starts an EgressProxy on 127.0.0.1; its peer (127.0.0.1) is the guard's session."""
    made: list[EgressProxy] = []

    async def start(
        allowed: list[str], client: GatewayClient | None = None, **options: Any
    ) -> tuple[EgressProxy, int]:
        guard = FakeGuard({"127.0.0.1": client} if client else {})
        proxy = EgressProxy(make_settings(tmp_path, allowed), guard, **options)
        made.append(proxy)
        url = await proxy.proxy_url("127.0.0.1")
        return proxy, int(url.rsplit(":", 1)[1])

    yield start
    for proxy in made:
        await proxy.close()


async def ask(port: int, head: bytes) -> tuple[bytes, bytes]:
    """Send ``head`` to the proxy: its answer's head and body (by its Content-Length)."""
    _, writer, answer, body = await open_with(port, head)
    writer.close()
    await writer.wait_closed()
    return answer, body


async def open_with(
    port: int, head: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes, bytes]:
    """Send ``head`` to the proxy and read its answer; the connection stays open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    async with asyncio.timeout(10):
        answer = await reader.readuntil(b"\r\n\r\n")
        body = b""
        for line in answer.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                body = await reader.readexactly(int(line.split(b":")[1]))
    return reader, writer, answer, body


async def test_connect_to_a_listed_host_relays_both_ways(
    proxy_at: ProxyFactory, echo_server: int
) -> None:
    proxy, port = await proxy_at([f"localhost:{echo_server}"], client_of())
    reader, writer, answer, _ = await open_with(
        port, f"CONNECT localhost:{echo_server} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 200 ")
    for payload in (b"ping", b"x" * 200_000):
        writer.write(payload)
        await writer.drain()
        expected = len(payload) + 5 * -(-len(payload) // 65536)  # one echo: prefix per chunk
        got = b""
        async with asyncio.timeout(10):
            while len(got.replace(b"echo:", b"")) < len(payload):
                got += await reader.read(65536)
        assert got.replace(b"echo:", b"") == payload
        assert len(got) <= expected + 5 * 8
    # The client's end closes the upstream too; the proxy forgets the connection.
    writer.close()
    async with asyncio.timeout(5):
        while proxy._connections:
            await asyncio.sleep(0.01)


async def test_an_unlisted_host_is_refused_with_how_to_allow_it(
    proxy_at: ProxyFactory, echo_server: int
) -> None:
    _, port = await proxy_at([f"localhost:{echo_server}"], client_of())
    answer, body = await ask(port, f"CONNECT 127.0.0.1:{echo_server} HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(
        f"HTTP/1.1 403 Forbidden by corral: 127.0.0.1:{echo_server} is not in "
        "egress.allowed_hosts\r\n".encode()
    )
    text = body.decode()
    assert f"127.0.0.1:{echo_server}" in text
    assert "egress.allowed_hosts" in text
    assert '"allowlist"' in text
    assert '"open"' in text


async def test_a_listed_host_on_another_port_is_refused(
    proxy_at: ProxyFactory, echo_server: int
) -> None:
    _, port = await proxy_at(["localhost"], client_of())
    answer, body = await ask(port, f"CONNECT localhost:{echo_server} HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 403")
    assert f'add "localhost:{echo_server}"' in body.decode()


@pytest.mark.parametrize("policy", ["none", "open"])
async def test_a_session_without_allowlist_egress_is_refused(
    proxy_at: ProxyFactory, echo_server: int, policy: str
) -> None:
    _, port = await proxy_at([f"localhost:{echo_server}"], client_of(policy))
    answer, body = await ask(port, f"CONNECT localhost:{echo_server} HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 403")
    assert f'egress is "{policy}"' in body.decode()


async def test_an_unknown_peer_is_refused(proxy_at: ProxyFactory, echo_server: int) -> None:
    proxy, port = await proxy_at([f"localhost:{echo_server}"], None)
    answer, body = await ask(port, f"CONNECT localhost:{echo_server} HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 403")
    assert b"not a corral session" in body
    assert proxy.guard.asked == ["127.0.0.1"]  # type: ignore[attr-defined]


async def forwarded(proxy_at: ProxyFactory, http_server: HttpServer, head: str) -> Any:
    """What the listed HTTP server saw of ``head`` sent through a proxy that allows it."""
    _, port = await proxy_at([f"localhost:{http_server.port}"], client_of())
    answer, body = await ask(port, head.encode())
    assert answer.startswith(b"HTTP/1.1 200")
    return json.loads(body)


async def test_absolute_form_get_is_forwarded_in_origin_form(
    proxy_at: ProxyFactory, http_server: HttpServer
) -> None:
    seen = await forwarded(
        proxy_at,
        http_server,
        f"GET http://localhost:{http_server.port}/simple/pkg/?v=1 HTTP/1.1\r\n"
        f"Host: localhost:{http_server.port}\r\nProxy-Connection: keep-alive\r\n"
        "Proxy-Authorization: Basic c2VjcmV0\r\nUser-Agent: pip\r\n\r\n",
    )
    assert seen["path"] == "/simple/pkg/?v=1"
    assert seen["headers"]["user-agent"] == "pip"
    assert seen["headers"]["connection"] == "close"
    assert "proxy-connection" not in seen["headers"]
    assert "proxy-authorization" not in seen["headers"]


async def test_a_post_body_sent_with_the_head_reaches_the_host(
    proxy_at: ProxyFactory, http_server: HttpServer
) -> None:
    seen = await forwarded(
        proxy_at,
        http_server,
        f"POST http://localhost:{http_server.port}/upload HTTP/1.1\r\nHost: localhost\r\n"
        "Content-Length: 5\r\n\r\nhello",
    )
    assert seen["headers"]["content-length"] == "5"


async def test_an_oversized_or_malformed_head_is_refused(proxy_at: ProxyFactory) -> None:
    _, port = await proxy_at(["localhost"], client_of())
    huge = b"CONNECT localhost:443 HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 20_000 + b"\r\n\r\n"
    answer, _ = await ask(port, huge)
    assert answer.startswith(b"HTTP/1.1 431")
    answer, _ = await ask(port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")


async def test_a_listed_name_that_resolves_to_this_machine_is_refused(
    proxy_at: ProxyFactory, echo_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DNS for a listed name answered with the loopback (as a hostile resolver could).
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def resolve(host: str, port: int, **kwargs: Any) -> Any:
        if host == "registry.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return await real(host, port, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    _, port = await proxy_at([f"registry.test:{echo_server}"], client_of())
    answer, body = await ask(port, f"CONNECT registry.test:{echo_server} HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 403")
    assert b"an address of this machine" in body


async def test_a_closed_port_is_a_bad_gateway(proxy_at: ProxyFactory) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    _, port = await proxy_at([f"localhost:{closed}"], client_of())
    answer, body = await ask(port, f"CONNECT localhost:{closed} HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 502")
    assert b"cannot connect" in body


async def test_an_idle_tunnel_is_closed(proxy_at: ProxyFactory, echo_server: int) -> None:
    proxy, port = await proxy_at([f"localhost:{echo_server}"], client_of(), idle_timeout=0.3)
    reader, writer, answer, _ = await open_with(
        port, f"CONNECT localhost:{echo_server} HTTP/1.1\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 200")
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # closed by the proxy, nothing sent
    assert not proxy._connections
    writer.close()


async def test_close_ends_open_tunnels_and_the_port_is_kept(
    tmp_path: Path, proxy_at: ProxyFactory, echo_server: int
) -> None:
    proxy, port = await proxy_at([f"localhost:{echo_server}"], client_of())
    assert await proxy.proxy_url("127.0.0.1") == f"http://127.0.0.1:{port}"  # idempotent
    reader, writer, answer, _ = await open_with(
        port, f"CONNECT localhost:{echo_server} HTTP/1.1\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 200")
    await proxy.close()
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()
    assert json.loads((tmp_path / "data" / PORTS_FILE).read_text())["proxy"] == port
    _, again_port = await proxy_at([], client_of())
    assert again_port == port  # a restarted daemon listens where containers were told


# -- real Docker -------------------------------------------------------------------------------


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=check, timeout=60
    ).stdout.strip()


NODE_CONNECT = """
const net = require('net');
const [host, port, target, payload] = process.argv.slice(1);
const s = net.connect(+port, host);
let out = ''; let sent = false;
s.setTimeout(5000, () => { process.stdout.write(out + 'TIMEOUT'); process.exit(0); });
s.on('error', e => { process.stdout.write(out + 'ERROR ' + e.code); process.exit(0); });
s.on('connect', () => s.write(`CONNECT ${target} HTTP/1.1\\r\\nHost: ${target}\\r\\n\\r\\n`));
s.on('data', d => {
  out += d.toString('latin1');
  if (!sent && out.startsWith('HTTP/1.1 200') && out.includes('\\r\\n\\r\\n')) {
    sent = true; s.write(payload);
  } else if (sent && out.includes('echo:')) { s.end(); }
});
s.on('close', () => { process.stdout.write(out); process.exit(0); });
"""

NODE_REACH = """
const net = require('net');
const [host, port] = process.argv.slice(1);
const s = net.connect(+port, host);
s.setTimeout(2000, () => { console.log('TIMEOUT'); process.exit(0); });
s.on('error', e => { console.log('ERROR ' + e.code); process.exit(0); });
s.on('connect', () => { console.log('CONNECTED'); process.exit(0); });
"""

NODE_LISTEN = "require('net').createServer(c => c.end('hi')).listen(8080)"


async def run_in(
    container: str, *command: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    options = [f"--env={key}={value}" for key, value in (env or {}).items()]
    process = await asyncio.create_subprocess_exec(
        "docker", "exec", *options, container, *command,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()  # a hung exec is not left behind the failed test
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def in_container(container: str, script: str, *args: str) -> str:
    code, out, err = await run_in(container, "node", "-e", script, *args)
    assert code == 0, err
    return out


@pytest.fixture
async def sealed_net() -> AsyncIterator[tuple[DockerBackend, str]]:
    backend = DockerBackend()
    name = f"{SEALED_NETWORK}-test-{secrets.token_hex(4)}"
    try:
        yield backend, name
    finally:
        label = f"corral.test.egress={name}"
        ids = docker("ps", "-aq", "--filter", f"label={label}", check=False).split()
        if ids:
            docker("rm", "-f", *ids, check=False)
        docker("network", "rm", name, check=False)
        await backend.close()


@pytest.mark.docker
async def test_ensure_network_makes_an_internal_network_and_answers_its_gateway(
    sealed_net: tuple[DockerBackend, str],
) -> None:
    backend, name = sealed_net
    address = await backend.ensure_network(name, internal=True)
    found = json.loads(docker("network", "inspect", name))[0]
    assert found["Internal"] is True
    assert found["Labels"] == {"corral.managed": "true"}
    assert found["Options"] == {"com.docker.network.bridge.enable_icc": "false"}
    assert address == found["IPAM"]["Config"][0]["Gateway"]
    # Again, and twice at once: the same network, the same address.
    again = await asyncio.gather(*(backend.ensure_network(name, internal=True) for _ in range(3)))
    assert set(again) == {address}
    assert len(docker("network", "ls", "-q", "--filter", f"name=^{name}$").split()) == 1
    # An existing network is only inspected; one that is not internal is not taken as sealed.
    assert await backend.ensure_network("bridge", internal=False) == bridge_gateway()
    with pytest.raises(BackendError, match="not internal"):
        await backend.ensure_network("bridge", internal=True)
    # Backends without networks say so.
    local = LocalBackend()
    with pytest.raises(NotImplementedError):
        await local.ensure_network(name, internal=True)
    assert await local.container_address("anything") is None
    await local.close()


@pytest.mark.docker
async def test_a_sealed_container_reaches_only_the_proxy_and_listed_hosts(
    sealed_net: tuple[DockerBackend, str],
    agent_image: str,
    tmp_path: Path,
    echo_server: int,
    http_server: HttpServer,
) -> None:
    backend, name = sealed_net
    gateway = await backend.ensure_network(name, internal=True)
    label = f"corral.test.egress={name}"
    sealed = docker(
        "run", "-d", "--label", label, "--network", name, "--cap-drop", "ALL",
        agent_image, "sleep", "300",
    )  # fmt: skip
    neighbour = docker(
        "run", "-d", "--label", label, "--network", "bridge", "--cap-drop", "ALL",
        agent_image, "node", "-e", NODE_LISTEN,
    )  # fmt: skip
    address = await backend.container_address(sealed)
    neighbour_address = await backend.container_address(neighbour)
    assert address is not None
    assert neighbour_address is not None
    inspected = json.loads(docker("inspect", sealed))[0]["NetworkSettings"]["Networks"]
    assert address == inspected[name]["IPAddress"]
    assert await backend.container_address("no-such-container") is None

    guard = FakeGuard({address: client_of()})
    listed = [f"localhost:{echo_server}", f"localhost:{http_server.port}"]
    proxy = EgressProxy(make_settings(tmp_path, listed), guard)
    try:
        url = await proxy.proxy_url(gateway)
        port = url.rsplit(":", 1)[1]
        # Through the proxy, to the listed host: tunnelled both ways.
        out = await in_container(
            sealed, NODE_CONNECT, gateway, port, f"localhost:{echo_server}", "ping"
        )
        assert out.startswith("HTTP/1.1 200"), out
        assert out.endswith("echo:ping"), out
        # An unlisted host (the same server by its address): refused, with the reason.
        out = await in_container(
            sealed, NODE_CONNECT, gateway, port, f"127.0.0.1:{echo_server}", "x"
        )
        assert out.startswith("HTTP/1.1 403"), out
        assert "egress.allowed_hosts" in out, out
        # A client that honours http_proxy and https_proxy (git, through libcurl).
        proxied = {"http_proxy": url, "https_proxy": url}
        repo = f"localhost:{http_server.port}/repo.git"
        code, _, err = await run_in(sealed, "git", "ls-remote", f"http://{repo}", env=proxied)
        assert code == 0, err
        assert ("GET", "/repo.git/info/refs?service=git-upload-pack") in http_server.seen
        unlisted = f"https://127.0.0.1:{http_server.port}/repo.git"
        code, _, err = await run_in(sealed, "git", "ls-remote", unlisted, env=proxied)
        assert code != 0
        assert "403" in err, err
        assert set(guard.asked) == {address}
        # The neighbour on the default bridge listens (the host reaches it) ...
        for _ in range(50):
            reach = await asyncio.to_thread(_tcp_reach, neighbour_address, 8080)
            if reach:
                break
            await asyncio.sleep(0.1)
        assert reach, "the neighbour never listened"
        # ... but not from the sealed network: no route between networks.
        out = await in_container(sealed, NODE_REACH, neighbour_address, "8080")
        assert "CONNECTED" not in out, out
    finally:
        await proxy.close()
    # Stopped: no address.
    docker("stop", "-t", "0", sealed)
    assert await backend.container_address(sealed) is None


def _tcp_reach(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False
