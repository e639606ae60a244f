"""`kinko token`: issue bearer tokens for the key service.

A thin shell over :mod:`kinko.keys.auth`: the token is printed once, on stdout and alone (so
``TOKEN=$(kinko token create …)`` works); the store under ``--data-dir`` keeps only its
SHA-256. Errors propagate as :class:`~kinko.errors.KinkoError` and the ``kinko`` group maps
them to exit codes.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import click

from kinko.keys.auth import Role, TokenBook, issue_token
from kinko.store.sqlite import SqliteStore

#: The SQLite file of a kinko data folder (shared with ``kinko up``).
STORE_FILE = "kinko.db"


@click.group()
def token() -> None:
    """Issue bearer tokens for the key service."""


@token.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help=f"kinko's data folder; its store is {STORE_FILE} (created if missing).",
)
@click.option("--instance", required=True, help="The key service instance the token is for.")
@click.option(
    "--role",
    "roles",
    type=click.Choice([r.value for r in Role], case_sensitive=False),
    multiple=True,
    required=True,
    help="A role the token grants; repeat for several.",
)
@click.option(
    "--service",
    is_flag=True,
    help="A service identity: may create, change and delete registrations.",
)
@click.option(
    "--name",
    default=None,
    help="Who the token is for (audit log, createdBy, dual authorization). Default: token-<id>.",
)
def create(
    data_dir: Path, instance: str, roles: tuple[str, ...], service: bool, name: str | None
) -> None:
    """Create a token and print it (only it) on stdout. It is shown only this once."""
    issued = issue_token(
        rng=os.urandom,
        instance=instance,
        roles=roles,
        now=datetime.now(UTC),
        service=service,
        name=name,
    )
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with SqliteStore(data_dir / STORE_FILE) as store:
        TokenBook(store).add(issued.record)
    click.echo(issued.token)
