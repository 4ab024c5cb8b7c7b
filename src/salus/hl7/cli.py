"""``salus hl7`` commands."""

from __future__ import annotations

import click

__all__ = ["hl7"]


@click.group()
def hl7() -> None:
    """HL7 commands."""
