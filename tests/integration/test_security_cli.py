"""The directory, token and audit commands of the CLI, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from click.testing import CliRunner

from salus.cli import main
from salus.config import Settings

PASSWORD = "a long and fine password"


@pytest.fixture
def env(settings_factory: Any) -> dict[str, str]:
    settings: Settings = settings_factory()
    values = {"SALUS_DATA_DIR": str(settings.data_dir)}
    if settings.database_url is not None:
        values["SALUS_DATABASE_URL"] = settings.database_url.get_secret_value()
    assert CliRunner().invoke(main, ["init"], env=values).exit_code == 0
    return values


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(main, list(args), env=env, input=stdin, catch_exceptions=False)


def test_bootstrap_a_network_from_the_cli(env: dict[str, str]) -> None:
    assert (
        run(env, "org", "create", "operator", "--name", "Ops", "--kind", "operator").exit_code == 0
    )
    assert (
        run(env, "org", "create", "hosp-a", "--name", "Bệnh viện A", "--kind", "hospital").exit_code
        == 0
    )
    created = run(
        env,
        "user",
        "create",
        "admin",
        "--org",
        "operator",
        "--role",
        "administrator",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert created.exit_code == 0, created.output
    assert (
        run(
            env,
            "user",
            "create",
            "dr.an",
            "--org",
            "hosp-a",
            "--password-stdin",
            stdin=PASSWORD + "\n",
        ).exit_code
        == 0
    )
    assert run(env, "grant", "user", "dr.an", "clinician").exit_code == 0
    users = json.loads(run(env, "user", "list").output)
    assert {u["username"]: u["roles"] for u in users} == {
        "admin": ["administrator"],
        "dr.an": ["clinician"],
    }
    assert run(env, "user", "disable", "dr.an").exit_code == 0
    assert [
        u["active"] for u in json.loads(run(env, "user", "list").output) if u["username"] == "dr.an"
    ] == [False]
    otp = run(env, "user", "totp", "admin")
    assert otp.output.startswith("otpauth://totp/")
    client = run(
        env, "client", "create", "lab", "--org", "hosp-a", "--role", "hospital_integration"
    )
    assert "client secret (shown once)" in client.output
    token = run(env, "token", "issue", "--client", "lab").output.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "lab" and claims["org"] == "hosp-a"
    assert "system/*.cruds" in claims["scope"]
    rotated = run(env, "keys", "rotate-signing")
    assert rotated.exit_code == 0 and "New signing key" in rotated.output
    old_kid = jwt.get_unverified_header(token)["kid"]
    # "--": a key id (RFC 7638 thumbprint, base64url) may begin with "-".
    assert run(env, "keys", "retire-signing", "--", old_kid).exit_code == 0
    verified = run(env, "audit", "verify")
    assert verified.exit_code == 0 and "intact" in verified.output
    assert json.loads(run(env, "break-glass", "list").output) == []


def test_cli_errors_are_one_line(env: dict[str, str]) -> None:
    result = run(env, "org", "create", "Bad Id", "--name", "x", "--kind", "hospital")
    assert result.exit_code == 2 and result.output.startswith("error: ")
    result = run(
        env,
        "user",
        "create",
        "someone",
        "--org",
        "nowhere",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert result.exit_code == 2 and "No such organization" in result.output
