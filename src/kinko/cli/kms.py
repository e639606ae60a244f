"""`kinko kms`."""

from __future__ import annotations

import click


@click.group()
def kms() -> None:
    """(being built)"""
