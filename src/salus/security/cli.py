"""``salus org|user|client|grant|token|break-glass``: the directory from the
command line. Commands run as the *system* principal of the host (whoever can
run them can read the key file anyway) and are audited with the operating
system user's name."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from salus.audit.events import AuditEvent
from salus.cliutil import settings_from
from salus.errors import InvalidInput, SalusError
from salus.security.principal import AuthMethod, Principal, PrincipalKind
from salus.security.roles import ROLES

__all__ = ["break_glass", "client", "grant", "org", "system_principal", "token", "user"]


def system_principal(org_id: str = "-") -> Principal:
    return Principal(
        kind=PrincipalKind.SYSTEM,
        id=f"cli:{getpass.getuser()}"[:100],
        org_id=org_id,
        auth_method=AuthMethod.LOCAL,
    )


@contextmanager
def _services(ctx: click.Context) -> Iterator[Any]:
    from salus.services import Services

    try:
        services = Services.build(settings_from(ctx))
    except SalusError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(2)
    try:
        yield services
    except SalusError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(2)
    finally:
        services.close()


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


# -- organizations ----------------------------------------------------------------------
@click.group()
def org() -> None:
    """Organizations (tenants): hospitals, the authority, research bodies, the operator."""


@org.command("create")
@click.argument("org_id")
@click.option("--name", required=True)
@click.option(
    "--kind", type=click.Choice(["hospital", "authority", "research", "operator"]), required=True
)
@click.pass_context
def org_create(ctx: click.Context, org_id: str, name: str, kind: str) -> None:
    with _services(ctx) as services:
        services.directory.create_organization(system_principal(), org_id, name, kind)
        click.echo(f"organization {org_id} created")


@org.command("list")
@click.pass_context
def org_list(ctx: click.Context) -> None:
    with _services(ctx) as services:
        _echo_json(services.directory.list_organizations())


@org.command("disable")
@click.argument("org_id")
@click.pass_context
def org_disable(ctx: click.Context, org_id: str) -> None:
    with _services(ctx) as services:
        services.directory.set_organization_active(system_principal(), org_id, False)
        click.echo(f"organization {org_id} disabled")


# -- users ------------------------------------------------------------------------------
@click.group()
def user() -> None:
    """People who sign in to the console."""


@user.command("create")
@click.argument("username")
@click.option("--org", "org_id", required=True)
@click.option("--name", "display_name", default="")
@click.option("--role", "roles", multiple=True, type=click.Choice(sorted(ROLES)))
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_context
def user_create(
    ctx: click.Context,
    username: str,
    org_id: str,
    display_name: str,
    roles: tuple[str, ...],
    password_stdin: bool,
) -> None:
    password = _read_password(password_stdin)
    with _services(ctx) as services:
        user_id = services.directory.create_user(
            system_principal(org_id),
            username=username,
            org_id=org_id,
            display_name=display_name,
            password=password,
            roles=roles,
        )
        click.echo(f"user {username} created ({user_id})")


@user.command("list")
@click.pass_context
def user_list(ctx: click.Context) -> None:
    with _services(ctx) as services:
        operator = system_principal()
        rows = services.directory.list_users(operator)
        _echo_json([{k: v for k, v in r.items() if k != "password_hash"} for r in rows])


def _user_id(services: Any, username: str) -> str:
    for row in services.directory.list_users(system_principal()):
        if row["username"] == username:
            return str(row["id"])
    raise InvalidInput("No such user.")


@user.command("disable")
@click.argument("username")
@click.pass_context
def user_disable(ctx: click.Context, username: str) -> None:
    with _services(ctx) as services:
        services.directory.set_user_active(system_principal(), _user_id(services, username), False)
        click.echo(f"user {username} disabled")


@user.command("enable")
@click.argument("username")
@click.pass_context
def user_enable(ctx: click.Context, username: str) -> None:
    with _services(ctx) as services:
        services.directory.set_user_active(system_principal(), _user_id(services, username), True)
        click.echo(f"user {username} enabled")


@user.command("totp")
@click.argument("username")
@click.pass_context
def user_totp(ctx: click.Context, username: str) -> None:
    """Enrol a TOTP second factor; prints the otpauth:// URI once."""
    with _services(ctx) as services:
        click.echo(services.signin.enroll_totp(system_principal(), _user_id(services, username)))


# -- clients ----------------------------------------------------------------------------
@click.group()
def client() -> None:
    """Systems that call Salus (OAuth 2.0 clients)."""


@client.command("create")
@click.argument("client_id")
@click.option("--org", "org_id", required=True)
@click.option("--name", default="")
@click.option(
    "--jwks",
    "jwks_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Public JWK Set file: the client authenticates with private_key_jwt.",
)
@click.option("--role", "roles", multiple=True, type=click.Choice(sorted(ROLES)))
@click.pass_context
def client_create(
    ctx: click.Context,
    client_id: str,
    org_id: str,
    name: str,
    jwks_file: Path | None,
    roles: tuple[str, ...],
) -> None:
    """Register a client; without --jwks it gets a client secret, printed once."""
    jwks = json.loads(jwks_file.read_text()) if jwks_file else None
    with _services(ctx) as services:
        created = services.directory.create_client(
            system_principal(org_id),
            client_id=client_id,
            org_id=org_id,
            name=name,
            auth_method="private_key_jwt" if jwks else "client_secret",
            jwks=jwks,
            roles=roles,
        )
        click.echo(f"client {client_id} created")
        if created.secret:
            click.echo(f"client secret (shown once): {created.secret}")


@client.command("disable")
@click.argument("client_id")
@click.pass_context
def client_disable(ctx: click.Context, client_id: str) -> None:
    with _services(ctx) as services:
        services.directory.set_client_active(system_principal(), client_id, False)
        click.echo(f"client {client_id} disabled")


@client.command("list")
@click.pass_context
def client_list(ctx: click.Context) -> None:
    with _services(ctx) as services:
        _echo_json(services.directory.list_clients(system_principal()))


# -- grants -----------------------------------------------------------------------------
@click.command()
@click.argument("kind", type=click.Choice(["user", "client"]))
@click.argument("name")
@click.argument("role", type=click.Choice(sorted(ROLES)))
@click.option("--revoke", is_flag=True)
@click.pass_context
def grant(ctx: click.Context, kind: str, name: str, role: str, revoke: bool) -> None:
    """Grant (or --revoke) ROLE to a user (by username) or a client."""
    with _services(ctx) as services:
        principal_id = _user_id(services, name) if kind == "user" else name
        method = services.directory.revoke_role if revoke else services.directory.grant_role
        method(system_principal(), PrincipalKind(kind), principal_id, role)
        click.echo(f"{'revoked' if revoke else 'granted'} {role}")


# -- tokens -----------------------------------------------------------------------------
@click.group()
def token() -> None:
    """Access tokens for scripts and service accounts."""


@token.command("issue")
@click.option("--client", "client_id", required=True, help="Issue the token for this client.")
@click.option("--scope", default="", help="Space-separated scopes (default: all its roles give).")
@click.pass_context
def token_issue(ctx: click.Context, client_id: str, scope: str) -> None:
    """Print a short-lived access token for a client (audited)."""
    with _services(ctx) as services:
        principal = services.directory.client_principal(client_id, AuthMethod.LOCAL)
        services.signing_keys.ensure_active()
        issued = services.tokens.issue(principal, scopes=frozenset(scope.split()) or None)
        services.audit.record(
            [
                AuditEvent.for_principal(
                    system_principal(principal.org_id),
                    category="auth",
                    action="E",
                    entity=f"Client/{client_id}",
                    description="access token issued from the CLI",
                )
            ]
        )
        click.echo(issued.access_token)


# -- break-the-glass review -------------------------------------------------------------
@click.group("break-glass")
def break_glass() -> None:
    """Review emergency (break-the-glass) access."""


@break_glass.command("list")
@click.option(
    "--status",
    type=click.Choice(["pending", "accepted", "rejected"]),
    default="pending",
    show_default=True,
)
@click.pass_context
def btg_list(ctx: click.Context, status: str) -> None:
    with _services(ctx) as services:
        _echo_json(services.care.list_break_glass(system_principal(), status))


@break_glass.command("review")
@click.argument("grant_id", type=int)
@click.argument("outcome", type=click.Choice(["accepted", "rejected"]))
@click.option("--note", default="")
@click.pass_context
def btg_review(ctx: click.Context, grant_id: int, outcome: str, note: str) -> None:
    with _services(ctx) as services:
        services.care.review_break_glass(system_principal(), grant_id, outcome, note)
        click.echo(f"grant {grant_id} {outcome}")
