"""`kinko etcd`: read, inspect, audit and re-encrypt values kube-apiserver stored in etcd.

A thin shell over :mod:`kinko.etcdtool`: handlers parse options, call one use case and print.
Errors propagate as :class:`~kinko.errors.KinkoError`; the ``kinko`` group maps them to exit
codes (``kinko.cli.errors``). Values come from ``--in FILE`` / stdin (exact bytes, as stored)
or, with ``--endpoints``, from a live etcd. Plaintext goes only to stdout, and only from
``decrypt``; messages carry storage keys, names and counts, never values.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from kinko import etcdtool
from kinko.crypto.config import EncryptionChains
from kinko.k8s.payload import decode_payload
from kinko.store.etcd import DEFAULT_PAGE_LIMIT, MAX_TXN_OPS, EtcdClient

#: A walk over more keys than this shows a progress bar (on a terminal).
PROGRESS_THRESHOLD = 1000

_F = Callable[..., Any]


# --------------------------------------------------------------------------- shared options


def _endpoint_options(*, required: bool) -> Callable[[_F], _F]:
    def decorate(fn: _F) -> _F:
        options = [
            click.option(
                "--endpoints",
                required=required,
                help="etcd endpoints, comma-separated: http://host:port or https://host:port.",
            ),
            click.option(
                "--cacert",
                type=click.Path(exists=True, dir_okay=False, path_type=Path),
                help="PEM CA bundle that signed the etcd server certificates.",
            ),
            click.option(
                "--cert",
                type=click.Path(exists=True, dir_okay=False, path_type=Path),
                help="PEM client certificate for etcd (with --key-file).",
            ),
            click.option(
                "--key-file",
                type=click.Path(exists=True, dir_okay=False, path_type=Path),
                help="PEM private key of --cert.",
            ),
            click.option(
                "--timeout",
                type=click.FloatRange(min=0, min_open=True),
                default=5.0,
                show_default=True,
                help="Deadline of each etcd call, in seconds.",
            ),
        ]
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _resource_options(fn: _F) -> _F:
    options = [
        click.option(
            "--resource",
            help="Resource whose providers apply (secrets, crontabs.stable.example.com); "
            "default: parsed from the storage key.",
        ),
        click.option(
            "--etcd-prefix",
            help="kube-apiserver's --etcd-prefix, when its keys have no /registry/ segment.",
        ),
        click.option(
            "--read-unprefixed",
            is_flag=True,
            help="Read values without a k8s:enc: prefix as plaintext (stale) even when the "
            "chain has no identity provider. kube-apiserver refuses them.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


_config_option = click.option(
    "--encryption-config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The EncryptionConfiguration file given to kube-apiserver.",
)
_in_option = click.option(
    "--in",
    "in_file",
    type=click.File("rb"),
    help="File holding the stored value's exact bytes (default: stdin). Not with --endpoints.",
)


@contextmanager
def _store(
    endpoints: str, cacert: Path | None, cert: Path | None, key_file: Path | None, timeout: float
) -> Iterator[EtcdClient]:
    urls = [u.strip() for u in endpoints.split(",") if u.strip()]
    with EtcdClient(urls, cacert=cacert, cert=cert, key=key_file, timeout=timeout) as client:
        yield client


@contextmanager
def _chains(config_path: Path) -> Iterator[EncryptionChains]:
    with etcdtool.open_chains(config_path.read_bytes()) as chains:
        yield chains


def _stored_value(
    key: bytes,
    in_file: BinaryIO | None,
    endpoints: str | None,
    tls: tuple[Path | None, Path | None, Path | None],
    timeout: float,
) -> bytes:
    if endpoints:
        if in_file is not None:
            raise click.UsageError("give either --in or --endpoints, not both")
        with _store(endpoints, *tls, timeout) as store:
            return etcdtool.fetch(store, key).value
    stream = in_file if in_file is not None else sys.stdin.buffer
    return stream.read()


def _emit_bytes(data: bytes) -> None:
    out = sys.stdout.buffer
    out.write(data)
    out.flush()


def _emit_json(obj: object) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


@contextmanager
def _progress(total: int | None, what: str) -> Iterator[Callable[[int], None] | None]:
    console = Console(stderr=True)
    if total is None or total <= PROGRESS_THRESHOLD or not console.is_terminal:
        yield None
        return
    columns = (
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def _count_if_terminal(store: EtcdClient, prefix: bytes) -> int | None:
    return store.count_prefix(prefix) if Console(stderr=True).is_terminal else None


# --------------------------------------------------------------------------- commands


@click.group()
def etcd() -> None:
    """Read, inspect, audit and re-encrypt values that kube-apiserver stored in etcd."""


@etcd.command()
@_config_option
@click.option(
    "--key", "storage_key", required=True, help="The etcd key, e.g. /registry/secrets/ns/name."
)
@_resource_options
@_in_option
@click.option(
    "--output",
    type=click.Choice(["raw", "json"]),
    default="raw",
    show_default=True,
    help="raw: the plaintext bytes; json: a Secret/ConfigMap decoded to its JSON form "
    "(JSON payloads pass through).",
)
@_endpoint_options(required=False)
def decrypt(
    config_path: Path,
    storage_key: str,
    resource: str | None,
    etcd_prefix: str | None,
    read_unprefixed: bool,
    in_file: BinaryIO | None,
    output: str,
    endpoints: str | None,
    cacert: Path | None,
    cert: Path | None,
    key_file: Path | None,
    timeout: float,
) -> None:
    """Decrypt one stored value and write its plaintext to stdout (AAD = the storage key)."""
    key = storage_key.encode()
    value = _stored_value(key, in_file, endpoints, (cacert, cert, key_file), timeout)
    with _chains(config_path) as chains:
        opened = etcdtool.decrypt_value(
            chains,
            key,
            value,
            resource=resource,
            etcd_prefix=etcd_prefix,
            read_unprefixed=read_unprefixed,
        )
    if output == "json":
        _emit_json(decode_payload(opened.plaintext))
    else:
        _emit_bytes(opened.plaintext)


@etcd.command()
@click.option(
    "--key", "storage_key", required=True, help="The etcd key, e.g. /registry/secrets/ns/name."
)
@click.option("--etcd-prefix", help="kube-apiserver's --etcd-prefix, if keys lack /registry/.")
@_in_option
@_endpoint_options(required=False)
def inspect(
    storage_key: str,
    etcd_prefix: str | None,
    in_file: BinaryIO | None,
    endpoints: str | None,
    cacert: Path | None,
    cert: Path | None,
    key_file: Path | None,
    timeout: float,
) -> None:
    """Describe a stored value without any key: provider, key name, key_id, sizes (JSON)."""
    key = storage_key.encode()
    value = _stored_value(key, in_file, endpoints, (cacert, cert, key_file), timeout)
    _emit_json(etcdtool.describe_value(key, value, etcd_prefix=etcd_prefix))


@etcd.command()
@_config_option
@click.option("--key", "storage_key", help="One etcd key to re-encrypt.")
@click.option("--prefix", help="With --endpoints: re-encrypt every stale value under this prefix.")
@_resource_options
@_in_option
@click.option("--dry-run", is_flag=True, help="With --endpoints: count, write nothing.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, MAX_TXN_OPS),
    default=MAX_TXN_OPS,
    show_default=True,
    help="CAS puts per etcd txn.",
)
@click.option(
    "--page-size",
    type=click.IntRange(min=1),
    default=DEFAULT_PAGE_LIMIT,
    show_default=True,
    help="Keys per etcd range read.",
)
@_endpoint_options(required=False)
def reencrypt(
    config_path: Path,
    storage_key: str | None,
    prefix: str | None,
    resource: str | None,
    etcd_prefix: str | None,
    read_unprefixed: bool,
    in_file: BinaryIO | None,
    dry_run: bool,
    batch_size: int,
    page_size: int,
    endpoints: str | None,
    cacert: Path | None,
    cert: Path | None,
    key_file: Path | None,
    timeout: float,
) -> None:
    """Re-seal values under the first provider.

    Offline (--key, value from --in or stdin): write the re-sealed value to stdout. Live
    (--endpoints with --key or --prefix): rewrite each stale value with compare-and-swap on
    its mod_revision (a concurrent write wins) and print a JSON summary.
    """
    if not endpoints:
        if storage_key is None or prefix is not None or dry_run:
            raise click.UsageError(
                "without --endpoints, give --key (and the value on --in or stdin); "
                "--prefix and --dry-run need --endpoints"
            )
        key = storage_key.encode()
        value = _stored_value(key, in_file, None, (None, None, None), timeout)
        with _chains(config_path) as chains:
            sealed = etcdtool.reseal_value(
                chains,
                key,
                value,
                resource=resource,
                etcd_prefix=etcd_prefix,
                read_unprefixed=read_unprefixed,
            )
        _emit_bytes(sealed)
        return
    if (storage_key is None) == (prefix is None):
        raise click.UsageError("with --endpoints, give exactly one of --key or --prefix")
    if in_file is not None:
        raise click.UsageError("give either --in or --endpoints, not both")
    if prefix is not None and resource:
        raise click.UsageError("--resource applies to --key only; a prefix mixes resources")
    with (
        _store(endpoints, cacert, cert, key_file, timeout) as store,
        _chains(config_path) as chains,
    ):
        if storage_key is not None:
            kv = etcdtool.fetch(store, storage_key.encode())
            report = etcdtool.reencrypt_values(
                store,
                chains,
                [kv],
                resource=resource,
                etcd_prefix=etcd_prefix,
                read_unprefixed=read_unprefixed,
                dry_run=dry_run,
            )
        else:
            assert prefix is not None
            walk = prefix.encode()
            with _progress(_count_if_terminal(store, walk), "re-encrypting") as progress:
                report = etcdtool.reencrypt(
                    store,
                    chains,
                    walk,
                    etcd_prefix=etcd_prefix,
                    read_unprefixed=read_unprefixed,
                    dry_run=dry_run,
                    page_limit=page_size,
                    batch_size=batch_size,
                    progress=progress,
                )
    _emit_json(report.to_json_dict())


@etcd.command()
@_config_option
@click.option("--prefix", default="/registry/", show_default=True, help="Key prefix to walk.")
@click.option("--etcd-prefix", help="kube-apiserver's --etcd-prefix, if keys lack /registry/.")
@click.option(
    "--read-unprefixed",
    is_flag=True,
    help="Count values without a k8s:enc: prefix as readable plaintext even when the chain "
    "has no identity provider.",
)
@click.option(
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "--page-size",
    type=click.IntRange(min=1),
    default=DEFAULT_PAGE_LIMIT,
    show_default=True,
    help="Keys per etcd range read.",
)
@_endpoint_options(required=True)
def audit(
    config_path: Path,
    prefix: str,
    etcd_prefix: str | None,
    read_unprefixed: bool,
    output: str,
    page_size: int,
    endpoints: str,
    cacert: Path | None,
    cert: Path | None,
    key_file: Path | None,
    timeout: float,
) -> None:
    """Count the values under a prefix per resource, provider and key; find stale,
    plaintext and undecryptable ones. Writes nothing."""
    walk = prefix.encode()
    with (
        _store(endpoints, cacert, cert, key_file, timeout) as store,
        _chains(config_path) as chains,
        _progress(_count_if_terminal(store, walk), "auditing") as progress,
    ):
        report = etcdtool.audit(
            store,
            chains,
            walk,
            etcd_prefix=etcd_prefix,
            read_unprefixed=read_unprefixed,
            page_limit=page_size,
            progress=progress,
        )
    if output == "json":
        _emit_json(report.to_json_dict())
    else:
        _print_audit(report)


def _print_audit(report: etcdtool.AuditReport) -> None:
    console = Console(file=sys.stdout)
    # Storage keys are data: wrap them in Text so that rich never reads them as markup.
    per_resource = Table(title=Text(f"values under {report.prefix}"))
    for column in ("resource", "total", "current", "stale", "plaintext", "undecryptable"):
        per_resource.add_column(column, justify="left" if column == "resource" else "right")
    per_resource.add_column("unavailable", justify="right")
    for name in sorted(report.resources):
        c = report.resources[name]
        per_resource.add_row(
            Text(name),
            *(str(n) for n in (c.total, c.current, c.stale, c.plaintext, c.undecryptable)),
            str(c.unavailable),
        )
    per_resource.add_row(
        "all",
        *(
            str(n)
            for n in (
                report.total - report.no_resource,
                report.current,
                report.stale,
                report.plaintext,
                report.undecryptable,
                report.unavailable,
            )
        ),
        style="bold",
    )
    console.print(per_resource)
    per_key = Table(title="providers and keys")
    for column in ("provider", "key name", "key_id", "values"):
        per_key.add_column(column, justify="right" if column == "values" else "left")
    data = report.to_json_dict()
    providers = data["providers"]
    assert isinstance(providers, list)
    for entry in providers:
        assert isinstance(entry, dict)
        per_key.add_row(
            Text(str(entry["provider"])),
            Text(str(entry["key_name"] or "-")),
            Text(str(entry["key_id"] or "-")),
            str(entry["count"]),
        )
    console.print(per_key)
    if report.no_resource:
        console.print(f"{report.no_resource} keys name no resource and were not opened")
    for title, keys in (
        ("undecryptable", report.undecryptable_keys),
        ("unavailable", report.unavailable_keys),
    ):
        if keys:
            console.print(f"{title} (first {len(keys)}):")
            for key in keys:
                console.print(f"  {key}", markup=False, highlight=False)
    if report.first_problem:
        console.print(f"first unavailable error: {report.first_problem}", markup=False)
