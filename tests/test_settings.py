"""Settings through pydantic-settings: the sources load_settings chooses, and what it does
with a CORRAL_* variable that names no setting (warns, does not stop the daemon)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from daemon import cli
from daemon.settings import (
    Settings,
    SettingsError,
    load_settings,
    unknown_variables,
    warn_unknown_variables,
)

UNKNOWN = {"CORRAL_SOMETHING_ELSE": "other-tool-secret-1", "CORRAL_SERVER__NOPE": "nope-value-1"}


def _env(tmp_path: Path, **variables: str) -> dict[str, str]:
    return {"CORRAL_CONFIG": str(tmp_path / "absent.toml"), **variables}


def test_unknown_corral_variables_are_left_out_with_one_warning(tmp_path: Path) -> None:
    environ = _env(tmp_path, CORRAL_SERVER__PORT="4100", PATH="/usr/bin", **UNKNOWN)
    settings = load_settings(None, environ=environ)
    assert settings.server.port == 4100
    assert unknown_variables(environ) == ["CORRAL_SERVER__NOPE", "CORRAL_SOMETHING_ELSE"]
    with capture_logs() as logs:
        warn_unknown_variables(environ)
    assert [e["event"] for e in logs] == ["unknown_corral_variables"]
    assert logs[0]["log_level"] == "warning"
    assert logs[0]["names"] == ["CORRAL_SERVER__NOPE", "CORRAL_SOMETHING_ELSE"]
    for value in UNKNOWN.values():  # names only: the values may be another tool's secrets
        assert value not in str(logs)


def test_no_unknown_variables_no_warning(tmp_path: Path) -> None:
    # CORRAL_CONFIG names the file, CORRAL_TOKEN is corral attach's and CORRAL_AGENT_RECIPE
    # the image recipe's: all corral's own.
    environ = _env(
        tmp_path,
        CORRAL_SERVER__PORT="4100",
        CORRAL_DATA_DIR=str(tmp_path),
        CORRAL_TOKEN="corral_tok_abc",
        CORRAL_AGENT_RECIPE=str(tmp_path),
        NOT_CORRAL_SERVER__NOPE="1",
    )
    assert unknown_variables(environ) == []
    with capture_logs() as logs:
        warn_unknown_variables(environ)
    assert logs == []


def test_a_known_variable_with_a_bad_value_is_still_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="port"):
        load_settings(None, environ=_env(tmp_path, CORRAL_SERVER__PORT="not-a-port", **UNKNOWN))
    with pytest.raises(SettingsError, match="CORRAL_RECONCILE__BACKOFF_SECONDS is not valid JSON"):
        load_settings(None, environ=_env(tmp_path, CORRAL_RECONCILE__BACKOFF_SECONDS="[1,"))
    with pytest.raises(SettingsError, match="CORRAL_SERVER__ALLOWED_ROOTS is not valid JSON"):
        load_settings(None, environ=_env(tmp_path, CORRAL_SERVER__ALLOWED_ROOTS="/not/json"))
    with pytest.raises(SettingsError, match="allow_host_network"):
        load_settings(None, environ=_env(tmp_path, CORRAL_DOCKER__NETWORK_MODE="host"))


def test_every_kind_of_value_from_the_environment(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        environ=_env(
            tmp_path,
            CORRAL_DATA_DIR="~/corral-data",
            CORRAL_SESSIONS__START_AGENT="false",
            CORRAL_RECONCILE__BACKOFF_SECONDS="[1, 2.5]",
            CORRAL_AGENTS__ANTHROPIC_API_KEY="sk-ant-from-env",
            CORRAL_EVENTS='{"chat_history_limit": 7}',
        ),
    )
    assert settings.data_dir == Path("~/corral-data").expanduser()
    assert settings.sessions.start_agent is False
    assert settings.reconcile.backoff_seconds == [1.0, 2.5]
    assert settings.agents.anthropic_api_key.get_secret_value() == "sk-ant-from-env"
    assert settings.events.chat_history_limit == 7


def test_file_env_and_flags_merge_key_by_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('data_dir = "/srv/corral"\n[server]\nhost = "127.0.0.2"\nport = 4000\n')
    settings = load_settings(
        config,
        environ={"CORRAL_SERVER__MAX_WEBSOCKETS": "9", "CORRAL_CONFIG": "/elsewhere.toml"},
        overrides={"server": {"port": 6000}},
    )
    assert (settings.server.host, settings.server.port) == ("127.0.0.2", 6000)
    assert settings.server.max_websockets == 9
    assert settings.data_dir == Path("/srv/corral")


def test_corral_config_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "chosen.toml"
    config.write_text("[server]\nport = 4444\n")
    assert load_settings(None, environ={"CORRAL_CONFIG": str(config)}).server.port == 4444
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path, environ={})


def test_a_plain_settings_object_reads_no_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_SERVER__PORT", "4321")
    monkeypatch.setenv("CORRAL_CONFIG", str(tmp_path / "absent.toml"))
    assert Settings().server.port == 3030
    assert Settings(data_dir=tmp_path).server.port == 3030
    assert load_settings().server.port == 4321  # load_settings reads os.environ by default


def test_fields_are_still_validated_on_assignment(tmp_path: Path) -> None:
    settings = Settings()
    settings.data_dir = Path("~/elsewhere")
    assert settings.data_dir == Path("~/elsewhere").expanduser()
    with pytest.raises(ValueError, match="valid integer"):
        settings.server.port = "x"  # type: ignore[assignment]
    settings.agents.openai_api_key = SecretStr("sk-openai")
    assert settings.redacted()["agents"]["openai_api_key"] == "**********"


def test_serve_warns_about_unknown_variables_once_logging_is_set_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in _env(tmp_path, **UNKNOWN).items():
        monkeypatch.setenv(name, value)
    order: list[str] = []
    monkeypatch.setattr(cli, "configure_logging", lambda *a, **k: order.append("configured"))
    started: list[Any] = []
    monkeypatch.setattr(cli.web, "run_app", lambda app, **kwargs: started.append(kwargs))
    with capture_logs() as logs:
        assert cli.main(["serve", "--data-dir", str(tmp_path / "data"), "--port", "0"]) == 0
    assert order == ["configured"]
    assert len(started) == 1
    assert started[0]["port"] == 0
    warnings = [e for e in logs if e["event"] == "unknown_corral_variables"]
    assert len(warnings) == 1
    assert warnings[0]["names"] == ["CORRAL_SERVER__NOPE", "CORRAL_SOMETHING_ELSE"]
