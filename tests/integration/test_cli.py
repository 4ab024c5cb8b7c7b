"""The `salus` command line, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from salus import __version__
from salus.cli import main
from salus.config import Settings
from salus.db import head_revision
from salus.services import Services
from salus.storage.keys import FileKeyProvider


@pytest.fixture
def cli_env(settings_factory: Any) -> tuple[Settings, dict[str, str]]:
    settings: Settings = settings_factory()
    env = {"SALUS_DATA_DIR": str(settings.data_dir)}
    if settings.database_url is not None:
        env["SALUS_DATABASE_URL"] = settings.database_url.get_secret_value()
    return settings, env


def run(env: dict[str, str], *args: str) -> Any:
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result


def test_init_is_idempotent_and_keeps_the_key(cli_env: tuple[Settings, dict[str, str]]) -> None:
    settings, env = cli_env
    first = run(env, "init")
    assert first.exit_code == 0, first.output
    key_file = settings.key_path()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.data_dir.stat().st_mode) == 0o700
    key_bytes = key_file.read_bytes()
    second = run(env, "init")
    assert second.exit_code == 0 and "kept" in second.output
    assert key_file.read_bytes() == key_bytes
    assert f"revision {head_revision()}" in second.output


def test_migrate(cli_env: tuple[Settings, dict[str, str]]) -> None:
    _, env = cli_env
    result = run(env, "migrate")
    assert result.exit_code == 0 and f"-> {head_revision()}" in result.output


def test_keys_rotate_rewraps_blobs(cli_env: tuple[Settings, dict[str, str]]) -> None:
    settings, env = cli_env
    assert run(env, "init").exit_code == 0
    services = Services.build(settings)
    try:
        refs = [services.blobs.put(os.urandom(100_000)) for _ in range(3)]
        old = services.keys.active_key_id() if services.keys else ""
    finally:
        services.close()
    result = run(env, "keys", "rotate")
    assert result.exit_code == 0, result.output
    assert "blobs: 3 re-wrapped of 3 scanned" in result.output
    provider = FileKeyProvider(settings.key_path())
    assert provider.active_key_id() != old and old in provider.key_ids()
    listing = run(env, "keys", "list").output
    assert f"{provider.active_key_id()}  (active)" in listing and old in listing
    services = Services.build(settings)
    try:
        for ref in refs:
            assert services.blobs.objects.head(ref.digest)["kid"] == provider.active_key_id()  # type: ignore[index]
            assert services.blobs.verify(ref.digest) == ref
    finally:
        services.close()
    again = run(env, "keys", "rewrap")
    assert "blobs: 0 re-wrapped of 3 scanned" in again.output


def test_jobs_list_show_retry(cli_env: tuple[Settings, dict[str, str]]) -> None:
    settings, env = cli_env
    assert run(env, "init").exit_code == 0
    services = Services.build(settings)
    try:
        job_id = services.jobs.enqueue("demo.fail", {"x": 1}, max_attempts=1)
        [job] = services.jobs.claim("w")
        services.jobs.fail(job.id, "w", "unavailable: down")
    finally:
        services.close()
    listed = json.loads(run(env, "jobs", "list", "--json").output)
    assert listed["counts"]["dead"] == 1
    assert listed["jobs"][0]["last_error"] == "unavailable: down"
    table = run(env, "jobs", "list", "--status", "dead").output
    assert "demo.fail" in table
    shown = json.loads(run(env, "jobs", "show", str(job_id)).output)
    assert shown["status"] == "dead"
    assert run(env, "jobs", "retry", str(job_id)).exit_code == 0
    refused = run(env, "jobs", "retry", str(job_id))
    assert refused.exit_code == 2 and "not dead" in refused.output
    assert json.loads(run(env, "jobs", "show", str(job_id)).output)["status"] == "queued"
    missing = run(env, "jobs", "show", "999999")
    assert missing.exit_code == 2 and "No such job" in missing.output


def test_version_and_help() -> None:
    assert run({}, "version").output.strip() == f"salus {__version__}"
    commands = [
        ["init"],
        ["migrate"],
        ["serve"],
        ["keys"],
        ["keys", "rotate"],
        ["keys", "list"],
        ["keys", "rewrap"],
        ["jobs"],
        ["jobs", "list"],
        ["jobs", "show"],
        ["jobs", "retry"],
        ["version"],
    ]
    for command in commands:
        result = run({}, *command, "--help")
        assert result.exit_code == 0, command
        assert "Usage:" in result.output


def test_bad_settings_exit_cleanly(tmp_path: Path) -> None:
    result = run({"SALUS_HTTP_PROT": "1", "SALUS_DATA_DIR": str(tmp_path)}, "migrate")
    assert result.exit_code == 2
    assert "SALUS_HTTP_PROT" in result.output
