"""`kinko up`: all of kinko in one process, on embedded defaults.

A thin shell over :class:`kinko.up.Kinko`: it picks the data folder (``--data-dir``, else
``$KINKO_HOME``, else ``./.kinko``), opens the HSM the options name, starts everything, prints
where it listens and what to type next, and stops everything on SIGTERM or SIGINT (exit 0).
Errors propagate as :class:`~kinko.errors.KinkoError`; the ``kinko`` group maps them to exit
codes.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import click

from kinko.api.server import parse_listen
from kinko.cli.options import etcd_store_options, hsm_options, open_hsm
from kinko.errors import InvalidArgument, UnavailableError
from kinko.keys.deployment import KEYSTORE_DIR
from kinko.up import DEFAULT_LISTEN, Kinko, UpOptions, data_dir_from, make_data_dir


@click.command("up")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="kinko's folder: store, keystore, audit log, TLS files, tokens, kubeconfig "
    "(default: $KINKO_HOME, else ./.kinko).",
)
@click.option(
    "--listen",
    default=f"{DEFAULT_LISTEN.host}:{DEFAULT_LISTEN.port}",
    show_default=True,
    help="HOST:PORT of the one HTTPS port for both APIs (port 0 picks a free one).",
)
@click.option(
    "--no-encryption",
    is_flag=True,
    help="First start only: store Secrets and ConfigMaps as plaintext (identity) until "
    "`kinko cluster kms enable --key kinko-cluster`; refused once the folder has an "
    "EncryptionConfiguration.",
)
@etcd_store_options
@hsm_options
def up(
    data_dir: Path | None,
    listen: str,
    no_encryption: bool,
    etcd_endpoints: tuple[str, ...],
    etcd_cacert: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    hsm_kind: str,
    pkcs11_module: str | None,
    token_label: str | None,
    pin_file: Path | None,
    pin_env: str | None,
) -> None:
    """Run the key service, its KMS v2 plugin and the cluster API until SIGTERM or Ctrl-C.

    \b
    One HTTPS port serves both APIs: /api/v2/... is the Key Protect API, everything else
    the Kubernetes API for Secrets and ConfigMaps, stored encrypted through the KMS v2
    plugin. The first start creates an admin token, a root key and an EncryptionConfiguration
    in the data folder; later starts reuse them.
    """
    address = parse_listen(listen)
    folder = data_dir_from(data_dir, os.environ)
    with contextlib.ExitStack() as stack:
        stopping = stack.enter_context(_stop_signals())
        # Before the soft keystore makes its own folder inside: the data folder is 0700.
        make_data_dir(folder)
        hsm = stack.enter_context(
            open_hsm(hsm_kind, folder, pkcs11_module, token_label, pin_file, pin_env)
        )
        if hsm_kind == "soft":
            click.echo(
                "kinko up: WARNING: root keys are in the soft keystore under "
                f"{folder.absolute() / KEYSTORE_DIR}, which is NOT HSM-grade (a file on this "
                "machine; use --hsm pkcs11 for an HSM)",
                err=True,
            )
        elif not hsm.hsm_grade:
            click.echo(f"kinko up: WARNING: {hsm.description} is NOT HSM-grade", err=True)
        options = UpOptions(
            data_dir=folder,
            listen=address,
            etcd_endpoints=etcd_endpoints,
            etcd_cacert=etcd_cacert,
            etcd_cert=etcd_cert,
            etcd_key=etcd_key,
            hsm=hsm,
            log_level="warning",
            no_encryption=no_encryption,
        )
        kinko = stack.enter_context(Kinko(options))
        click.echo(banner(kinko, folder))
        # A bounded wait lets the interpreter run the signal handler promptly.
        while not stopping.wait(1.0):
            if not kinko.serving:
                raise UnavailableError("kinko up: the HTTPS server stopped unexpectedly")
        click.echo("kinko up: stopping", err=True)
    click.echo("kinko up: stopped", err=True)


def banner(kinko: Kinko, folder: Path) -> str:
    """What ``kinko up`` prints once it serves: where, the admin token, the files, and three
    commands to try (with ``--data-dir`` as the user wrote it)."""
    e = kinko.endpoints
    dir_arg = shlex.quote(str(folder))
    kubeconfig_arg = shlex.quote(str(folder / e.kubeconfig.name))
    return "\n".join(
        [
            f"kinko is up on {e.cluster_api}",
            f"  cluster API     {e.cluster_api}  (Kubernetes core/v1 Secrets and ConfigMaps)",
            f"  key service     {e.key_service}/api/v2  (Key Protect API v2; "
            f"bluemix-instance: {e.instance})",
            f"  root key        {e.root_key} (alias kinko-cluster)",
            f"  KMS v2 plugin   {e.kms_plugin_socket}",
            f"  encryption      {kinko.encryption_config}{_plaintext_note(kinko)}",
            f"  store           {kinko.store_description}",
            f"  keys            {kinko.hsm.description}",
            f"  admin token     {kinko.admin_token}",
            f"                  (in {e.admin_token_file})",
            f"  kubeconfig      {e.kubeconfig}",
            f"  CA              {e.ca_file}",
            f"  endpoints       {kinko.data_dir / 'endpoints.json'}",
            "",
            "Next:",
            "  kinko secret create generic demo --from-literal password=s3cret "
            f"--data-dir {dir_arg}",
            f"  kinko secret list --data-dir {dir_arg}",
            f"  kubectl --kubeconfig {kubeconfig_arg} get secrets",
            "",
            "Stop with Ctrl-C (or SIGTERM).",
        ]
    )


def _plaintext_note(kinko: Kinko) -> str:
    """A note when Secrets are stored as plaintext (``--no-encryption``), else nothing."""
    if kinko.encryption.chain_for("secrets").first.prefix:
        return ""
    return (
        "\n                  (off: Secrets are stored as plaintext until "
        "`kinko cluster kms enable --key kinko-cluster`)"
    )


@contextlib.contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT, installed before anything starts so that a signal
    during start-up is a clean stop too; the previous handlers come back on exit."""
    if threading.current_thread() is not threading.main_thread():
        raise InvalidArgument("kinko up: expected to run on the main thread")
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stopping
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
