"""`kinko token`: issue bearer tokens for the key service.

A thin shell over :mod:`kinko.keys.auth`: the token is printed once, on stdout and alone (so
``TOKEN=$(kinko token create …)`` works); the store under ``--data-dir`` keeps only its
SHA-256. Errors propagate as :class:`~kinko.errors.KinkoError` and the ``kinko`` group maps
them to exit codes.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from kinko.cli.options import etcd_store_options
from kinko.errors import InvalidArgument
from kinko.keys.auth import Role, TokenBook, issue_token
from kinko.keys.deployment import STORE_FILE, StoreOptions, open_store

__all__ = ["STORE_FILE", "token"]


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
@etcd_store_options
@click.option(
    "--expires-in",
    default=None,
    metavar="N{d,h,m}",
    help="The token stops working after this long (e.g. 90d, 12h, 30m). Default: never.",
)
def create(
    data_dir: Path,
    instance: str,
    roles: tuple[str, ...],
    service: bool,
    name: str | None,
    etcd_endpoints: tuple[str, ...],
    etcd_cacert: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    expires_in: str | None,
) -> None:
    """Create a token and print it (only it) on stdout. It is shown only this once."""
    now = datetime.now(UTC)
    issued = issue_token(
        rng=os.urandom,
        instance=instance,
        roles=roles,
        now=now,
        service=service,
        name=name,
        expires=None if expires_in is None else now + _lifetime(expires_in),
    )
    options = StoreOptions(data_dir, etcd_endpoints, etcd_cacert, etcd_cert, etcd_key)
    with open_store(options) as (store, _):
        TokenBook(store).add(issued.record)
    click.echo(issued.token)


_LIFETIME = re.compile(r"([1-9][0-9]{0,5})([dhm])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def _lifetime(text: str) -> timedelta:
    """``90d``, ``12h`` or ``30m`` as a timedelta. Raises InvalidArgument."""
    match = _LIFETIME.fullmatch(text.strip())
    if match is None:
        raise InvalidArgument(
            f"--expires-in: expected a whole number of days, hours or minutes (90d, 12h, 30m), "
            f"got {text!r}"
        )
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
