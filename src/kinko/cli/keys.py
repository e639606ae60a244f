"""`kinko keys serve`: the Key Protect-compatible key service over HTTPS.

Bearer tokens come from ``kinko token create --data-dir DIR`` (same store file). A thin shell
over ``kinko.keys`` and ``kinko.api``: it opens the store (SQLite in the data
folder, or etcd), the HSM (the soft keystore in the data folder, or a PKCS#11 token), the
audit log, and runs the REST API over HTTPS until SIGTERM. Errors propagate as
:class:`~kinko.errors.KinkoError`; the ``kinko`` group maps them to exit codes.

Data folder layout (created 0700)::

    kinko.db         the SQLite store (unless --etcd-endpoints; shared with ``kinko token``)
    keystore/        the soft keystore (unless --hsm pkcs11)
    audit.log        one JSON line per key service action
    tls/             the generated CA and server certificate (unless --tls-cert/--tls-key)
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path

import click
import uvicorn

from kinko.api.keyprotect import DEFAULT_MAX_BODY, create_keyprotect_app
from kinko.api.server import Periodic, TlsConfig, bound_port, parse_listen, serve
from kinko.api.tls import DEFAULT_NAMES, ensure_server_tls
from kinko.cli.keys_client import add_client_commands
from kinko.cli.options import etcd_store_options, hsm_options, open_hsm
from kinko.errors import InvalidArgument
from kinko.keys.audit import FileAuditSink, SyncMode
from kinko.keys.deployment import AUDIT_FILE, KEYSTORE_DIR, StoreOptions, open_store
from kinko.keys.service import KeyService

_WILDCARDS = ("0.0.0.0", "::")


@click.group()
def keys() -> None:
    """The key service: serve it (IBM Key Protect API v2 over HTTPS), or manage its keys.

    Tokens for it come from ``kinko token create``.
    """


add_client_commands(keys)


# --- shared options ----------------------------------------------------------------------


def _data_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


_data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The key service's folder: SQLite store, soft keystore, audit log, TLS files.",
)
# --- serve ---------------------------------------------------------------------------------


@keys.command("serve")
@_data_dir_option
@click.option(
    "--listen",
    default="127.0.0.1:8443",
    show_default=True,
    help="HOST:PORT to listen on ([::1]:8443 for IPv6; port 0 picks a free one).",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), help="PEM chain.")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="PEM key.")
@click.option(
    "--insecure-http",
    is_flag=True,
    help="Serve plain HTTP (refused unless --listen is a loopback address).",
)
@etcd_store_options
@hsm_options
@click.option(
    "--max-body",
    type=click.IntRange(min=1024),
    default=DEFAULT_MAX_BODY,
    show_default=True,
    help="Largest request body accepted, in bytes (larger: 413).",
)
@click.option(
    "--scheduler-interval",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Seconds between runs of the rotation, expiry and purge scheduler.",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=1.0),
    default=10.0,
    show_default=True,
    help="Seconds in-flight requests may take to finish after SIGTERM.",
)
@click.option(
    "--audit-sync",
    type=click.Choice(["interval", "always"]),
    default="interval",
    show_default=True,
    help="When audit records reach the disk: fsync every 50 ms (interval) or per record "
    "(always). Either way a record is in the file before the request is answered.",
)
@click.option("--echo-route", is_flag=True, hidden=True, help="Serve POST /api/v2/_echo.")
def serve_command(
    data_dir: Path,
    listen: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure_http: bool,
    etcd_endpoints: tuple[str, ...],
    etcd_cacert: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    hsm_kind: str,
    pkcs11_module: str | None,
    token_label: str | None,
    pin_file: Path | None,
    pin_env: str | None,
    max_body: int,
    scheduler_interval: float,
    grace: float,
    audit_sync: SyncMode,
    echo_route: bool,
) -> None:
    """Serve IBM Key Protect API v2 over HTTPS until SIGTERM.

    On first start a CA and a server certificate are generated under DATA_DIR/tls (clients
    trust DATA_DIR/tls/ca.crt), unless --tls-cert and --tls-key are given.
    """
    address = parse_listen(listen)
    if insecure_http and not address.is_loopback:
        raise InvalidArgument(
            f"refusing --insecure-http on {address.host}: plain HTTP is only allowed on a "
            "loopback address (127.0.0.1, ::1, localhost)"
        )
    if insecure_http and (tls_cert or tls_key):
        raise InvalidArgument("--insecure-http cannot be combined with --tls-cert/--tls-key")
    if (tls_cert is None) != (tls_key is None):
        raise InvalidArgument("--tls-cert and --tls-key go together")
    data_dir = _data_dir(data_dir)
    store_options = StoreOptions(data_dir, etcd_endpoints, etcd_cacert, etcd_cert, etcd_key)
    with contextlib.ExitStack() as stack:
        store, store_text = stack.enter_context(open_store(store_options))
        hsm = stack.enter_context(
            open_hsm(hsm_kind, data_dir, pkcs11_module, token_label, pin_file, pin_env)
        )
        audit = stack.enter_context(FileAuditSink(data_dir / AUDIT_FILE, sync=audit_sync))
        service = KeyService(store, hsm, audit=audit, clock=_utc_now, rng=os.urandom)
        app = create_keyprotect_app(service, max_body=max_body, echo=echo_route)
        tls = _tls(data_dir, address.host, tls_cert, tls_key, insecure_http)
        scheme = "http" if tls is None else "https"
        scheduler = Periodic(
            service.run_scheduled, interval=scheduler_interval, name="kinko-keys-scheduler"
        )

        if hsm_kind == "soft":
            click.echo(
                "kinko keys: WARNING: root keys are in the soft keystore under "
                f"{data_dir / KEYSTORE_DIR}, which is NOT HSM-grade (a file on this machine; "
                "use --hsm pkcs11 for an HSM)",
                err=True,
            )
        elif not hsm.hsm_grade:
            click.echo(
                f"kinko keys: WARNING: {hsm.description} is NOT HSM-grade (software keys)",
                err=True,
            )
        if tls is not None and tls_cert is None:
            click.echo(f"kinko keys: clients trust {data_dir / 'tls' / 'ca.crt'}", err=True)

        def started(server: uvicorn.Server) -> None:
            port = bound_port(server)
            grade = "HSM" if hsm.hsm_grade else "NOT HSM-grade"
            click.echo(
                f"kinko keys: serving Key Protect API v2 on {scheme}://{address.url_host}:{port} "
                f"(store: {store_text}; keys: {hsm.description}, {grade}; audit: {audit.path})",
                err=True,
            )
            scheduler.start()

        try:
            serve(app, address, tls=tls, grace=grace, on_started=started)
        finally:
            scheduler.stop()
    click.echo("kinko keys: stopped", err=True)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _tls(
    data_dir: Path,
    host: str,
    cert: Path | None,
    key: Path | None,
    insecure_http: bool,
) -> TlsConfig | None:
    if insecure_http:
        return None
    if cert is not None and key is not None:
        return TlsConfig(cert, key)
    names = () if host in DEFAULT_NAMES or host in _WILDCARDS else (host,)
    files = ensure_server_tls(data_dir, names=names)
    return TlsConfig(files.cert, files.key)
