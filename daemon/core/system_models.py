"""API shapes of ``GET /api/system``: what the daemon's main job needs, each part checked.

The same model is what ``corral doctor`` prints (``daemon/core/readiness.py`` builds it).
"""

from __future__ import annotations

from pydantic import Field

from daemon.core.models import ApiModel, Progress

# The checks, in the order they are shown; ``ready`` needs every one but the credentials.
CHECK_NAMES = (
    "engine",
    "image",
    "credentials_claude",
    "credentials_codex",
    "data_dir",
    "disk",
    "git",
)
WARNING_CHECKS = frozenset({"credentials_claude", "credentials_codex"})


class Check(ApiModel):
    name: str = Field(description=f"One of {', '.join(CHECK_NAMES)}.")
    ok: bool
    summary: str = Field(description="One line on what was found.")
    fix: str | None = Field(
        description="When not ok: one line a user can act on (a command or a setting)."
    )


class EngineStatus(ApiModel):
    reachable: bool
    version: str | None


class ImageStatus(ApiModel):
    name: str = Field(description="The default agent image (docker.default_image).")
    present: bool
    building: bool = Field(description="The daemon is building it from the image recipe.")
    progress: Progress | None = Field(description="The build's current step, while building.")
    error: str | None = Field(description="Why the last build failed, with its last output.")


class Credential(ApiModel):
    present: bool
    source: str | None = Field(
        description='Where it was found ("stored", "config:agents.anthropic_api_key", '
        '"env:ANTHROPIC_API_KEY", ...; as in GET /api/credentials); never the secret.'
    )
    kind: str | None = Field(None, description="api_key, oauth_token or chatgpt.")
    status: str | None = Field(
        None, description="The last check's: ok, invalid, unreachable, missing or unchecked."
    )


class Credentials(ApiModel):
    claude: Credential
    codex: Credential


class DataDirStatus(ApiModel):
    path: str
    writable: bool
    free_bytes: int | None


class GitStatus(ApiModel):
    version: str | None


class SystemStatus(ApiModel):
    ready: bool = Field(
        description="Every check but the credentials (warnings: the agent may sign in "
        "otherwise) is ok: a session can be created and run."
    )
    checks: list[Check]
    engine: EngineStatus
    image: ImageStatus
    credentials: Credentials
    data_dir: DataDirStatus
    git: GitStatus
