"""corral's egress proxy: an ``allowlist`` session's one way to the hosts it may reach.

A session whose egress is ``none`` or ``allowlist`` runs on an internal Docker network
(``backends.docker.SEALED_NETWORK``): no route off the machine, only the host's own address
on that network, where the daemon listens with the model gateway and this proxy. An
``allowlist`` container gets ``HTTP_PROXY``/``HTTPS_PROXY`` pointing here; the proxy lets
through only ``egress.allowed_hosts`` and answers everything else with a ``403`` whose text
says what was refused and how to allow it (the agent shows it to its user).

Plain asyncio streams rather than aiohttp's server, which does not do ``CONNECT`` tunnels.
Per connection:

* who: the peer's address names the session (``SessionGuard.session_at``); containers have
  no capabilities, so none can forge another's address;
* what: one request head, bounded in size and time: ``CONNECT host:port`` (HTTPS, a tunnel
  of opaque bytes) or an absolute-form ``GET http://host[:port]/path`` (rewritten to origin
  form, ``Connection: close``);
* whether: the session's egress is ``allowlist`` and the host and port match an entry;
* where: the name is resolved here, and addresses of this machine (loopback, link-local,
  the host's own, where the daemon and its API live) are refused unless the entry itself is
  an IP literal or ``localhost`` (so DNS cannot point a listed name back at the daemon); the
  proxy connects to the address it checked, never resolving the name again;
* then bytes both ways, bounded buffers, an idle timeout, both sides closed at either EOF.

Each decision is logged once (session, host, port, allowed), never a byte of the traffic.

Over 400 lines because the request-head parser, the host rules and the tunnel are one
protocol read in one place; split, each would need the others' states to be understood.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

import structlog

from daemon.core.access import GatewayClient, SessionGuard
from daemon.gateway.ports import remember_port, remembered_port
from daemon.settings import Settings

log = structlog.get_logger(__name__)

PORT_KEY = "proxy"  # its key in <data_dir>/ports.json
HEAD_LIMIT = 16 * 1024  # bytes of request head, request line and headers together
HEAD_TIMEOUT = 10.0  # seconds for the whole head to arrive
CONNECT_TIMEOUT = 10.0  # seconds to resolve and connect upstream
IDLE_TIMEOUT = 300.0  # seconds with no byte either way before a tunnel is closed
CHUNK = 64 * 1024  # largest read; each stream buffers at most twice this before pausing
PEER_CONNECTIONS = 256  # open connections per peer address: one session cannot take all
OWN_ADDRESSES_TTL = 10.0  # seconds the host's own addresses are kept before read again
DEFAULT_PORTS = (80, 443)  # an entry that names no port allows these

_METHOD = re.compile(r"[A-Z]{3,16}")
_HOSTNAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")
# Hop-by-hop headers (RFC 9110 7.6.1) and the proxy's own: never sent upstream.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
    }
)


# -- the allowlist ------------------------------------------------------------------------


def _split_host_port(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 literal; the port is
    None when absent. Raises ValueError for a malformed port or bracket."""
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"malformed address {text!r}")
        return inside, _port(rest[1:]) if rest else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port(port)
    return text, None  # a name, or an IPv6 literal without brackets (no port possible)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port {text!r}")
    return int(text)


def _normal_host(host: str) -> str | None:
    """The host as it is compared: lower case, no trailing dot; an IP literal in its
    canonical text. None when it is neither a plausible name nor an IP literal."""
    host = host.strip().lower().rstrip(".")
    try:
        return str(_unmapped(ipaddress.ip_address(host)))
    except ValueError:
        pass
    return host if host and len(host) <= 253 and _HOSTNAME.fullmatch(host) else None


def _unmapped(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_literal(host: str) -> bool:
    """An IP literal or ``localhost``: an entry that means this machine on purpose."""
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class HostRule:
    """One entry of ``egress.allowed_hosts``: ``host``, ``host:port``, ``*.domain[:port]``."""

    host: str  # normalised; for a wildcard the domain after "*."
    wildcard: bool = False  # subdomains of ``host`` only, never ``host`` itself
    port: int | None = None  # None: 80 and 443
    entry: str = ""  # as written, for logs

    @property
    def literal(self) -> bool:
        """Whether the entry names an address of its own (so it may be this machine's)."""
        return not self.wildcard and _is_literal(self.host)

    @classmethod
    def parse(cls, entry: str) -> HostRule | None:
        """The rule an entry means, or None for an entry that means nothing."""
        text = entry.strip()
        wildcard = text.startswith("*.")
        try:
            host_text, port = _split_host_port(text[2:] if wildcard else text)
        except ValueError:
            return None
        host = _normal_host(host_text)
        if host is None or (wildcard and _is_literal(host)):
            return None
        return cls(host=host, wildcard=wildcard, port=port, entry=entry)

    def matches(self, host: str, port: int) -> bool:
        """Whether a request to ``host`` (normalised) on ``port`` is allowed by this rule."""
        if port not in ((self.port,) if self.port is not None else DEFAULT_PORTS):
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


def parse_rules(entries: Iterable[str]) -> list[HostRule]:
    """The rules of ``entries``; an entry that means nothing is logged and left out."""
    rules = []
    for entry in entries:
        rule = HostRule.parse(entry)
        if rule is None:
            log.warning("egress_entry_ignored", entry=entry)
        else:
            rules.append(rule)
    return rules


def matching_rule(rules: Sequence[HostRule], host: str, port: int) -> HostRule | None:
    """The first rule that allows ``host:port``; ``host`` as the client wrote it."""
    normal = _normal_host(host)
    if normal is None:
        return None
    return next((rule for rule in rules if rule.matches(normal, port)), None)


# -- the request head -----------------------------------------------------------------------


class _Reply(Exception):
    """An answer the proxy gives instead of a tunnel, and closes.

    A refusal's reason phrase says why too: for a refused ``CONNECT`` several clients show
    the status line only (pip: "Tunnel connection failed: 403 <reason>"; git and curl: the
    code alone), never the body.
    """

    def __init__(self, status: int, reason: str, text: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.text = text


@dataclass(frozen=True)
class ProxyRequest:
    """What a client asked for: a tunnel (``CONNECT``) or one plain HTTP request."""

    method: str
    host: str  # normalised
    port: int
    upstream_head: bytes  # the head to send upstream; empty for a tunnel

    @property
    def tunnel(self) -> bool:
        return self.method == "CONNECT"


def _bad(text: str) -> _Reply:
    return _Reply(400, "Bad Request", f"corral egress proxy: {text}\n")


def parse_head(head: bytes) -> ProxyRequest:
    """The request a head (request line and headers, ending in an empty line) asks for.

    Raises :class:`_Reply` (400) for anything but ``CONNECT host:port`` or an absolute-form
    ``http://`` request.
    """
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise _bad("the request head is not ASCII") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _METHOD.fullmatch(parts[0]) or parts[2] not in _VERSIONS:
        raise _bad("expected CONNECT host:port or an absolute http:// request")
    method, target, version = parts
    headers = [line for line in lines[1:] if line]
    for line in headers:
        # Folded or nameless lines would be read differently by the next server.
        if line[0] in " \t" or ":" not in line or "\r" in line or "\n" in line:
            raise _bad("malformed header line")
    if method == "CONNECT":
        try:
            host_text, port = _split_host_port(target)
        except ValueError:
            raise _bad("CONNECT needs host:port") from None
        host = _normal_host(host_text)
        if host is None or port is None:
            raise _bad("CONNECT needs host:port")
        return ProxyRequest(method, host, port, b"")
    try:
        url = urlsplit(target)
        port = url.port or 80
    except ValueError:
        raise _bad("malformed URL") from None
    if url.scheme != "http" or not url.hostname or url.username or url.password:
        raise _bad("only http:// URLs are fetched; use CONNECT for https")
    host = _normal_host(url.hostname)
    if host is None:
        raise _bad("malformed host")
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    return ProxyRequest(method, host, port, _upstream_head(method, path, version, headers, url))


_VERSIONS = ("HTTP/1.0", "HTTP/1.1")


def _upstream_head(
    method: str, path: str, version: str, headers: list[str], url: SplitResult
) -> bytes:
    """The request in origin form for the host itself: hop-by-hop headers dropped (and
    those ``Connection`` names), one request only (``Connection: close``)."""
    named = {
        token.strip().lower()
        for line in headers
        if line.split(":", 1)[0].strip().lower() == "connection"
        for token in line.split(":", 1)[1].split(",")
    }
    kept = [
        line
        for line in headers
        if (name := line.split(":", 1)[0].strip().lower()) not in _HOP_BY_HOP and name not in named
    ]
    if not any(line.split(":", 1)[0].strip().lower() == "host" for line in kept):
        kept.insert(0, f"Host: {url.netloc}")
    lines = [f"{method} {path} {version}", *kept, "Connection: close", "", ""]
    return "\r\n".join(lines).encode("ascii")


async def read_head(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request head and whatever came after it, within :data:`HEAD_LIMIT` bytes and
    :data:`HEAD_TIMEOUT` seconds. Raises :class:`_Reply` (431, 408, 400)."""
    buffer = b""
    try:
        async with asyncio.timeout(HEAD_TIMEOUT):
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end >= 0:
                    return buffer[: end + 4], buffer[end + 4 :]
                if len(buffer) > HEAD_LIMIT:
                    break
                chunk = await reader.read(HEAD_LIMIT + 4 - len(buffer))
                if not chunk:
                    raise _bad("the connection ended before the request head did")
                buffer += chunk
    except TimeoutError:
        raise _Reply(408, "Request Timeout", "corral egress proxy: no request head\n") from None
    raise _Reply(
        431,
        "Request Header Fields Too Large",
        f"corral egress proxy: the request head is over {HEAD_LIMIT} bytes\n",
    )


# -- the host's own addresses ---------------------------------------------------------------


def _read_own_addresses() -> frozenset[str]:
    """Every address this machine holds, from the kernel's tables (blocking: a thread).

    IPv4 from ``/proc/net/fib_trie`` (its "/32 host LOCAL" entries), IPv6 from
    ``/proc/net/if_inet6``; where those are missing, only what the host name resolves to.
    """
    found: set[str] = set()
    with contextlib.suppress(OSError):
        last = ""
        for line in Path("/proc/net/fib_trie").read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("|--", "+--")):
                last = stripped.split()[1]
            elif stripped.startswith("/32 host LOCAL") and last:
                found.add(last)
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0] if line.split() else ""
            if len(raw) == 32:
                found.add(str(ipaddress.IPv6Address(int(raw, 16))))
    if not found:
        with contextlib.suppress(OSError):
            for info in socket.getaddrinfo(socket.gethostname(), None):
                found.add(str(info[4][0]))
    return frozenset(found)


def _inward(address: str, own: frozenset[str]) -> bool:
    """Whether ``address`` is this machine (or a place only it should reach)."""
    try:
        parsed = _unmapped(ipaddress.ip_address(address.split("%", 1)[0]))
    except ValueError:
        return True  # not an address at all: nothing to connect to
    return (
        parsed.is_loopback
        or parsed.is_link_local  # cloud metadata services live here (169.254.169.254)
        or parsed.is_unspecified
        or parsed.is_multicast
        or str(parsed) in own
    )


# -- the proxy ------------------------------------------------------------------------------


class EgressProxy:
    """The forward proxy for ``allowlist`` sessions, listening on each address it is asked
    for (a container network's host address), on one port kept across restarts."""

    def __init__(
        self,
        settings: Settings,
        guard: SessionGuard,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.guard = guard
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self._port: int | None = None  # None until start() read the remembered one
        self._servers: dict[str, tuple[asyncio.Server, int]] = {}
        self._lock = asyncio.Lock()
        self._connections: set[asyncio.Task[None]] = set()
        self._per_peer: dict[str, int] = {}
        self._own: tuple[float, frozenset[str]] = (0.0, frozenset())
        self._rules: tuple[tuple[str, ...], list[HostRule]] = ((), [])

    async def start(self) -> None:
        """Read the port to use (configured, else remembered); listening starts per address
        in :meth:`proxy_url`."""
        if self._port is None:
            self._port = await asyncio.to_thread(
                remembered_port, self.settings.data_dir, PORT_KEY, self.settings.gateway.proxy_port
            )

    async def proxy_url(self, address: str) -> str:
        """``http://address:port``, listening there from now on (idempotent)."""
        async with self._lock:
            if address not in self._servers:
                await self.start()
                self._servers[address] = await self._listen(address)
            port = self._servers[address][1]
        host = f"[{address}]" if ":" in address else address
        return f"http://{host}:{port}"

    async def _listen(self, address: str) -> tuple[asyncio.Server, int]:
        wanted = self._port or 0
        configured = self.settings.gateway.proxy_port
        try:
            server = await asyncio.start_server(self._serve, address, wanted, limit=CHUNK)
        except OSError:
            if configured or not wanted:
                raise  # the operator's port is theirs to free; a random one cannot clash
            # The remembered port is taken here by something else: a new one for this
            # address (its containers are told the URL with it).
            log.warning("egress_port_taken", address=address, port=wanted)
            server = await asyncio.start_server(self._serve, address, 0, limit=CHUNK)
        port = int(server.sockets[0].getsockname()[1])
        if not self._port:
            self._port = port
            await asyncio.to_thread(remember_port, self.settings.data_dir, PORT_KEY, port)
        log.info("egress_proxy_listening", address=address, port=port)
        return server, port

    async def close(self) -> None:
        """Stop listening and close every open connection."""
        servers = [server for server, _ in self._servers.values()]
        self._servers.clear()
        for server in servers:
            server.close()
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        for server in servers:
            await server.wait_closed()

    # -- one connection --------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peername = writer.get_extra_info("peername")
        peer = _peer(peername[0] if peername else "")
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        upstream: asyncio.StreamWriter | None = None
        try:
            upstream_pair = await self._open(reader, writer, peer)
            if upstream_pair is not None:
                up_reader, upstream = upstream_pair
                await self._relay(reader, writer, up_reader, upstream)
        except _Reply as reply:
            await _answer(writer, reply)
        except (ConnectionError, OSError):
            pass  # the client went away; nothing to tell it
        finally:
            self._per_peer[peer] -= 1
            if not self._per_peer[peer]:
                del self._per_peer[peer]
            self._connections.discard(task)
            for side in (upstream, writer):
                if side is not None:
                    await _close(side)

    async def _open(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Read the request, decide, connect upstream and answer the client; the upstream
        streams for a tunnel or a forwarded request. Raises :class:`_Reply` to refuse."""
        # The head first, even from a stranger (bounded): an answer sent before the request
        # is read may reach the client as a reset instead of a readable refusal.
        head, rest = await read_head(reader)
        request = parse_head(head)
        try:
            client = await self.guard.session_at(peer)
        except Exception:
            log.exception("egress_guard_failed", peer=peer)
            raise _Reply(
                503, "Service Unavailable", "corral egress proxy: cannot tell the session\n"
            ) from None
        if client is None:
            self._decided(None, peer, request, allowed=False, reason="unknown_peer")
            raise _Reply(
                403,
                "Forbidden",
                f"corral egress proxy: {peer} is not a corral session's container\n",
            )
        if self._per_peer.get(peer, 0) > PEER_CONNECTIONS:
            self._decided(client, peer, request, allowed=False, reason="too_many_connections")
            raise _Reply(
                503,
                "Service Unavailable",
                f"corral egress proxy: over {PEER_CONNECTIONS} connections open\n",
            )
        rule = self._allowed(client, peer, request)
        addresses = await self._addresses(client, peer, request, rule)
        up_reader, up_writer = await self._connect(client, peer, request, addresses)
        self._decided(client, peer, request, allowed=True, reason="allowed")
        if request.tunnel:
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.drain()
        else:
            up_writer.write(request.upstream_head)
        if rest:
            up_writer.write(rest)  # a body, or a TLS hello sent without waiting
        return up_reader, up_writer

    def _allowed(self, client: GatewayClient, peer: str, request: ProxyRequest) -> HostRule:
        target = _target(request)
        if client.egress != "allowlist":
            self._decided(client, peer, request, allowed=False, reason=f"egress_{client.egress}")
            if client.egress == "open":
                why = 'this session\'s egress is "open": it reaches hosts directly, not here'
            else:
                why = (
                    'this session\'s egress is "none" (the model gateway only). To allow it, '
                    f'give the session egress "allowlist" and add "{request.host}" to '
                    'egress.allowed_hosts in corral\'s config, or egress "open"'
                )
            raise _Reply(
                403,
                f"Forbidden by corral: session egress is {client.egress}",
                f"corral refused {target}: {why}.\n",
            )
        rule = matching_rule(self._current_rules(), request.host, request.port)
        if rule is None:
            self._decided(client, peer, request, allowed=False, reason="not_listed")
            entry = request.host if request.port in DEFAULT_PORTS else target
            raise _Reply(
                403,
                f"Forbidden by corral: {target} is not in egress.allowed_hosts",
                f"corral refused {target}: it is not in egress.allowed_hosts (this session's "
                f'egress is "allowlist").\nTo allow it, add "{entry}" to egress.allowed_hosts '
                'in corral\'s config, or give the session egress "open".\n',
            )
        return rule

    def _current_rules(self) -> list[HostRule]:
        # Parsed once per change of the setting, so a bad entry is logged once.
        entries = tuple(self.settings.egress.allowed_hosts)
        if entries != self._rules[0]:
            self._rules = (entries, parse_rules(entries))
        return self._rules[1]

    async def _addresses(
        self, client: GatewayClient, peer: str, request: ProxyRequest, rule: HostRule
    ) -> list[str]:
        """The addresses to try, checked; raises :class:`_Reply` 502, 504 or 403."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                infos = await loop.getaddrinfo(request.host, request.port, type=socket.SOCK_STREAM)
        except TimeoutError:
            self._decided(client, peer, request, allowed=False, reason="resolve_timeout")
            raise _Reply(
                504, "Gateway Timeout", f"corral egress proxy: {request.host} did not resolve\n"
            ) from None
        except OSError:
            self._decided(client, peer, request, allowed=False, reason="resolve_failed")
            raise _Reply(
                502, "Bad Gateway", f"corral egress proxy: {request.host} does not resolve\n"
            ) from None
        found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if rule.literal:
            return found
        own = await self._own_addresses()
        outward = [address for address in found if not _inward(address, own)]
        if not outward:
            self._decided(client, peer, request, allowed=False, reason="resolves_inward")
            raise _Reply(
                403,
                "Forbidden",
                f"corral refused {_target(request)}: it resolves to {found[0]}, an address "
                "of this machine. List that address itself (or localhost) in "
                "egress.allowed_hosts to allow it.\n",
            )
        return outward

    async def _connect(
        self, client: GatewayClient, peer: str, request: ProxyRequest, addresses: list[str]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        last: OSError | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                for address in addresses:
                    try:
                        return await asyncio.open_connection(address, request.port, limit=CHUNK)
                    except OSError as exc:
                        last = exc
        except TimeoutError:
            self._decided(client, peer, request, allowed=False, reason="connect_timeout")
            raise _Reply(
                504,
                "Gateway Timeout",
                f"corral egress proxy: {_target(request)} did not answer within "
                f"{self.connect_timeout:g} s\n",
            ) from None
        self._decided(client, peer, request, allowed=False, reason="connect_failed")
        why = last.strerror if last is not None and last.strerror else "no address"
        raise _Reply(
            502,
            "Bad Gateway",
            f"corral egress proxy: cannot connect to {_target(request)}: {why}\n",
        )

    async def _own_addresses(self) -> frozenset[str]:
        at, own = self._own
        now = time.monotonic()
        if now - at > OWN_ADDRESSES_TTL or not own:
            own = await asyncio.to_thread(_read_own_addresses)
            own = own | frozenset(self._servers)
            self._own = (now, own)
        return own

    async def _relay(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Bytes both ways until either side ends or both are idle for the idle timeout."""
        activity = [asyncio.get_running_loop().time()]
        pipes = [
            asyncio.create_task(self._pipe(client_reader, up_writer, activity)),
            asyncio.create_task(self._pipe(up_reader, client_writer, activity)),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, activity: list[float]
    ) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        data = await source.read(CHUNK)
                except TimeoutError:
                    # A long download leaves its request side quiet: idle means both sides.
                    if loop.time() - activity[0] >= self.idle_timeout:
                        return
                    continue
                if not data:
                    return
                activity[0] = loop.time()
                sink.write(data)
                try:
                    # At most the stream's high-water mark is held for a peer not reading.
                    async with asyncio.timeout(self.idle_timeout):
                        await sink.drain()
                except TimeoutError:
                    return
                activity[0] = loop.time()

    def _decided(
        self,
        client: GatewayClient | None,
        peer: str,
        request: ProxyRequest,
        *,
        allowed: bool,
        reason: str,
    ) -> None:
        log.info(
            "egress_decision",
            session_id=client.session_id if client else None,
            peer=peer,
            method=request.method,
            host=request.host,
            port=request.port,
            allowed=allowed,
            reason=reason,
        )


def _peer(remote: str) -> str:
    try:
        return str(_unmapped(ipaddress.ip_address(remote)))
    except ValueError:
        return remote


def _target(request: ProxyRequest) -> str:
    host = f"[{request.host}]" if ":" in request.host else request.host
    return f"{host}:{request.port}"


async def _answer(writer: asyncio.StreamWriter, reply: _Reply) -> None:
    body = reply.text.encode()
    head = (
        f"HTTP/1.1 {reply.status} {reply.reason}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with contextlib.suppress(ConnectionError, OSError):
        writer.write(head + body)
        async with asyncio.timeout(HEAD_TIMEOUT):
            await writer.drain()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
