"""Keep the docs honest: the example config, the OpenAPI document and PROTOCOL's routes."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from daemon.http.routes import ROUTES
from daemon.settings import Section, Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"


def _defaults(model: type[BaseModel]) -> dict[str, Any]:
    return model().model_dump(mode="json")


def test_example_config_lists_every_key_with_its_default() -> None:
    example = tomllib.loads(EXAMPLE.read_text())
    defaults = _defaults(Settings)
    # data_dir is shown unexpanded in the example, as a user would write it.
    assert example.pop("data_dir") == "~/.local/share/corral"
    defaults.pop("data_dir")
    assert example == defaults


def test_example_config_comments_every_key() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^[a-z_]+ = ", line):
            assert lines[index - 1].startswith("#"), f"undocumented key: {line}"


def test_every_setting_has_a_description() -> None:
    for name, info in Settings.model_fields.items():
        model = info.annotation
        if isinstance(model, type) and issubclass(model, Section):
            for key, field in model.model_fields.items():
                assert field.description, f"{name}.{key} has no description"


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[server]\nport = 4000\nhost = "127.0.0.1"\n[docker]\nnetwork_mode = "none"\n'
    )
    env = {"CORRAL_SERVER__PORT": "5000", "CORRAL_SERVER__ALLOWED_HOSTS": '["corral.test"]'}
    settings = load_settings(config, environ=env)
    assert settings.server.port == 5000
    assert settings.server.allowed_hosts == ["corral.test"]
    assert settings.docker.network_mode == "none"
    flagged = load_settings(config, environ=env, overrides={"server": {"port": 6000}})
    assert flagged.server.port == 6000


def test_bad_configuration_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(broken, environ={})
    with pytest.raises(SettingsError, match="port"):
        load_settings(None, environ={"CORRAL_SERVER__PORT": "not-a-port",
                                     "CORRAL_CONFIG": str(tmp_path / "none.toml")})  # fmt: skip
    # An unknown key in the file is an error; an unknown CORRAL_* variable only a warning
    # (tests/test_settings.py): it may be set for another tool.
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[server]\nunknown_key = 1\n")
    with pytest.raises(SettingsError, match=r"unknown_key|Extra inputs"):
        load_settings(unknown, environ={})
    with pytest.raises(SettingsError, match="JSON"):
        load_settings(None, environ={"CORRAL_SERVER__ALLOWED_HOSTS": "[oops",
                                     "CORRAL_CONFIG": str(tmp_path / "none.toml")})  # fmt: skip


def test_secrets_are_redacted() -> None:
    settings = Settings.model_validate({"agents": {"anthropic_api_key": "sk-ant-secret-value"}})
    redacted = settings.redacted()
    assert redacted["agents"]["anthropic_api_key"] == "**********"
    assert "sk-ant-secret-value" not in str(redacted)


async def test_api_config_redacts(aiohttp_client: Any, settings: Settings) -> None:
    from daemon.app import create_app

    settings.agents.openai_api_key = "sk-openai-hidden"  # type: ignore[assignment]
    client = await aiohttp_client(create_app(settings))
    body = await (await client.get("/api/config")).json()
    assert body["agents"]["openai_api_key"] == "**********"
    assert "sk-openai-hidden" not in str(body)
    assert body["docker"]["default_image"] == settings.docker.default_image


def _protocol_routes() -> set[tuple[str, str]]:
    text = (ROOT.parent / "shared" / "PROTOCOL.md").read_text()
    section = text.split("### Endpoints", 1)[1].split("###", 1)[0]
    routes = set()
    for match in re.finditer(r"^\| ([A-Z ]+(?:or [A-Z]+)?) \| `([^`]+)`(?:, `([^`]+)`)?", section,
                             re.MULTILINE):  # fmt: skip
        methods = [m for m in match.group(1).split() if m != "or"]
        paths = [match.group(2)]
        if match.group(3):
            paths.append(match.group(2).rsplit("/", 1)[0] + match.group(3))
        for method in methods:
            for path in paths:
                routes.add((method, re.sub(r"\{id\}", "{session_id}", path)))
    return routes


# Routes PROTOCOL lists that a later issue adds (none left).
LATER: set[tuple[str, str]] = set()


def test_every_protocol_route_is_served_and_documented() -> None:
    if not (ROOT.parent / "shared" / "PROTOCOL.md").exists():
        pytest.skip("shared/PROTOCOL.md is not beside this checkout")
    served = {(s.method, s.path) for s in ROUTES.specs}
    missing = _protocol_routes() - LATER - served
    assert not missing, f"PROTOCOL routes not served: {sorted(missing)}"


async def test_openapi_describes_every_route(aiohttp_client: Any, settings: Settings) -> None:
    from daemon.app import create_app

    client = await aiohttp_client(create_app(settings))
    document = await (await client.get("/api/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    for spec in ROUTES.specs:
        operation = document["paths"][spec.path][spec.method.lower()]
        assert operation["summary"] == spec.summary
        assert str(spec.status) in operation["responses"]
    create = document["paths"]["/api/sessions"]["post"]
    schema_ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    name = schema_ref.rsplit("/", 1)[1]
    properties = document["components"]["schemas"][name]["properties"]
    assert {"repo_path", "repositories", "prompt", "base_branch", "image_paths"} <= set(properties)
    session = document["components"]["schemas"]["Session"]["properties"]
    for field in ("id", "status", "health", "progress", "repositories", "agent_state"):
        assert field in session


def test_every_test_the_threat_model_names_exists() -> None:
    """docs/threat-model.md proves each line with a test; a renamed or deleted test must
    not leave a line standing on nothing."""
    text = (ROOT / "docs" / "threat-model.md").read_text()
    named: list[tuple[str, str]] = []
    current = ""  # a bare ``::name`` is in the file named last
    for bracket in re.findall(r"\[([^\]]*::[^\]]*)\]", text):
        for ref in re.findall(r"`([^`]+)`", bracket):
            path, _, name = ref.partition("::")
            current = path or current
            named.append((current, name.split("[")[0]))
    assert len(named) > 40
    missing = []
    for path, name in named:
        source = (ROOT / path).read_text() if path and (ROOT / path).is_file() else ""
        if not re.search(rf"def {re.escape(name)}\(", source):
            missing.append(f"{path}::{name}")
    assert missing == []
