"""``salus dicom`` commands."""

from __future__ import annotations

import click

__all__ = ["dicom"]


@click.group()
def dicom() -> None:
    """DICOM commands."""
