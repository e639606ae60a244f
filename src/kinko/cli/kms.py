"""`kinko kms`: run a KMS v2 plugin backed by a local key file, or ask a plugin for its status.

A thin shell over ``kinko.kms``: errors propagate as :class:`~kinko.errors.KinkoError` and the
``kinko`` group maps them to exit codes (``kinko.cli.errors``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from kinko.kms.client import DEFAULT_TIMEOUT, GrpcKmsV2Api
from kinko.kms.plugin import LocalKeyPlugin, generate_key_file, load_key_file
from kinko.kms.server import KmsV2Server, serve_forever

_DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|s|m)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    """A positive duration: ``3s``, ``500ms``, ``1m`` or plain seconds (``2.5``)."""
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        raise click.BadParameter(f"expected a duration such as 3s, 500ms or 1m, got {value!r}")
    seconds = float(match["value"]) * _UNIT_SECONDS[match["unit"]]
    if seconds <= 0:
        raise click.BadParameter(f"expected a positive duration, got {value!r}")
    return seconds


@click.group()
def kms() -> None:
    """Run a KMS v2 plugin on a unix socket, or query one."""


@kms.command()
@click.option(
    "--socket",
    "endpoint",
    required=True,
    help="Where to listen: unix:///path/to/kms.sock, or unix:///@name for an abstract socket.",
)
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="32 raw bytes or their base64; must not be readable by group or others.",
)
@click.option("--create-key", is_flag=True, help="Create the key file (mode 0600) if missing.")
@click.option(
    "--status-version",
    type=click.Choice(["v2", "v2beta1"]),
    default="v2",
    show_default=True,
    help="The version Status reports; v2beta1 for kube-apiserver 1.27 and 1.28.",
)
@click.option(
    "--grace",
    default="5s",
    callback=_duration,
    show_default=True,
    help="How long running calls may finish after SIGTERM.",
)
def serve(
    endpoint: str, key_file: Path, create_key: bool, status_version: str, grace: float
) -> None:
    """Serve the KMS v2 API, wrapping seeds with a local AES-256 key, until SIGTERM."""
    if create_key and not key_file.exists():
        key = generate_key_file(key_file)
    else:
        key = load_key_file(key_file)
    plugin = LocalKeyPlugin(key, version=status_version)
    server = KmsV2Server(plugin, endpoint)

    def ready() -> None:
        click.echo(
            f"kinko kms: listening on {endpoint} with key_id {plugin.key_id} "
            f"(status version {status_version})"
        )

    serve_forever(server, grace=grace, on_ready=ready)


@kms.command()
@click.option("--socket", "endpoint", required=True, help="The plugin's unix:// endpoint.")
@click.option(
    "--timeout",
    default=f"{DEFAULT_TIMEOUT:g}s",
    callback=_duration,
    show_default=True,
    help="Deadline of the Status call.",
)
def status(endpoint: str, timeout: float) -> None:
    """Call Status once and print version, healthz and key_id as JSON."""
    with GrpcKmsV2Api(endpoint, timeout=timeout) as api:
        result = api.status()
    click.echo(
        json.dumps({"version": result.version, "healthz": result.healthz, "key_id": result.key_id})
    )
