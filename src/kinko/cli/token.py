"""`kinko token`: issue, list and revoke bearer tokens for the key service and the cluster API.

A thin shell over :mod:`kinko.keys.auth` and :mod:`kinko.cluster.auth`: the token is printed
once, on stdout and alone (so ``TOKEN=$(kinko token create …)`` works); the store under
``--data-dir`` keeps only its SHA-256. A token may be registered in the key service's book
(``--instance`` and ``--role``), in the cluster's book (``--cluster-role``), or in both at once
(one transaction, one token). ``list`` shows both books by token id (the first 12 hex of the
hash) and never a token; ``revoke`` removes a token from both books in one transaction. Wrong
option combinations are usage errors (exit 2); other errors propagate as
:class:`~kinko.errors.KinkoError` and the ``kinko`` group maps them to exit codes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from kinko.cli.options import etcd_store_options
from kinko.cluster.auth import (
    ALL_NAMESPACES,
    MIN_ID_CHARS,
    BookedToken,
    ClusterRole,
    ClusterTokenBook,
    ClusterTokenRecord,
    cluster_token_record,
    find_token,
    issue_cluster_token,
    list_tokens,
    revoke_token,
)
from kinko.cluster.endpoints import read_token_file
from kinko.errors import InvalidArgument
from kinko.keys.auth import Role, TokenBook, TokenRecord, hash_token, issue_token
from kinko.keys.deployment import STORE_FILE, StoreOptions, open_store

__all__ = ["STORE_FILE", "token"]


@click.group()
def token() -> None:
    """Issue, list and revoke bearer tokens for the key service and the cluster API."""


_data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help=f"kinko's data folder; its store is {STORE_FILE} (created if missing).",
)


@token.command()
@_data_dir_option
@click.option(
    "--instance",
    default=None,
    help="The key service instance the token is for (needs --role).",
)
@click.option(
    "--role",
    "roles",
    type=click.Choice([r.value for r in Role], case_sensitive=False),
    multiple=True,
    help="A key service role the token grants (needs --instance); repeat for several.",
)
@click.option(
    "--service",
    is_flag=True,
    help="A key service identity: may create, change and delete registrations.",
)
@click.option(
    "--cluster-role",
    type=click.Choice([r.value for r in ClusterRole], case_sensitive=False),
    default=None,
    help="The cluster API role the token grants: Administrator (everything), Editor (read and "
    "write Secrets and ConfigMaps) or Viewer (read; Secrets without data).",
)
@click.option(
    "--namespace",
    "namespaces",
    multiple=True,
    metavar="NS",
    help=f"A namespace an Editor or Viewer token may use; repeat for several, or "
    f"'{ALL_NAMESPACES}' for all. An Administrator token takes none.",
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
    instance: str | None,
    roles: tuple[str, ...],
    service: bool,
    cluster_role: str | None,
    namespaces: tuple[str, ...],
    name: str | None,
    etcd_endpoints: tuple[str, ...],
    etcd_cacert: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    expires_in: str | None,
) -> None:
    """Create a token and print it (only it) on stdout. It is shown only this once.

    Give --instance and --role for a key service token, --cluster-role (and --namespace for an
    Editor or Viewer) for a cluster API token, or all of them for one token valid in both.
    """
    _check_combination(instance, roles, service, cluster_role, namespaces)
    now = datetime.now(UTC)
    expires = None if expires_in is None else now + _lifetime(expires_in)
    key_record: TokenRecord | None = None
    cluster_record: ClusterTokenRecord | None = None
    if instance is not None:
        issued = issue_token(
            rng=os.urandom,
            instance=instance,
            roles=roles,
            now=now,
            service=service,
            name=name,
            expires=expires,
        )
        token, key_record = issued.token, issued.record
        if cluster_role is not None:
            cluster_record = cluster_token_record(
                token_hash=key_record.token_hash,
                role=cluster_role,
                namespaces=namespaces,
                name=key_record.name,
                now=now,
                expires=expires,
            )
    elif cluster_role is not None:
        token, cluster_record = issue_cluster_token(
            rng=os.urandom,
            role=cluster_role,
            namespaces=namespaces,
            now=now,
            name=name,
            expires=expires,
        )
    else:  # _check_combination refuses this already; kept so no path issues an empty token.
        raise click.UsageError("expected --instance with --role, --cluster-role, or both")
    options = StoreOptions(data_dir, etcd_endpoints, etcd_cacert, etcd_cert, etcd_key)
    with open_store(options) as (store, _):
        if cluster_record is not None:
            # With a key service record too, both are written in one transaction.
            ClusterTokenBook(store).add(cluster_record, key_token=key_record)
        elif key_record is not None:
            TokenBook(store).add(key_record)
    click.echo(token)


@token.command("list")
@_data_dir_option
@etcd_store_options
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
def list_command(
    data_dir: Path,
    etcd_endpoints: tuple[str, ...],
    etcd_cacert: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    output: str,
) -> None:
    """List the tokens of both books (key service and cluster API), oldest first.

    Tokens are named by their id (the first 12 hex characters of their SHA-256); the tokens
    themselves are not kept and never shown.
    """
    options = StoreOptions(data_dir, etcd_endpoints, etcd_cacert, etcd_cert, etcd_key)
    with open_store(options) as (store, _):
        booked = list_tokens(store)
    if output == "json":
        click.echo(json.dumps([_token_json(b) for b in booked], indent=2))
    else:
        click.echo(_table(booked), nl=False)


@token.command()
@_data_dir_option
@click.option(
    "--id",
    "id_prefix",
    metavar="ID",
    default=None,
    help=f"The token's id as `kinko token list` shows it, or its first {MIN_ID_CHARS} or more "
    "hex characters (they must name one token).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A file holding the token to revoke.",
)
@click.option(
    "--token",
    "token_text",
    metavar="TOKEN",
    default=None,
    help="The token to revoke (visible to other users in the process list; prefer "
    "--token-file or --id).",
)
@etcd_store_options
def revoke(
    data_dir: Path,
    id_prefix: str | None,
    token_file: Path | None,
    token_text: str | None,
    etcd_endpoints: tuple[str, ...],
    etcd_cacert: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
) -> None:
    """Revoke a token: remove it from both books in one transaction.

    Name it by --id, --token-file or --token (exactly one). Running servers stop accepting
    it within a second (their authentication caches keep a success for 1 s). A kinko up
    admin token still in the data folder's admin.token is registered again on the next
    start: delete admin.token instead, and the next start replaces the admin token.
    """
    given = [v for v in (id_prefix, token_file, token_text) if v is not None]
    if len(given) != 1:
        raise click.UsageError("expected exactly one of --id, --token-file and --token")
    if token_file is not None:
        token_text = read_token_file(token_file)
    options = StoreOptions(data_dir, etcd_endpoints, etcd_cacert, etcd_cert, etcd_key)
    with open_store(options) as (store, _):
        if id_prefix is not None:
            token_hash = find_token(store, id_prefix)
        else:
            assert token_text is not None
            token_hash = hash_token(token_text.strip())
        revoked = revoke_token(store, token_hash)
    click.echo(f"revoked {revoked.token_id} {revoked.name} ({_books(revoked)})")


def _books(booked: BookedToken) -> str:
    return {"both": "both books", "key": "key service book", "cluster": "cluster book"}[
        booked.books
    ]


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _token_json(booked: BookedToken) -> dict[str, object]:
    """One token as ``-o json`` shows it: ids, scopes and times, never the token."""
    doc: dict[str, object] = {
        "id": booked.token_id,
        "name": booked.name,
        "books": booked.books,
        "created": _time(booked.created),
        "expires": _time(booked.expires),
    }
    if booked.key is not None:
        doc["keyService"] = {
            "instance": booked.key.instance,
            "roles": sorted(r.value for r in booked.key.roles),
            "service": booked.key.service,
        }
    if booked.cluster is not None:
        namespaces = booked.cluster.namespaces
        doc["cluster"] = {
            "role": booked.cluster.role.value,
            "namespaces": [ALL_NAMESPACES] if namespaces is None else sorted(namespaces),
        }
    return doc


_COLUMNS = (
    "ID",
    "NAME",
    "BOOKS",
    "INSTANCE",
    "ROLES",
    "SERVICE",
    "CLUSTER ROLE",
    "NAMESPACES",
    "CREATED",
    "EXPIRES",
)


def _table(booked: Sequence[BookedToken]) -> str:
    """Aligned columns, one token a line; ``-`` where a book does not know the token."""
    rows = [list(_COLUMNS)]
    for b in booked:
        key, cluster = b.key, b.cluster
        namespaces = None if cluster is None else cluster.namespaces
        rows.append(
            [
                b.token_id,
                b.name,
                b.books,
                "-" if key is None else key.instance,
                "-" if key is None else ",".join(sorted(r.value for r in key.roles)),
                "-" if key is None else ("yes" if key.service else "no"),
                "-" if cluster is None else cluster.role.value,
                "-" if cluster is None else ",".join(sorted(namespaces or {ALL_NAMESPACES})),
                _time(b.created) or "-",
                _time(b.expires) or "never",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "".join(line.rstrip() + "\n" for line in lines)


def _check_combination(
    instance: str | None,
    roles: tuple[str, ...],
    service: bool,
    cluster_role: str | None,
    namespaces: tuple[str, ...],
) -> None:
    """Raises click.UsageError unless the options name a key service token, a cluster token,
    or both, completely."""
    if roles and instance is None:
        raise click.UsageError("--role needs --instance")
    if service and instance is None:
        raise click.UsageError("--service needs --instance and --role")
    if namespaces and cluster_role is None:
        raise click.UsageError("--namespace needs --cluster-role")
    if instance is None and cluster_role is None:
        raise click.UsageError(
            "expected --instance with --role (a key service token), --cluster-role (a cluster "
            "API token), or both"
        )
    if instance is not None and not roles:
        raise click.UsageError("--instance needs at least one --role")
    if cluster_role == ClusterRole.ADMINISTRATOR and namespaces:
        raise click.UsageError(
            "--cluster-role Administrator takes no --namespace (it holds every namespace)"
        )
    if cluster_role in (ClusterRole.EDITOR, ClusterRole.VIEWER):
        if not namespaces:
            raise click.UsageError(
                f"--cluster-role {cluster_role} needs --namespace (repeat it for several, or "
                f"'{ALL_NAMESPACES}' for all namespaces)"
            )
        if ALL_NAMESPACES in namespaces and len(set(namespaces)) > 1:
            raise click.UsageError(
                f"--namespace '{ALL_NAMESPACES}' means all namespaces and goes alone"
            )


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
