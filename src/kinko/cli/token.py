"""`kinko token`: issue bearer tokens for the key service and the cluster API.

A thin shell over :mod:`kinko.keys.auth` and :mod:`kinko.cluster.auth`: the token is printed
once, on stdout and alone (so ``TOKEN=$(kinko token create …)`` works); the store under
``--data-dir`` keeps only its SHA-256. A token may be registered in the key service's book
(``--instance`` and ``--role``), in the cluster's book (``--cluster-role``), or in both at once
(one transaction, one token). Wrong option combinations are usage errors (exit 2); other
errors propagate as :class:`~kinko.errors.KinkoError` and the ``kinko`` group maps them to exit
codes.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from kinko.cli.options import etcd_store_options
from kinko.cluster.auth import (
    ALL_NAMESPACES,
    ClusterRole,
    ClusterTokenBook,
    ClusterTokenRecord,
    cluster_token_record,
    issue_cluster_token,
)
from kinko.errors import InvalidArgument
from kinko.keys.auth import Role, TokenBook, TokenRecord, issue_token
from kinko.keys.deployment import STORE_FILE, StoreOptions, open_store

__all__ = ["STORE_FILE", "token"]


@click.group()
def token() -> None:
    """Issue bearer tokens for the key service and the cluster API."""


@token.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help=f"kinko's data folder; its store is {STORE_FILE} (created if missing).",
)
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
