"""What every ``salus`` command shares: building the settings from the command
line's context, one-line errors, consoles and progress bars."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from salus.config import Settings, load_settings
from salus.errors import SalusError

__all__ = ["command_errors", "console", "err_console", "progress", "settings_from"]

console = Console(stderr=False)
err_console = Console(stderr=True)


def settings_from(ctx: click.Context, **overrides: Any) -> Settings:
    """The process's settings: ``--config``, ``--data-dir``, the environment and
    the command's own options; also configures logging."""
    obj = ctx.find_root().obj or {}
    base: dict[str, Any] = dict(obj.get("overrides") or {})
    base.update({k: v for k, v in overrides.items() if v is not None})
    settings = load_settings(obj.get("config"), base)
    from salus.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    return settings


@contextmanager
def command_errors() -> Iterator[None]:
    """Print Salus errors (and unusable databases) as one line; exit with 2."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except SalusError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except SQLAlchemyError:
        err_console.print(
            "[red]error:[/red] the database could not be used (is it reachable, and "
            "migrated with `salus migrate`?)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)


def progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )
