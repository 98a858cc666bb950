"""Request and response shapes of the sign-in routes; they feed the OpenAPI document.

WebAuthn options and credentials travel as the browser's own JSON forms
(``PublicKeyCredential.parseCreationOptionsFromJSON`` / ``credential.toJSON()``), so they
are free-form objects here and checked by py_webauthn, not by pydantic.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

USER_NAME = r"^[A-Za-z0-9._@-]{1,64}$"
PASSKEY_NAME_MAX = 128


def _label(value: str) -> str:
    """A name shown in lists: trimmed, and no control or format characters.

    Format characters include the bidi overrides that would make one passkey's name read
    like another's.
    """
    value = value.strip()
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value):
        raise ValueError("control and format characters are not allowed")
    return value


def _non_empty(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


PasskeyLabel = Annotated[str, Field(max_length=PASSKEY_NAME_MAX), AfterValidator(_label)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AuthUser(BaseModel):
    id: str
    name: str
    display_name: str


class AuthStatus(BaseModel):
    mode: Literal["none", "webauthn"] = Field(description="The configured auth.mode.")
    authenticated: bool = Field(
        description="This request may use the API: auth is off, or its credentials are valid."
    )
    via: Literal["cookie", "token"] | None = Field(
        None, description="Which credential signed this request in, if any."
    )
    user: AuthUser | None = None
    setup_required: bool = Field(
        description="No user exists yet: the first passkey needs the daemon's setup token."
    )
    rp_id: str | None = Field(None, description="The WebAuthn relying party id, when auth is on.")


class RegisterBeginRequest(Strict):
    username: str = Field(
        "owner",
        pattern=USER_NAME,
        description="Name of the first user (ignored when a signed-in user adds a passkey).",
    )
    display_name: str = Field("", max_length=128, description="Shown by the authenticator.")
    setup_token: str | None = Field(
        None, max_length=256, description="The one-time token the daemon printed at start."
    )


class CeremonyOptions(BaseModel):
    options: dict[str, Any] = Field(
        description="PublicKeyCredentialCreationOptionsJSON or ...RequestOptionsJSON: pass to "
        "PublicKeyCredential.parseCreationOptionsFromJSON / parseRequestOptionsFromJSON."
    )


class RegisterCompleteRequest(Strict):
    credential: dict[str, Any] = Field(description="The new credential's toJSON().")
    name: PasskeyLabel = Field("", description="A label for this passkey.")


class PasskeyInfo(BaseModel):
    id: str = Field(description="Credential id, base64url.")
    name: str
    created_at: datetime
    last_used_at: datetime | None = Field(
        None, description="The last sign-in with it; null if none since it was registered."
    )


class PasskeyList(BaseModel):
    passkeys: list[PasskeyInfo] = Field(description="Oldest first. No keys, no sign counts.")


class PasskeyRenameRequest(Strict):
    name: Annotated[PasskeyLabel, AfterValidator(_non_empty)] = Field(
        description="The new label (trimmed; 1-128 characters, no control characters)."
    )


class PasskeyRenamed(BaseModel):
    passkey: PasskeyInfo


class SignedOut(BaseModel):
    signed_out: int = Field(description="Browser sessions ended (this one included).")


class RegisterResponse(BaseModel):
    user: AuthUser
    passkey: PasskeyInfo
    signed_in: bool = Field(
        description="True when this registration also signed the browser in (the first one)."
    )


class LoginBeginRequest(Strict):
    username: str | None = Field(
        None,
        pattern=USER_NAME,
        description="Offer only this user's passkeys; without it any registered passkey "
        "(a discoverable credential) may answer.",
    )


class LoginCompleteRequest(Strict):
    credential: dict[str, Any] = Field(description="The assertion's toJSON().")


class LoginResponse(BaseModel):
    user: AuthUser


class TokenCreateRequest(Strict):
    name: str = Field(min_length=1, max_length=128, description="What the token is for.")


class TokenInfo(BaseModel):
    id: str
    name: str
    hint: str = Field(description="The token's first characters, to tell it apart.")
    created_at: datetime
    last_used_at: datetime | None


class TokenList(BaseModel):
    tokens: list[TokenInfo]


class TokenCreated(BaseModel):
    token: TokenInfo
    secret: str = Field(
        description="Send as 'Authorization: Bearer <secret>'. Shown this once: only its hash "
        "is kept."
    )
