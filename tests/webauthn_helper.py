"""A software WebAuthn authenticator: real P-256 keys, real signatures, no browser.

It answers the daemon's ceremony options the way a browser's ``credential.toJSON()`` does
(RegistrationResponseJSON with a "none" attestation, AuthenticationResponseJSON), so the
server's verification runs for real. Knobs make the bad cases: another origin or rp_id, a
tampered signature, a sign count that does not rise.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

FLAG_UP = 0x01  # user present
FLAG_UV = 0x04  # user verified
FLAG_AT = 0x40  # attested credential data included


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Passkey:
    id: bytes
    key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes
    sign_count: int = 0

    def cose_public_key(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        return cbor2.dumps(
            {
                1: 2,  # kty: EC2
                3: -7,  # alg: ES256
                -1: 1,  # crv: P-256
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        )


@dataclass
class SoftAuthenticator:
    """Holds passkeys like a platform authenticator; ``origin`` is the page it runs in."""

    origin: str
    sign_step: int = 2  # like Chromium's virtual authenticator
    passkeys: list[Passkey] = field(default_factory=list)

    def create(
        self, options: dict[str, Any], *, origin: str | None = None, rp_id: str | None = None
    ) -> dict[str, Any]:
        """Answer creation options: a new passkey, as ``credential.toJSON()`` would."""
        rp = rp_id or options["rp"]["id"]
        passkey = Passkey(
            id=secrets.token_bytes(16),
            key=ec.generate_private_key(ec.SECP256R1()),
            rp_id=rp,
            user_handle=unb64url(options["user"]["id"]),
        )
        self.passkeys.append(passkey)
        client_data = self._client_data("webauthn.create", options["challenge"], origin)
        attested = b"\x00" * 16 + struct.pack(">H", len(passkey.id)) + passkey.id
        auth_data = (
            hashlib.sha256(rp.encode()).digest()
            + bytes([FLAG_UP | FLAG_UV | FLAG_AT])
            + struct.pack(">I", passkey.sign_count)
            + attested
            + passkey.cose_public_key()
        )
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return {
            "id": b64url(passkey.id),
            "rawId": b64url(passkey.id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation),
                "transports": ["internal"],
            },
        }

    def get(
        self,
        options: dict[str, Any],
        *,
        passkey: Passkey | None = None,
        origin: str | None = None,
        rp_id: str | None = None,
        tamper: bool = False,
        sign_step: int | None = None,
    ) -> dict[str, Any]:
        """Answer request options with an assertion, as ``credential.toJSON()`` would."""
        passkey = passkey or self.passkeys[-1]
        passkey.sign_count += self.sign_step if sign_step is None else sign_step
        rp = rp_id or options.get("rpId") or passkey.rp_id
        client_data = self._client_data("webauthn.get", options["challenge"], origin)
        auth_data = (
            hashlib.sha256(rp.encode()).digest()
            + bytes([FLAG_UP | FLAG_UV])
            + struct.pack(">I", passkey.sign_count)
        )
        signature = passkey.key.sign(
            auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
        )
        if tamper:
            signature = signature[:-1] + bytes([signature[-1] ^ 0x01])
        return {
            "id": b64url(passkey.id),
            "rawId": b64url(passkey.id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
                "userHandle": b64url(passkey.user_handle),
            },
        }

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        return json.dumps(
            {"type": kind, "challenge": challenge, "origin": origin or self.origin,
             "crossOrigin": False},
            separators=(",", ":"),
        ).encode()  # fmt: skip
