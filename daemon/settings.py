"""The one settings model: embedded defaults, then config.toml, then CORRAL_* env, then flags.

pydantic-settings reads the sources; ``load_settings`` chooses them (the TOML file, an
environment mapping, the flags) and turns every failure into a ``SettingsError``.

Every key here must appear, with its default, in ``config.example.toml``; a test keeps
the two in step. Environment variables are named ``CORRAL_<SECTION>__<KEY>`` (for
example ``CORRAL_SERVER__PORT=4000``); list values are given as JSON. A ``CORRAL_*``
variable that names no setting is warned about and left alone: it may be another tool's.

Over 400 lines on purpose: most of it is the fields with their descriptions, which are the
documentation of every key (and of ``GET /api/config``); the loading itself is short.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_origin

import pydantic_settings
import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.sources.utils import parse_env_vars

log = structlog.get_logger(__name__)

ENV_PREFIX = "CORRAL_"
ENV_DELIMITER = "__"
# Names the config file itself, so it is read before the settings and is not one of them.
CONFIG_VARIABLE = "CORRAL_CONFIG"
# corral's own variables that are no setting: not warned about (CORRAL_TOKEN is the API
# token ``corral attach`` sends, often exported in the same shell as ``corral serve``).
# corral's own variables that are not settings: corral attach's token, and the agent image
# recipe's (images/agent/build-default.sh; CORRAL_AGENT_RECIPE is daemon/resources.py's).
OTHER_VARIABLES = frozenset(
    {
        CONFIG_VARIABLE,
        "CORRAL_TOKEN",
        "CORRAL_AGENT_RECIPE",
        "CORRAL_AGENT_BASE",
        "CORRAL_AGENT_HASH_REPO",
    }
)
DEFAULT_CONFIG_PATH = Path("~/.config/corral/config.toml")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerSettings(Section):
    host: str = Field("127.0.0.1", description="Address to bind; loopback unless auth is on.")
    port: int = Field(3030, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Extra Host header names accepted besides localhost and loopback addresses.",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Extra Origins accepted besides the daemon's own (its names on its port); "
        "no CORS headers are sent to any.",
    )
    allow_remote_without_auth: bool = Field(
        False, description="Dangerous: allow a non-loopback bind with auth off."
    )
    max_json_bytes: int = Field(1024 * 1024, ge=1024, description="Largest JSON request body.")
    allowed_roots: list[str] = Field(
        default_factory=list,
        description="Folders clients may browse and take repositories and images from; "
        "empty: anywhere the daemon's user can read.",
    )
    shutdown_timeout: float = Field(10.0, gt=0, description="Seconds to finish work on stop.")
    header_timeout: float = Field(
        15.0,
        gt=0,
        description="Seconds a connection may take to send a request's headers, or stay idle "
        "between requests, before it is closed.",
    )
    max_websockets_per_client: int = Field(
        32, ge=1, description="Open WebSockets (events and consoles) one client address may hold."
    )
    max_websockets: int = Field(256, ge=1, description="Open WebSockets all clients may hold.")
    body_timeout: float = Field(
        60.0, gt=0, description="Seconds a client may take to send a JSON request body."
    )


class DockerSettings(Section):
    url: str = Field("", description="Engine URL; empty uses DOCKER_HOST or the local socket.")
    default_image: str = Field("corral-agent:latest", description="Image for new sessions.")
    network_mode: str = Field(
        "bridge",
        description='Network of session containers; "host" needs allow_host_network, '
        '"container:<id>" is refused.',
    )
    allow_host_network: bool = Field(
        False,
        description='Dangerous: allow network_mode = "host", where a session reaches '
        "corral's own API on loopback.",
    )
    cpu_limit: float = Field(
        2.0, ge=0, description="Cores per container (capped to the engine's); 0: no limit."
    )
    memory_limit_mb: int = Field(4096, ge=0, description="MiB per container; 0 means no limit.")
    pids_limit: int = Field(
        1024, ge=0, description="Processes and threads per container; 0 means no limit."
    )
    stop_timeout: float = Field(10.0, ge=0, description="Seconds between SIGTERM and SIGKILL.")
    api_timeout: float = Field(30.0, gt=0, description="Seconds before an engine call fails.")

    @model_validator(mode="after")
    def _isolating_network(self) -> DockerSettings:
        # Refused here, so a daemon with such a config does not start at all (the backend
        # refuses the same spec again at container creation).
        if self.network_mode == "host" and not self.allow_host_network:
            raise ValueError(
                'docker.network_mode = "host" puts every session on the host\'s loopback, '
                "where corral's API answers; set docker.allow_host_network = true to allow it"
            )
        if self.network_mode.startswith("container:"):
            raise ValueError(
                f"docker.network_mode = {self.network_mode!r} shares another container's "
                "network namespace; name a network instead"
            )
        return self


class SessionSettings(Section):
    default_backend: Literal["docker", "local"] = Field("docker", description="Backend default.")
    default_agent: Literal["claude", "codex"] = Field("claude", description="Agent default.")
    default_model: str = Field("", description="Model passed to the agent; empty: its own.")
    git_timeout: float = Field(60.0, gt=0, description="Seconds before a git command fails.")
    run_as_host_user: bool = Field(
        True, description="Run containers as the daemon's uid:gid so worktree files stay yours."
    )
    start_agent: bool = Field(
        True, description="Start the agent CLI in the session; false runs the image's command."
    )


class UploadSettings(Section):
    max_bytes: int = Field(50 * 1024 * 1024, ge=1, description="Largest upload, all files.")
    max_files: int = Field(100, ge=1, description="Most files in one upload.")


class AgentSettings(Section):
    anthropic_api_key: SecretStr = Field(
        SecretStr(""), description="Passed to Claude Code; empty: ANTHROPIC_API_KEY if set."
    )
    anthropic_base_url: str = Field("", description="Anthropic-compatible endpoint override.")
    openai_api_key: SecretStr = Field(
        SecretStr(""), description="Passed to Codex; empty: OPENAI_API_KEY if set."
    )
    openai_base_url: str = Field("", description="OpenAI-compatible endpoint for Codex.")
    chatgpt_base_url: str = Field(
        "",
        description="ChatGPT backend for Codex signed in with ChatGPT; empty: "
        "https://chatgpt.com/backend-api.",
    )


class GatewaySettings(Section):
    port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the model gateway on each container network's host address; 0: "
        "one chosen at first start and remembered in the data dir, so running containers "
        "keep reaching it across restarts.",
    )
    proxy_port: int = Field(
        0, ge=0, le=65535, description="Port of the egress proxy, chosen and kept the same way."
    )


DEFAULT_ALLOWED_HOSTS = [
    "registry.npmjs.org",
    "pypi.org",
    "files.pythonhosted.org",
    "github.com",
    "codeload.github.com",
    "objects.githubusercontent.com",
    "proxy.golang.org",
    "sum.golang.org",
    "crates.io",
    "static.crates.io",
    "index.crates.io",
    "rubygems.org",
    "repo.maven.apache.org",
    "deb.debian.org",
]


class EgressSettings(Section):
    default_policy: Literal["none", "allowlist", "open"] = Field(
        "allowlist",
        description="A new session's egress: none (the model gateway only), allowlist (also "
        "allowed_hosts through corral's proxy) or open.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ALLOWED_HOSTS),
        description="Hosts an allowlist session may reach (exact names, or *.example.com).",
    )


class ModelPrice(Section):
    """What a model costs, in US dollars per million tokens."""

    input: float = Field(0.0, ge=0, description="Per million input tokens (not cached).")
    output: float = Field(0.0, ge=0, description="Per million output tokens.")
    cache_read: float = Field(0.0, ge=0, description="Per million tokens read from the cache.")
    cache_write: float = Field(0.0, ge=0, description="Per million tokens written to the cache.")


# List prices as published when this was written: check them against the providers' price
# pages (and override them in config) before trusting a cost shown.
DEFAULT_PRICES = {
    "claude-opus-4": ModelPrice(input=15.0, output=75.0, cache_read=1.5, cache_write=18.75),
    "claude-sonnet-4": ModelPrice(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75),
    "claude-haiku-4": ModelPrice(input=1.0, output=5.0, cache_read=0.1, cache_write=1.25),
    "gpt-5": ModelPrice(input=1.25, output=10.0, cache_read=0.125, cache_write=0.0),
}


class UsageSettings(Section):
    daily_max_cost_usd: float = Field(
        0.0,
        ge=0,
        description="Estimated US dollars all sessions may spend per UTC day; 0: no limit.",
    )
    daily_max_tokens: int = Field(
        0, ge=0, description="Tokens all sessions may use per UTC day; 0: no limit."
    )
    prices: dict[str, ModelPrice] = Field(
        default_factory=lambda: {k: v.model_copy() for k, v in DEFAULT_PRICES.items()},
        description="Model name prefix -> price per million tokens; the longest matching prefix "
        "wins; a model that matches none costs 0 and is shown as not priced.",
    )


class CredentialSettings(Section):
    claude_oauth_token: SecretStr = Field(
        SecretStr(""),
        description="A Claude subscription's long-lived token (claude setup-token prints it); "
        "used when no key is stored and agents.anthropic_api_key is empty.",
    )
    claude_command: str = Field(
        "",
        description="A command printing Claude's key or OAuth token (a password manager); "
        "split like a shell line, run without one, 10 s at most.",
    )
    codex_command: str = Field(
        "", description="A command printing Codex's API key or a ChatGPT auth.json."
    )
    command_cache_seconds: float = Field(
        300.0, ge=0, description="How long a command's answer is used before it runs again."
    )
    codex_auth_file: str = Field(
        "~/.codex/auth.json",
        description="Codex's sign-in file: its ChatGPT tokens (refreshed and written back) "
        "or its OPENAI_API_KEY; empty: not read.",
    )
    openai_token_url: str = Field(
        "https://auth.openai.com/oauth/token",
        description="Where a ChatGPT sign-in's access token is refreshed.",
    )
    check_timeout_seconds: float = Field(
        10.0, gt=0, description="Seconds a credential check may take before it is unreachable."
    )


class MetadataSettings(Section):
    ai_metadata: bool = Field(
        False, description="Offer regenerate-metadata: name, description and tags by a model."
    )
    model: str = Field("claude-haiku-4-5", description="Model that writes the metadata.")
    base_url: str = Field(
        "", description="Anthropic-compatible endpoint; empty: agents.anthropic_base_url."
    )
    api_key: SecretStr = Field(
        SecretStr(""),
        description="Key for that endpoint; empty: agents.anthropic_api_key, then "
        "ANTHROPIC_API_KEY.",
    )
    timeout_seconds: float = Field(30.0, gt=0, description="Seconds before the model call fails.")


class GitHubSettings(Section):
    api_url: str = Field(
        "https://api.github.com",
        description="GitHub's REST API; a GitHub Enterprise one is https://<host>/api/v3.",
    )
    token: SecretStr = Field(
        SecretStr(""),
        description="Token for pull requests; empty: GITHUB_TOKEN, then `gh auth token`.",
    )
    refresh_seconds: float = Field(
        60.0, gt=0, description="Seconds between refreshes of open pull requests and checks."
    )


class ConsoleSettings(Section):
    buffer_bytes: int = Field(
        1024 * 1024, ge=4096, description="Recent terminal output kept per session for redraws."
    )
    heartbeat_seconds: float = Field(30.0, gt=0, description="Ping idle sockets this often.")
    viewer_peak_bytes: int = Field(
        4 * 1024 * 1024, ge=65536, description="Output a viewer may fall behind by for a while."
    )
    viewer_peak_seconds: float = Field(
        5.0, gt=0, description="How long a viewer may stay past its peak before it is closed."
    )
    viewer_max_bytes: int = Field(
        32 * 1024 * 1024, ge=65536, description="Output a viewer may ever fall behind by."
    )


class EventsSettings(Section):
    client_peak_bytes: int = Field(
        1024 * 1024, ge=65536, description="Events a client may fall behind by for a while."
    )
    client_peak_seconds: float = Field(
        3.0, gt=0, description="How long a client may stay past its peak before it is closed."
    )
    client_max_bytes: int = Field(
        16 * 1024 * 1024, ge=65536, description="Events a client may ever fall behind by."
    )
    client_max_messages: int = Field(
        5000, ge=100, description="Events a client may ever have waiting for it."
    )
    chat_history_limit: int = Field(
        500, ge=0, description="Most recent chat events returned with a session."
    )


class ChangesSettings(Section):
    max_files_per_page: int = Field(
        500, ge=1, le=5000, description="Files in one page of a session's diff, by default."
    )
    max_patch_bytes: int = Field(
        1024 * 1024, ge=1024, description="A file whose patch is larger is summarised, not sent."
    )
    max_total_patch_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="The whole diff as a patch, at most (else 413)."
    )
    big_file_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Files larger are never read whole for a diff: counted as binary.",
    )


class ReconcileSettings(Section):
    interval_seconds: float = Field(
        30.0, gt=0, description="Seconds between periodic passes over every session."
    )
    jitter: float = Field(
        0.1, ge=0, le=0.9, description="Fraction of the interval added or taken at random."
    )
    auto_recover: bool = Field(
        True, description="Recreate a session whose container crashed or vanished."
    )
    backoff_seconds: list[float] = Field(
        default_factory=lambda: [30.0, 120.0, 300.0],
        min_length=1,
        description="Wait before each automatic recreate; the last value repeats.",
    )
    max_attempts: int = Field(
        3, ge=0, description="Automatic recreates before the session is left to the user."
    )
    healthy_reset_seconds: float = Field(
        300.0, ge=0, description="Healthy this long after a recreate: attempts count from 0."
    )
    stall_seconds: float = Field(
        600.0, ge=0, description="A working agent silent this long is reported; 0: never."
    )
    remove_orphans: bool = Field(
        True, description="Remove orphan containers and worktrees holding no work."
    )
    reconnect_min_seconds: float = Field(
        0.5, gt=0, description="First wait before reconnecting to an engine that went away."
    )
    reconnect_max_seconds: float = Field(
        10.0, gt=0, description="Longest wait between reconnection attempts."
    )

    @field_validator("backoff_seconds")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(v < 0 for v in value):
            raise ValueError("back-off values must be >= 0")
        return value


class AuthSettings(Section):
    mode: Literal["none", "webauthn"] = Field(
        "none", description="none (loopback only) or webauthn: passkeys and API tokens."
    )
    rp_id: str = Field(
        "", description="WebAuthn relying party id, a domain; empty: localhost, or the bound name."
    )
    rp_name: str = Field("corral", description="Name the browser shows for the passkey.")
    origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed in ceremonies; empty: http(s)://<rp_id>:<port>.",
    )
    session_hours: float = Field(
        168.0, gt=0, description="Hours a browser sign-in lasts before it must sign in again."
    )
    ceremony_rate_per_minute: int = Field(
        20,
        ge=1,
        description="Sign-in ceremony calls (login and register, begin and complete) one "
        "client address may make a minute; over it: 429 with Retry-After.",
    )
    ceremony_global_rate_per_minute: int = Field(
        60, ge=1, description="Sign-in ceremony calls all clients together may make a minute."
    )
    setup_token_rate_per_minute: int = Field(
        5,
        ge=1,
        description="Attempts with a setup token a minute, per client and in all together.",
    )


class LoggingSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    format: Literal["console", "json"] = Field("console", description="One event a line.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        extra="forbid",
        validate_assignment=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
    )

    data_dir: Path = Field(
        Path("~/.local/share/corral"), description="SQLite store, worktrees and agent homes."
    )
    server: ServerSettings = Field(default_factory=ServerSettings)
    docker: DockerSettings = Field(default_factory=DockerSettings)
    sessions: SessionSettings = Field(default_factory=SessionSettings)
    uploads: UploadSettings = Field(default_factory=UploadSettings)
    agents: AgentSettings = Field(default_factory=AgentSettings)
    credentials: CredentialSettings = Field(default_factory=CredentialSettings)
    metadata: MetadataSettings = Field(default_factory=MetadataSettings)
    github: GitHubSettings = Field(default_factory=GitHubSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    egress: EgressSettings = Field(default_factory=EgressSettings)
    usage: UsageSettings = Field(default_factory=UsageSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    events: EventsSettings = Field(default_factory=EventsSettings)
    changes: ChangesSettings = Field(default_factory=ChangesSettings)
    reconcile: ReconcileSettings = Field(default_factory=ReconcileSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def db_path(self) -> Path:
        return self.data_dir / "corral.db"

    def redacted(self) -> dict[str, Any]:
        """The effective configuration for ``/api/config``: secrets never leave."""
        data = self.model_dump(mode="json")
        for section, fields in type(self).secret_fields().items():
            for name in fields:
                if getattr(getattr(self, section), name).get_secret_value():
                    data[section][name] = "**********"
        return data

    @classmethod
    def secret_fields(cls) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for section, info in cls.model_fields.items():
            model = info.annotation
            if isinstance(model, type) and issubclass(model, Section):
                names = [n for n, f in model.model_fields.items() if f.annotation is SecretStr]
                if names:
                    found[section] = names
        return found

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # ``Settings(...)`` is built from its arguments alone, as a plain model would be
        # (tests build many); the file and the environment come in through load_settings.
        return (init_settings,)


class SettingsError(ValueError):
    """The configuration could not be read or is invalid."""


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class _EnvironSource(EnvSettingsSource):
    """The ``CORRAL_*`` environment source, reading a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


def _wants_json(annotation: Any) -> bool:
    return get_origin(annotation) in (list, dict) or (
        isinstance(annotation, type) and issubclass(annotation, BaseModel)
    )


def _setting_paths() -> dict[tuple[str, ...], bool]:
    """Every path an environment variable may name (a section whole, or one key), each with
    whether its value is given as JSON."""
    paths: dict[tuple[str, ...], bool] = {}
    for name, info in Settings.model_fields.items():
        paths[(name,)] = _wants_json(info.annotation)
        model = info.annotation
        if isinstance(model, type) and issubclass(model, Section):
            for key, field in model.model_fields.items():
                paths[(name, key)] = _wants_json(field.annotation)
    return paths


def _path(name: str) -> tuple[str, ...]:
    return tuple(name[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER))


def _split_environment(environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The ``CORRAL_*`` variables naming a setting, and the sorted names of those naming none."""
    paths = _setting_paths()
    known: dict[str, str] = {}
    unknown: list[str] = []
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in OTHER_VARIABLES:
            continue
        if _path(name) in paths:
            known[name] = raw
        else:
            unknown.append(name)
    return known, sorted(unknown)


def _check_json(variables: Mapping[str, str]) -> None:
    # pydantic-settings would name only the section; this names the variable. A value that
    # looks like JSON must be JSON, whatever the setting, as before pydantic-settings.
    paths = _setting_paths()
    for name, raw in variables.items():
        if paths[_path(name)] or raw.startswith(("[", "{")):
            try:
                json.loads(raw)
            except json.JSONDecodeError as exc:
                raise SettingsError(f"{name} is not valid JSON: {exc}") from exc


def _toml_source(path: Path, *, explicit: bool) -> TomlConfigSettingsSource | None:
    if not path.exists():
        if explicit:
            raise SettingsError(f"config file {path} does not exist")
        return None
    if not path.is_file():  # pydantic-settings would pass over it without a word
        raise SettingsError(f"cannot read {path}: not a file")
    try:
        return TomlConfigSettingsSource(Settings, toml_file=path)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"cannot read {path}: {exc}") from exc


def load_settings(
    config_path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings: TOML file, then environment, then ``overrides`` (the CLI flags).

    An explicit ``config_path`` that does not exist is an error; the default one is optional.
    ``CORRAL_*`` variables that name no setting are left out (``warn_unknown_variables``).
    """
    environ = os.environ if environ is None else environ
    path = config_path or Path(environ.get(CONFIG_VARIABLE, DEFAULT_CONFIG_PATH)).expanduser()
    toml = _toml_source(path, explicit=config_path is not None)
    known, _ = _split_environment(environ)
    _check_json(known)
    flags = dict(overrides or {})
    # Highest precedence first: flags, then the environment, then the file.
    sources: list[PydanticBaseSettingsSource] = [
        InitSettingsSource(Settings, init_kwargs=flags),
        _EnvironSource(Settings, known),
    ]
    if toml is not None:
        sources.append(toml)
    try:
        # _build_sources (pydantic-settings' documented argument) takes these in place of
        # settings_customise_sources, which gives a plain ``Settings(...)`` its arguments only.
        return Settings(_build_sources=(tuple(sources), flags))
    except pydantic_settings.SettingsError as exc:
        raise SettingsError(f"{exc}: {exc.__cause__}") from exc
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """The ``CORRAL_*`` variables in ``environ`` that name no setting, sorted."""
    return _split_environment(os.environ if environ is None else environ)[1]


def warn_unknown_variables(environ: Mapping[str, str] | None = None) -> None:
    """Warn once, naming them, about ``CORRAL_*`` variables that load_settings left out.

    Called by the CLI once logging is set up, so the warning has the configured format.
    """
    names = unknown_variables(environ)
    if names:
        # Names only: a value set for some other tool may be a secret.
        log.warning(
            "unknown_corral_variables",
            names=names,
            hint="these name no setting and are ignored; a setting is CORRAL_<SECTION>__<KEY>, "
            "as in config.example.toml",
        )
