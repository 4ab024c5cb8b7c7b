"""``salus warehouse opendata publish|list``: open data from the server host.

The CLI acts as the host's SYSTEM principal for an authority organization
(``--org``); the publication is recorded and audited like one made over HTTP.
"""

from __future__ import annotations

import json

import click

from salus.cliutil import command_errors, console, settings_from

__all__ = ["opendata"]


@click.group()
def opendata() -> None:
    """Publish indicators as open data (small cells suppressed); list publications."""


@opendata.command("publish")
@click.option("--org", required=True, help="The publishing authority organization.")
@click.option(
    "--indicator",
    "chosen",
    multiple=True,
    required=True,
    help="An indicator id, optionally with disaggregations: 'admissions:sex,age_band'.",
)
@click.option(
    "--period", "periods", multiple=True, help="A month (YYYY-MM); every month when omitted."
)
@click.option("--title", help="The publication's title.")
@click.option("--description", help="The publication's description.")
@click.option(
    "--licence", default="CC-BY-4.0", show_default=True, help="CC-BY-4.0, CC0-1.0 or ODC-BY-1.0."
)
@click.option("--refresh", is_flag=True, help="Materialize the indicators' views first.")
@click.pass_context
def publish(
    ctx: click.Context,
    org: str,
    chosen: tuple[str, ...],
    periods: tuple[str, ...],
    title: str | None,
    description: str | None,
    licence: str,
    refresh: bool,
) -> None:
    """Publish INDICATORs; prints the publication record (JSON)."""
    from salus.services import Services
    from salus.warehouse.indicators.engine import system_principal
    from salus.warehouse.opendata.publish import OpenData, PublicationRequest

    with command_errors():
        body = {
            "indicators": [
                {"id": c.split(":", 1)[0], "by": c.split(":", 1)[1] if ":" in c else []}
                for c in chosen
            ],
            "periods": list(periods),
            "title": title,
            "description": description,
            "licence": licence,
            "org": org,
            "refresh": refresh,
        }
        request = PublicationRequest.from_json(body)
        services = Services.build(settings_from(ctx))
        try:
            record = OpenData(services).publish(system_principal(), request)
        finally:
            services.close()
        click.echo(json.dumps(record, indent=1, ensure_ascii=False))


@opendata.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """List the publications, newest first."""
    from salus.services import Services
    from salus.warehouse.opendata.publish import OpenData

    with command_errors():
        services = Services.build(settings_from(ctx))
        try:
            records = OpenData(services).list(private=True)
        finally:
            services.close()
        if as_json:
            click.echo(json.dumps(records, indent=1, ensure_ascii=False))
            return
        for r in records:
            inds = ",".join(f"{i['id']}@{i['version']}" for i in r["indicators"])
            console.print(
                f"{r['id']}\t{r['publishedAt']}\t{r['publishedBy']}\t{inds}\t"
                f"{','.join(r['periods'])}\t{len(r['files'])} files\t{r['title']}"
            )
