"""`kinko etcd`."""

from __future__ import annotations

import click


@click.group()
def etcd() -> None:
    """(being built)"""
