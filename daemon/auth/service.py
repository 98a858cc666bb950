"""Who a request is, and the sign-in ceremonies, browser sessions, passkeys and tokens.

Decisions (docs/decisions.md, "Security"):

- Pending challenges live in memory, single use and bounded (``daemon/auth/challenges.py``);
  the begin calls are rate limited (``daemon/auth/limits.py``). Passkeys are verified by
  py_webauthn behind ``daemon/auth/passkeys.py``; the setup token that registers the first
  user is ``daemon/auth/setup_token.py``.
- Changing or deleting a passkey and signing out every browser need a browser session,
  like adding one; the last passkey cannot be deleted.
- Only a browser session may add a passkey or create an API token: a leaked token must not
  be able to mint lasting credentials for itself.

About 400 lines: ``Auth`` is the one object the handlers call for every sign-in concern;
the ceremonies' library calls, the challenge pools and the setup token are beside it.
"""

from __future__ import annotations

import binascii
import hmac
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import structlog
from aiohttp import web
from webauthn.helpers import base64url_to_bytes

from daemon.auth import passkeys, tokens
from daemon.auth.challenges import Challenges, Pending
from daemon.auth.limits import SignInLimits
from daemon.auth.passkeys import credential_id_text, derive_rp_id
from daemon.auth.setup_token import SetupToken
from daemon.auth.store import ApiToken, AuthStore, Credential, User, utcnow
from daemon.core.errors import Conflict, Forbidden, NotFound, Unauthorized
from daemon.core.store import Store
from daemon.log import register_secret
from daemon.settings import Settings

__all__ = ["COOKIE", "Auth", "Principal", "credential_id_text", "derive_rp_id"]

log = structlog.get_logger(__name__)

COOKIE = "corral_session"
TOKEN_TOUCH_SECONDS = 60  # last_used_at is a hint: one write a minute per token at most


@dataclass(frozen=True)
class Principal:
    """Who a request is, and by which credential."""

    user: User
    via: Literal["cookie", "token"]
    secret_hash: str  # of the session cookie or the bearer token


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
        self._setup = SetupToken(settings.data_dir / "setup-token")

    # start-up and the setup token

    async def start(self) -> None:
        if not self.enabled:
            return
        await self.db.purge_sessions(self.now())
        if await self.db.user_count() == 0:
            self._setup.create(self.rp_id)
        else:
            self._setup.drop()

    @property
    def setup_token(self) -> str | None:
        return self._setup.value

    @property
    def setup_token_path(self) -> Path:
        return self._setup.path

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
            if not self._setup.valid(setup_token):
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
        return passkeys.registration_options(self.rp_id, self.rp_name, user, challenge, exclude)

    async def register_complete(
        self,
        request: web.Request,
        principal: Principal | None,
        credential: dict[str, Any],
        name: str,
    ) -> tuple[User, Credential, bool]:
        """Verify and store a new passkey; True when it created the first user."""
        self._require_enabled()
        challenge = passkeys.challenge_of(credential)
        pending = self.challenges.take(challenge, "register")
        parsed = passkeys.parse_registration(credential)
        if pending.user_id is not None:
            signed_in = principal is not None and principal.via == "cookie"
            if not signed_in or principal is None or principal.user.id != pending.user_id:
                raise Unauthorized("sign in with a passkey to add another passkey")
            user = principal.user
        else:
            if pending.new_user is None or not self._setup.valid(pending.setup_token):
                raise Unauthorized("the setup token is wrong or was already used")
            user = pending.new_user
        verified = passkeys.verify_registration(
            parsed, challenge, self.rp_id, self.expected_origins(request)
        )
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
            if not self._setup.valid(pending.setup_token):
                raise Unauthorized("the setup token is wrong or was already used")
            self._setup.value = None
            try:
                await self.db.add_credential(created, new_user=user)
            except BaseException:
                self._setup.value = pending.setup_token  # nothing was stored: still unused
                raise
            self._setup.drop()
        else:
            await self.db.add_credential(created, new_user=None)
        log.info("passkey_registered", user=user.name, first_user=first)
        return user, created, first

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
        return passkeys.authentication_options(self.rp_id, challenge, allow)

    async def login_complete(
        self, request: web.Request, credential: dict[str, Any]
    ) -> tuple[User, str]:
        """Verify an assertion; the new browser session's secret for the cookie."""
        self._require_enabled()
        challenge = passkeys.challenge_of(credential)
        pending = self.challenges.take(challenge, "login")
        parsed = passkeys.parse_assertion(credential)
        stored = await self.db.credential(parsed.raw_id)
        if stored is None:
            raise Unauthorized("unknown passkey")
        user = await self.db.user(stored.user_id)
        if user is None or (pending.username is not None and pending.username != user.name):
            raise Unauthorized("unknown passkey")
        handle = parsed.response.user_handle
        if handle is not None and not hmac.compare_digest(handle, user.handle):
            raise Unauthorized("the passkey does not belong to its user")
        verified = passkeys.verify_assertion(
            parsed, challenge, self.rp_id, self.expected_origins(request), stored, user
        )
        if not await self.db.advance_sign_count(
            stored.id, stored.sign_count, verified.new_sign_count
        ):
            raise Unauthorized("the passkey was used concurrently: sign in again")
        secret = await self.new_session(user)
        log.info("signed_in", user=user.name)
        return user, secret

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
