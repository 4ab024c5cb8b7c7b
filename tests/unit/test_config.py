"""Settings: sources, precedence, safety checks and documentation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from salus.config import DEV_SECRET_KEY, Settings, load_settings
from salus.errors import ConfigurationError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
STRONG = "x" * 40


def test_defaults() -> None:
    settings = load_settings(environ={})
    assert settings.mode == "development"
    assert settings.data_dir == Path("salus-data")
    assert settings.database_url_value().startswith("sqlite:///")
    assert settings.database_url_value().endswith("salus-data/salus.db")
    assert settings.blob_path() == Path("salus-data/blobs")
    assert settings.key_path() == Path("salus-data/keys/master-keys.json")
    assert settings.encryption_enabled


def test_environment_is_parsed_and_typed() -> None:
    settings = load_settings(
        environ={
            "SALUS_HTTP_PORT": "9001",
            "SALUS_ENCRYPTION_ENABLED": "false",
            "SALUS_LOG_FORMAT": "json",
            "SALUS_DATA_DIR": "/srv/salus",
        }
    )
    assert settings.http_port == 9001
    assert settings.encryption_enabled is False
    assert settings.log_format == "json"
    assert settings.blob_path() == Path("/srv/salus/blobs")


def test_precedence_overrides_then_env_then_file(tmp_path: Path) -> None:
    config = tmp_path / "salus.toml"
    config.write_text('http_port = 7000\nhttp_host = "0.0.0.0"\nlog_level = "DEBUG"\n')
    settings = load_settings(
        config,
        overrides={"http_port": 7002},
        environ={"SALUS_HTTP_PORT": "7001", "SALUS_HTTP_HOST": "127.0.0.2"},
    )
    assert settings.http_port == 7002
    assert settings.http_host == "127.0.0.2"
    assert settings.log_level == "DEBUG"


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "salus.toml"
    config.write_text("http_port = 7100\n")
    assert load_settings(environ={"SALUS_CONFIG": str(config)}).http_port == 7100


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"SALUS_HTTP_PROT": "1"}, "SALUS_HTTP_PROT"),
        ({"SALUS_HTTP_PORT": "not-a-port"}, "SALUS_HTTP_PORT"),
        ({"SALUS_MODE": "staging"}, "SALUS_MODE"),
    ],
)
def test_bad_settings_are_named(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        load_settings(environ=environ)


def test_bad_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("http_port = \n")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_settings(bad, environ={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigurationError, match="colour"):
        load_settings(unknown, environ={})
    with pytest.raises(ConfigurationError, match="not found"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_secret_values_never_appear_in_errors_or_repr() -> None:
    secret = "postgresql://salus:hunter2-very-secret@db/salus"
    settings = load_settings(environ={"SALUS_DATABASE_URL": secret})
    assert "hunter2" not in repr(settings)
    assert settings.database_url_value() == secret
    with pytest.raises(ConfigurationError) as caught:
        load_settings(environ={"SALUS_SECRET_KEY": "hunter2-token", "SALUS_HTTP_PORT": "x"})
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({}, "SALUS_SECRET_KEY"),
        ({"secret_key": "short"}, "SALUS_SECRET_KEY"),
        ({"secret_key": DEV_SECRET_KEY}, "SALUS_SECRET_KEY"),
        ({"secret_key": STRONG, "encryption_enabled": False}, "SALUS_ENCRYPTION_ENABLED"),
        ({"secret_key": STRONG, "blob_backend": "s3", "s3_bucket": "b"}, "S3 credentials"),
        ({"secret_key": STRONG}, "SALUS_PUBLIC_URL"),
        ({"secret_key": STRONG, "public_url": "http://plain.example"}, "SALUS_PUBLIC_URL"),
        ({"secret_key": STRONG, "tls_certfile": "/c.pem"}, "SALUS_TLS_KEYFILE"),
    ],
)
def test_production_refuses_unsafe_settings(values: dict[str, object], fragment: str) -> None:
    settings = Settings.model_validate({"mode": "production", **values})
    with pytest.raises(ConfigurationError, match=fragment):
        settings.check_safe()


def test_production_with_safe_settings_starts() -> None:
    Settings.model_validate(
        {"mode": "production", "secret_key": STRONG, "public_url": "https://salus.example"}
    ).check_safe()


def test_development_allows_the_default_secret() -> None:
    Settings().check_safe()


def test_sqlite_runs_one_job_worker() -> None:
    assert Settings(jobs_workers=4).effective_job_workers() == 1
    pg = Settings(jobs_workers=4, database_url="postgresql://h/db")  # type: ignore[arg-type]
    assert pg.effective_job_workers() == 4


def test_every_setting_is_documented() -> None:
    text = DOCS.read_text()
    documented = {n for n in re.findall(r"`SALUS_([A-Z0-9_]+)`", text) if not n.endswith("_")}
    fields = {name.upper() for name in Settings.model_fields}
    missing = sorted(fields - documented - {"CONFIG"})
    stale = sorted(documented - fields - {"CONFIG"})
    assert not missing, f"settings missing from docs/configuration.md: {missing}"
    assert not stale, f"docs/configuration.md documents settings that do not exist: {stale}"
