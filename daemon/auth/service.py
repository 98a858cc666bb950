"""The sign-in state and ceremonies: who a request is, passkeys, sessions, tokens.

Decisions (docs/decisions.md, "Security"):

- Challenges live in memory, keyed by the challenge bytes themselves: the browser echoes
  the challenge in ``clientDataJSON``, so the complete call needs no ceremony id, and a
  daemon restart simply voids the ceremonies in flight. Each is single use (taken out
  before it is verified, so a failed attempt spends it too) and expires after five
  minutes. Sign-in and registration challenges are kept in separate bounded pools, so
  unauthenticated begin calls can neither fill memory nor push out a signed-in user's
  pending registration (``Challenges``); the calls themselves are rate limited (limits.py).
- Changing or deleting a passkey and signing out every browser need a browser session,
  like adding one; the last passkey cannot be deleted.
- The setup token exists only while no user does. It lives in memory and in a 0600 file
  in the data dir; the log line says where the file is, the clear token goes to stderr
  only, and the scrubber hides it from every log line. The first registration spends it.
- A passkey is verified with py_webauthn against the configured rp_id and origins. A sign
  count must rise (by any amount: Chromium's virtual authenticator adds 2); authenticators
  that keep no count (always 0) are accepted, as WebAuthn allows.
- Only a browser session may add a passkey or create an API token: a leaked token must not
  be able to mint lasting credentials for itself.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import ipaddress
import json
import os
import secrets
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import structlog
from aiohttp import web
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    base64url_to_bytes,
    bytes_to_base64url,
    options_to_json_dict,
    parse_authentication_credential_json,
    parse_registration_credential_json,
)
from webauthn.helpers.structs import (
    AuthenticationCredential,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    RegistrationCredential,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from daemon.auth import tokens
from daemon.auth.limits import SignInLimits
from daemon.auth.store import ApiToken, AuthStore, Credential, User, utcnow
from daemon.core.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthorized
from daemon.core.store import Store
from daemon.log import register_secret
from daemon.settings import Settings, SettingsError

log = structlog.get_logger(__name__)

COOKIE = "corral_session"
CHALLENGE_SECONDS = 300.0
MAX_PENDING = 1024  # sign-in challenges waiting, from anyone
MAX_REGISTRATIONS_PER_OWNER = 8  # registrations waiting, per signed-in user or setup token
CEREMONY_TIMEOUT_MS = 120_000
TOKEN_TOUCH_SECONDS = 60  # last_used_at is a hint: one write a minute per token at most
_WILDCARD = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - compared, never bound


def derive_rp_id(settings: Settings) -> str:
    """The WebAuthn rp_id: configured, else ``localhost`` for a local bind, else the name.

    WebAuthn needs a domain: a bind to a non-loopback IP address has no usable default.
    """
    if settings.auth.rp_id:
        return settings.auth.rp_id.strip().lower()
    host = settings.server.host.strip().strip("[]").lower()
    if host in _WILDCARD or host == "localhost":
        return "localhost"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.is_loopback:
        return "localhost"
    raise SettingsError(
        f"auth.rp_id must be set: WebAuthn needs a domain name, and the bind address "
        f"{settings.server.host} is an IP address"
    )


@dataclass(frozen=True)
class Principal:
    """Who a request is, and by which credential."""

    user: User
    via: Literal["cookie", "token"]
    secret_hash: str  # of the session cookie or the bearer token


@dataclass
class Pending:
    kind: Literal["register", "login"]
    expires: float
    user_id: str | None = None  # register: the signed-in user adding a passkey
    new_user: User | None = None  # register: the first user, created with the setup token
    setup_token: str | None = None  # register: the setup token it was begun with
    username: str | None = None  # login: the user named at begin, if any

    @property
    def owner(self) -> str:
        """Whose registration this is: only they can push it out of the pool."""
        return f"user:{self.user_id}" if self.user_id is not None else "setup"


class Challenges:
    """Pending ceremony challenges: single use, short-lived, bounded in number.

    Two pools, so a flood of one kind never evicts the other. Sign-in challenges are
    handed to anyone and bounded as a whole (the oldest goes first). A registration is
    begun only by a signed-in user or a holder of the setup token, and each of those owners
    has room for ``per_owner`` of them: their own newest push out their own oldest, and
    nobody else's calls touch them.
    """

    def __init__(
        self,
        ttl: float = CHALLENGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        limit: int = MAX_PENDING,
        per_owner: int = MAX_REGISTRATIONS_PER_OWNER,
    ) -> None:
        self.ttl = ttl
        self.clock = clock  # tests move it to expire a challenge
        self.limit = limit
        self.per_owner = per_owner
        self._login: dict[bytes, Pending] = {}
        self._register: dict[bytes, Pending] = {}

    def _pool(self, kind: str) -> dict[bytes, Pending]:
        return self._register if kind == "register" else self._login

    def issue(self, pending: Pending) -> bytes:
        now = self.clock()
        pool = self._pool(pending.kind)
        for key in [k for k, p in pool.items() if p.expires <= now]:
            del pool[key]
        if pending.kind == "register":
            mine = [k for k, p in pool.items() if p.owner == pending.owner]
            for key in mine[: max(0, len(mine) - self.per_owner + 1)]:
                del pool[key]  # the owner's oldest (dicts keep order)
        else:
            while len(pool) >= self.limit:
                del pool[next(iter(pool))]  # the oldest
        challenge = secrets.token_bytes(32)
        pending.expires = now + self.ttl
        pool[challenge] = pending
        return challenge

    def take(self, challenge: bytes, kind: str) -> Pending:
        pending = self._pool(kind).pop(challenge, None)
        if pending is None:
            raise Unauthorized("unknown or already used challenge: begin the ceremony again")
        if self.clock() >= pending.expires:
            raise Unauthorized("the challenge expired: begin the ceremony again")
        return pending

    def __len__(self) -> int:
        return len(self._login) + len(self._register)


def _challenge_of(client_data_b64: object) -> bytes:
    """The challenge the browser signed, read from clientDataJSON before verification."""
    if not isinstance(client_data_b64, str):
        raise InvalidRequest("credential.response.clientDataJSON is missing")
    try:
        raw = base64.urlsafe_b64decode(client_data_b64 + "=" * (-len(client_data_b64) % 4))
        challenge = json.loads(raw)["challenge"]
        if not isinstance(challenge, str):
            raise TypeError("challenge is not a string")
        return base64.urlsafe_b64decode(challenge + "=" * (-len(challenge) % 4))
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest("credential.response.clientDataJSON is malformed") from exc


def _response_part(credential: dict[str, Any]) -> dict[str, Any]:
    response = credential.get("response")
    if not isinstance(response, dict):
        raise InvalidRequest("credential.response is missing")
    return response


def _transports(values: object) -> list[AuthenticatorTransport]:
    known = {t.value for t in AuthenticatorTransport}
    if not isinstance(values, list):
        return []
    return [AuthenticatorTransport(v) for v in values if isinstance(v, str) and v in known]


class Auth:
    """Sign-in for one daemon: built from the settings, on the daemon's store."""

    def __init__(
        self, settings: Settings, store: Store, *, now: Callable[[], datetime] = utcnow
    ) -> None:
        self.settings = settings
        self.enabled = settings.auth.mode == "webauthn"
        self.rp_id = derive_rp_id(settings) if self.enabled else "localhost"
        self.rp_name = settings.auth.rp_name
        self.db = AuthStore(store)
        # Monotonic seconds for challenges and rate limits: tests move it instead of sleeping.
        self.clock: Callable[[], float] = time.monotonic
        self.challenges = Challenges(clock=lambda: self.clock())
        self.limits = SignInLimits(settings.auth, lambda: self.clock())
        self.now = now  # tests move it to expire a browser session
        self.setup_token_path: Path = settings.data_dir / "setup-token"
        self._setup_token: str | None = None

    # start-up and the setup token

    async def start(self) -> None:
        if not self.enabled:
            return
        await self.db.purge_sessions(self.now())
        if await self.db.user_count() == 0:
            self._new_setup_token()
        else:
            self._drop_setup_token()

    @property
    def setup_token(self) -> str | None:
        return self._setup_token

    def _new_setup_token(self) -> None:
        token = tokens.new_secret(tokens.SETUP)
        register_secret(token)
        path = self.setup_token_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # O_EXCL after the unlink: never write through a file or symlink someone put there.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        self._setup_token = token
        log.warning("auth_setup_required", setup_token_file=str(path), rp_id=self.rp_id)
        # The clear token goes to the operator's terminal only, never into a log line.
        print(
            f"\ncorral: no user yet. Register the first passkey with this setup token:\n"
            f"    {token}\n(also in {path}, mode 0600; it works once)\n",
            file=sys.stderr,
            flush=True,
        )

    def _drop_setup_token(self) -> None:
        self._setup_token = None
        with contextlib.suppress(FileNotFoundError):
            self.setup_token_path.unlink()

    def _setup_token_valid(self, given: str | None) -> bool:
        current = self._setup_token
        if current is None or not given:
            return False
        return hmac.compare_digest(given.encode(), current.encode())

    # who is asking

    async def authenticate(self, request: web.Request) -> Principal | None:
        """The request's principal from its bearer token or session cookie, or None.

        A request with an Authorization header is judged by it alone: a bad token never
        falls back to the cookie.
        """
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, value = header.strip().partition(" ")
            value = value.strip()
            if scheme.lower() != "bearer" or not value:
                return None
            return await self._by_token(value)
        cookie = request.cookies.get(COOKIE)
        if cookie:
            return await self._by_cookie(cookie)
        return None

    async def _by_token(self, secret: str) -> Principal | None:
        secret_hash = tokens.digest(secret)
        token = await self.db.token_by_hash(secret_hash)
        if token is None:
            return None
        user = await self.db.user(token.user_id)
        if user is None:
            return None
        now = self.now()
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > (
            TOKEN_TOUCH_SECONDS
        ):
            await self.db.touch_token(token.id, now)
        return Principal(user, "token", secret_hash)

    async def _by_cookie(self, secret: str) -> Principal | None:
        secret_hash = tokens.digest(secret)
        session = await self.db.session(secret_hash)
        if session is None:
            return None
        if session.expires_at <= self.now():
            await self.db.delete_session(secret_hash)
            return None
        user = await self.db.user(session.user_id)
        return Principal(user, "cookie", secret_hash) if user is not None else None

    async def setup_required(self) -> bool:
        return self.enabled and await self.db.user_count() == 0

    def expected_origins(self, request: web.Request) -> list[str]:
        """Origins a ceremony may come from: configured, else the rp_id on our own port."""
        if self.settings.auth.origins:
            return [o.rstrip("/") for o in self.settings.auth.origins]
        # The port this connection reached (what the browser's origin names, absent a
        # proxy, for which origins are configured); the setting when the socket is unknown.
        port = self.settings.server.port
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            port = int(sockname[1])
        origins = [f"http://{self.rp_id}:{port}", f"https://{self.rp_id}:{port}"]
        if port == 80:
            origins.append(f"http://{self.rp_id}")
        if port == 443:
            origins.append(f"https://{self.rp_id}")
        return origins

    def _require_enabled(self) -> None:
        if not self.enabled:
            raise Conflict("authentication is off (auth.mode = none)")

    # registration

    async def register_begin(
        self,
        principal: Principal | None,
        username: str,
        display_name: str,
        setup_token: str | None,
    ) -> dict[str, Any]:
        self._require_enabled()
        pending = Pending(kind="register", expires=0.0)
        exclude: list[Credential] = []
        if await self.db.user_count() > 0:
            if principal is None or principal.via != "cookie":
                raise Unauthorized("sign in with a passkey to add another passkey")
            user = principal.user
            pending.user_id = user.id
            exclude = await self.db.credentials_of(user.id)
        else:
            if setup_token is None:
                raise Unauthorized("the first passkey needs the setup token the daemon printed")
            if not self._setup_token_valid(setup_token):
                raise Unauthorized("the setup token is wrong or was already used")
            user = User(
                id=str(uuid.uuid4()),
                name=username,
                display_name=display_name or username,
                handle=secrets.token_bytes(32),
                created_at=self.now(),
            )
            pending.new_user = user
            pending.setup_token = setup_token
        challenge = self.challenges.issue(pending)
        options = generate_registration_options(
            rp_id=self.rp_id,
            rp_name=self.rp_name,
            user_name=user.name,
            user_id=user.handle,
            user_display_name=user.display_name,
            challenge=challenge,
            timeout=CEREMONY_TIMEOUT_MS,
            # A discoverable credential lets sign-in start without typing a user name.
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.REQUIRED,
                user_verification=UserVerificationRequirement.PREFERRED,
            ),
            exclude_credentials=[
                PublicKeyCredentialDescriptor(id=c.id, transports=_transports(c.transports))
                for c in exclude
            ],
        )
        return dict(options_to_json_dict(options))

    async def register_complete(
        self,
        request: web.Request,
        principal: Principal | None,
        credential: dict[str, Any],
        name: str,
    ) -> tuple[User, Credential, bool]:
        """Verify and store a new passkey; True when it created the first user."""
        self._require_enabled()
        challenge = _challenge_of(_response_part(credential).get("clientDataJSON"))
        pending = self.challenges.take(challenge, "register")
        parsed = self._parse_registration(credential)
        if pending.user_id is not None:
            signed_in = principal is not None and principal.via == "cookie"
            if not signed_in or principal is None or principal.user.id != pending.user_id:
                raise Unauthorized("sign in with a passkey to add another passkey")
            user = principal.user
        else:
            if pending.new_user is None or not self._setup_token_valid(pending.setup_token):
                raise Unauthorized("the setup token is wrong or was already used")
            user = pending.new_user
        try:
            verified = verify_registration_response(
                credential=parsed,
                expected_challenge=challenge,
                expected_rp_id=self.rp_id,
                expected_origin=self.expected_origins(request),
            )
        except Exception as exc:  # untrusted input into a third-party parser
            log.info("passkey_registration_refused", reason=str(exc))
            raise Unauthorized(f"the passkey could not be verified: {exc}") from exc
        if await self.db.credential(verified.credential_id) is not None:
            raise Conflict("this passkey is already registered")
        created = Credential(
            id=verified.credential_id,
            user_id=user.id,
            public_key=verified.credential_public_key,
            sign_count=verified.sign_count,
            transports=[t.value for t in (parsed.response.transports or [])],
            name=name,
            created_at=self.now(),
            last_used_at=None,
        )
        first = pending.new_user is not None
        if first:
            # Spent before the first await: a second completion racing this one fails above.
            if not self._setup_token_valid(pending.setup_token):
                raise Unauthorized("the setup token is wrong or was already used")
            self._setup_token = None
            try:
                await self.db.add_credential(created, new_user=user)
            except BaseException:
                self._setup_token = pending.setup_token  # nothing was stored: still unused
                raise
            self._drop_setup_token()
        else:
            await self.db.add_credential(created, new_user=None)
        log.info("passkey_registered", user=user.name, first_user=first)
        return user, created, first

    @staticmethod
    def _parse_registration(credential: dict[str, Any]) -> RegistrationCredential:
        try:
            return parse_registration_credential_json(credential)
        except Exception as exc:  # untrusted input into a third-party parser
            raise InvalidRequest(f"malformed credential: {exc}") from exc

    # sign-in

    async def login_begin(self, username: str | None) -> dict[str, Any]:
        self._require_enabled()
        allow: list[Credential] = []
        if username is not None:
            user = await self.db.user_by_name(username)
            # An unknown name gets the same answer as a known one (no user enumeration);
            # its challenge can never complete, as no passkey belongs to that name.
            if user is not None:
                allow = await self.db.credentials_of(user.id)
        challenge = self.challenges.issue(Pending(kind="login", expires=0.0, username=username))
        options = generate_authentication_options(
            rp_id=self.rp_id,
            challenge=challenge,
            timeout=CEREMONY_TIMEOUT_MS,
            allow_credentials=[
                PublicKeyCredentialDescriptor(id=c.id, transports=_transports(c.transports))
                for c in allow
            ],
            user_verification=UserVerificationRequirement.PREFERRED,
        )
        return dict(options_to_json_dict(options))

    async def login_complete(
        self, request: web.Request, credential: dict[str, Any]
    ) -> tuple[User, str]:
        """Verify an assertion; the new browser session's secret for the cookie."""
        self._require_enabled()
        challenge = _challenge_of(_response_part(credential).get("clientDataJSON"))
        pending = self.challenges.take(challenge, "login")
        parsed = self._parse_assertion(credential)
        stored = await self.db.credential(parsed.raw_id)
        if stored is None:
            raise Unauthorized("unknown passkey")
        user = await self.db.user(stored.user_id)
        if user is None or (pending.username is not None and pending.username != user.name):
            raise Unauthorized("unknown passkey")
        handle = parsed.response.user_handle
        if handle is not None and not hmac.compare_digest(handle, user.handle):
            raise Unauthorized("the passkey does not belong to its user")
        try:
            verified = verify_authentication_response(
                credential=parsed,
                expected_challenge=challenge,
                expected_rp_id=self.rp_id,
                expected_origin=self.expected_origins(request),
                credential_public_key=stored.public_key,
                credential_current_sign_count=stored.sign_count,
            )
        except Exception as exc:  # untrusted input into a third-party parser
            log.info("passkey_login_refused", user=user.name, reason=str(exc))
            raise Unauthorized(f"the passkey could not be verified: {exc}") from exc
        if not await self.db.advance_sign_count(
            stored.id, stored.sign_count, verified.new_sign_count
        ):
            raise Unauthorized("the passkey was used concurrently: sign in again")
        secret = await self.new_session(user)
        log.info("signed_in", user=user.name)
        return user, secret

    @staticmethod
    def _parse_assertion(credential: dict[str, Any]) -> AuthenticationCredential:
        try:
            return parse_authentication_credential_json(credential)
        except Exception as exc:  # untrusted input into a third-party parser
            raise InvalidRequest(f"malformed credential: {exc}") from exc

    async def new_session(self, user: User) -> str:
        secret = tokens.new_secret(tokens.SESSION)
        now = self.now()
        expires = now + timedelta(hours=self.settings.auth.session_hours)
        await self.db.add_session(tokens.digest(secret), user.id, now, expires)
        return secret

    def set_cookie(self, request: web.Request, response: web.StreamResponse, secret: str) -> None:
        response.set_cookie(
            COOKIE,
            secret,
            max_age=int(self.settings.auth.session_hours * 3600),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self._over_https(request),
        )

    def clear_cookie(self, request: web.Request, response: web.StreamResponse) -> None:
        response.del_cookie(
            COOKIE, path="/", httponly=True, samesite="Strict", secure=self._over_https(request)
        )

    @staticmethod
    def _over_https(request: web.Request) -> bool:
        # Behind a TLS proxy the connection is plain but the browser's Origin tells.
        return request.secure or request.headers.get("Origin", "").startswith("https://")

    async def logout(self, principal: Principal | None) -> None:
        if principal is not None and principal.via == "cookie":
            await self.db.delete_session(principal.secret_hash)

    async def logout_all(self, principal: Principal) -> int:
        """End every browser session of the user (this one too); API tokens stay."""
        self._require_enabled()
        self._require_browser(principal, "signing out every browser")
        ended = await self.db.delete_sessions_of(principal.user.id)
        log.info("signed_out_everywhere", user=principal.user.name, sessions=ended)
        return ended

    # passkeys

    @staticmethod
    def _require_browser(principal: Principal, what: str) -> None:
        # As for adding a passkey: a leaked API token must not lock the user out.
        if principal.via != "cookie":
            raise Forbidden(f"{what} needs a signed-in browser, not an API token")

    async def _own_passkey(self, principal: Principal, passkey_id: str) -> Credential:
        try:
            raw = base64url_to_bytes(passkey_id)
        except (binascii.Error, ValueError):
            raw = b""
        found = await self.db.credential(raw) if raw else None
        if found is None or found.user_id != principal.user.id:
            raise NotFound(f"passkey '{passkey_id}' not found")
        return found

    async def list_passkeys(self, principal: Principal) -> list[Credential]:
        self._require_enabled()
        return await self.db.credentials_of(principal.user.id)

    async def rename_passkey(self, principal: Principal, passkey_id: str, name: str) -> Credential:
        self._require_enabled()
        self._require_browser(principal, "renaming a passkey")
        found = await self._own_passkey(principal, passkey_id)
        await self.db.rename_credential(found.id, principal.user.id, name)
        log.info("passkey_renamed", user=principal.user.name)
        return replace(found, name=name)

    async def delete_passkey(self, principal: Principal, passkey_id: str) -> None:
        """Delete a passkey and sign out every other browser (the caller stays in)."""
        self._require_enabled()
        self._require_browser(principal, "deleting a passkey")
        found = await self._own_passkey(principal, passkey_id)
        deleted = await self.db.delete_credential(
            found.id, principal.user.id, keep_session=principal.secret_hash
        )
        if not deleted:
            raise Conflict(
                "this is the last passkey: add another before deleting it, or nobody could "
                "sign in again"
            )
        log.info("passkey_deleted", user=principal.user.name)

    # API tokens

    async def create_token(self, principal: Principal, name: str) -> tuple[ApiToken, str]:
        self._require_enabled()
        if principal.via != "cookie":
            raise Forbidden("API tokens are created from a signed-in browser, not with a token")
        secret = tokens.new_secret(tokens.API_TOKEN)
        register_secret(secret)
        token = ApiToken(
            id=str(uuid.uuid4()),
            user_id=principal.user.id,
            name=name,
            hint=tokens.hint(secret),
            created_at=self.now(),
            last_used_at=None,
        )
        await self.db.add_token(token, tokens.digest(secret))
        log.info("api_token_created", token_id=token.id, name=name, user=principal.user.name)
        return token, secret

    async def list_tokens(self, principal: Principal) -> list[ApiToken]:
        self._require_enabled()
        return await self.db.tokens_of(principal.user.id)

    async def revoke_token(self, principal: Principal, token_id: str) -> None:
        self._require_enabled()
        if not await self.db.delete_token(principal.user.id, token_id):
            raise NotFound(f"API token '{token_id}' not found")
        log.info("api_token_revoked", token_id=token_id, user=principal.user.name)


def credential_id_text(credential: Credential) -> str:
    return bytes_to_base64url(credential.id)
