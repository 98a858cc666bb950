"""Passkeys through py_webauthn, at arm's length: the relying party, the ceremony options,
and reading and verifying what a browser sends, which is untrusted input.

A passkey is verified against the configured rp_id and origins. A sign count must rise (by
any amount: Chromium's virtual authenticator adds 2); authenticators that keep no count
(always 0) are accepted, as WebAuthn allows. Every refusal is an ``Unauthorized`` or an
``InvalidRequest`` for the caller, never a third-party exception.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from collections.abc import Sequence
from typing import Any

import structlog
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.authentication.verify_authentication_response import VerifiedAuthentication
from webauthn.helpers import (
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
from webauthn.registration.verify_registration_response import VerifiedRegistration

from daemon.auth.store import Credential, User
from daemon.core.errors import InvalidRequest, Unauthorized
from daemon.settings import Settings, SettingsError

log = structlog.get_logger(__name__)

CEREMONY_TIMEOUT_MS = 120_000
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


def challenge_of(credential: dict[str, Any]) -> bytes:
    """The challenge the browser signed, read from clientDataJSON before verification."""
    client_data_b64 = _response_part(credential).get("clientDataJSON")
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


def _descriptors(credentials: Sequence[Credential]) -> list[PublicKeyCredentialDescriptor]:
    return [
        PublicKeyCredentialDescriptor(id=c.id, transports=_transports(c.transports))
        for c in credentials
    ]


def registration_options(
    rp_id: str, rp_name: str, user: User, challenge: bytes, exclude: Sequence[Credential]
) -> dict[str, Any]:
    """What the browser needs to create a passkey for ``user`` (JSON-ready)."""
    options = generate_registration_options(
        rp_id=rp_id,
        rp_name=rp_name,
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
        exclude_credentials=_descriptors(exclude),
    )
    return dict(options_to_json_dict(options))


def authentication_options(
    rp_id: str, challenge: bytes, allow: Sequence[Credential]
) -> dict[str, Any]:
    """What the browser needs to sign in with one of ``allow`` (any passkey when empty)."""
    options = generate_authentication_options(
        rp_id=rp_id,
        challenge=challenge,
        timeout=CEREMONY_TIMEOUT_MS,
        allow_credentials=_descriptors(allow),
        user_verification=UserVerificationRequirement.PREFERRED,
    )
    return dict(options_to_json_dict(options))


def parse_registration(credential: dict[str, Any]) -> RegistrationCredential:
    try:
        return parse_registration_credential_json(credential)
    except Exception as exc:  # untrusted input into a third-party parser
        raise InvalidRequest(f"malformed credential: {exc}") from exc


def parse_assertion(credential: dict[str, Any]) -> AuthenticationCredential:
    try:
        return parse_authentication_credential_json(credential)
    except Exception as exc:  # untrusted input into a third-party parser
        raise InvalidRequest(f"malformed credential: {exc}") from exc


def verify_registration(
    parsed: RegistrationCredential, challenge: bytes, rp_id: str, origins: list[str]
) -> VerifiedRegistration:
    try:
        return verify_registration_response(
            credential=parsed,
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origin=origins,
        )
    except Exception as exc:  # untrusted input into a third-party parser
        log.info("passkey_registration_refused", reason=str(exc))
        raise Unauthorized(f"the passkey could not be verified: {exc}") from exc


def verify_assertion(
    parsed: AuthenticationCredential,
    challenge: bytes,
    rp_id: str,
    origins: list[str],
    stored: Credential,
    user: User,
) -> VerifiedAuthentication:
    try:
        return verify_authentication_response(
            credential=parsed,
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origin=origins,
            credential_public_key=stored.public_key,
            credential_current_sign_count=stored.sign_count,
        )
    except Exception as exc:  # untrusted input into a third-party parser
        log.info("passkey_login_refused", user=user.name, reason=str(exc))
        raise Unauthorized(f"the passkey could not be verified: {exc}") from exc


def credential_id_text(credential: Credential) -> str:
    return bytes_to_base64url(credential.id)
