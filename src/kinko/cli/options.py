"""Click options shared by several ``kinko`` commands."""

from __future__ import annotations

from pathlib import Path

import click


def _endpoints(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


_ETCD_OPTIONS = [
    click.option(
        "--etcd-endpoints",
        callback=_endpoints,
        help="Keep metadata in etcd (comma-separated endpoints) instead of SQLite.",
    ),
    click.option("--etcd-cacert", type=click.Path(dir_okay=False, path_type=Path)),
    click.option("--etcd-cert", type=click.Path(dir_okay=False, path_type=Path)),
    click.option("--etcd-key", type=click.Path(dir_okay=False, path_type=Path)),
]


def etcd_store_options(f: click.decorators.FC) -> click.decorators.FC:
    """``--etcd-endpoints`` (parsed into a tuple) and its TLS files: the key service's store
    is etcd when given, else the data folder's SQLite file."""
    for option in reversed(_ETCD_OPTIONS):
        f = option(f)
    return f
