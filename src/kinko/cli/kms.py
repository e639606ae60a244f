"""`kinko kms`: run a KMS v2 plugin, or ask a plugin for its status.

``kinko kms serve`` wraps seeds with exactly one backend: a local key file (``--key-file``), a
root key of the key service run in-process on a data folder (``--key … --data-dir …``), or a
root key of a Key Protect API service over HTTPS (``--key … --url …``). ``--metrics-listen``
adds Prometheus metrics for any of them.

A thin shell over ``kinko.kms``: errors propagate as :class:`~kinko.errors.KinkoError` and the
``kinko`` group maps them to exit codes (``kinko.cli.errors``).
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import click

from kinko.cli.options import open_hsm
from kinko.errors import InvalidArgument, Unauthorized
from kinko.hsm.port import Hsm
from kinko.kms.client import DEFAULT_TIMEOUT, GrpcKmsV2Api
from kinko.kms.metrics import InstrumentedKmsV2Api, KmsMetrics, serve_metrics
from kinko.kms.plugin import LocalKeyPlugin, generate_key_file, load_key_file
from kinko.kms.port import KmsV2Api
from kinko.kms.rootkey import RootKeyAccess, RootKeyPlugin, ServiceRootKeys
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
    default=None,
    help="Backend 1: a local key. 32 raw bytes or their base64; must not be readable by "
    "group or others.",
)
@click.option("--create-key", is_flag=True, help="Create the key file (mode 0600) if missing.")
@click.option(
    "--key",
    "key_ref",
    default=None,
    help="Backends 2 and 3: the root key (id or alias) of the key service to wrap seeds with.",
)
@click.option(
    "--retired-key",
    "retired_keys",
    multiple=True,
    help="A root key the plugin moved away from: Decrypt still accepts data written under it. "
    "Repeat for several.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Backend 2: run the key service in-process on this data folder (kinko.db, keystore/, "
    "audit.log).",
)
@click.option(
    "--url",
    default=None,
    help="Backend 3: a Key Protect API v2 service (kinko keys serve, or IBM Key Protect).",
)
@click.option(
    "--ca",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="With --url: the PEM CA that signed the service's certificate.",
)
@click.option("--instance", default=None, help="The key service instance (bluemix-instance).")
@click.option(
    "--token",
    default=None,
    envvar="KINKO_TOKEN",
    show_envvar=True,
    help="The plugin's bearer token (Reader role); prefer --token-file or the variable.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A file whose first line is the bearer token.",
)
@click.option(
    "--hsm",
    "hsm_kind",
    type=click.Choice(["soft", "pkcs11"]),
    default="soft",
    show_default=True,
    help="With --data-dir: where root keys live, the soft keystore in the data folder (NOT "
    "HSM-grade) or a PKCS#11 token (as for kinko keys serve).",
)
@click.option("--pkcs11-module", default=None, help="With --hsm pkcs11: the PKCS#11 library.")
@click.option("--token-label", default=None, help="With --hsm pkcs11: the token's label.")
@click.option(
    "--pin-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="With --hsm pkcs11: a file whose first line is the user PIN.",
)
@click.option(
    "--pin-env",
    default=None,
    help="With --hsm pkcs11: the environment variable holding the user PIN.",
)
@click.option(
    "--metrics-listen",
    default=None,
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9464).",
)
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
    endpoint: str,
    key_file: Path | None,
    create_key: bool,
    key_ref: str | None,
    retired_keys: tuple[str, ...],
    data_dir: Path | None,
    hsm_kind: str,
    url: str | None,
    ca: Path | None,
    instance: str | None,
    token: str | None,
    token_file: Path | None,
    pkcs11_module: str | None,
    token_label: str | None,
    pin_file: Path | None,
    pin_env: str | None,
    metrics_listen: str | None,
    status_version: str,
    grace: float,
) -> None:
    """Serve the KMS v2 API until SIGTERM, wrapping seeds with one of three backends:

    \b
      --key-file FILE                         a local AES-256 key
      --key ID --data-dir DIR                 a root key of the in-process key service
      --key ID --url URL                      a root key of a Key Protect API service

    With a root key, seeds are sealed under local KEKs that the root key wraps (one
    key service wrap per KEK, audited), and every call first checks the root key's
    state: a suspended, expired or deleted key is refused at once (within 1 s when
    the change is made by another process or the key service is remote).
    """
    chosen = [
        name
        for name, given in (("--key-file", key_file), ("--data-dir", data_dir), ("--url", url))
        if given is not None
    ]
    if len(chosen) != 1:
        raise click.UsageError(
            "choose exactly one backend: --key-file FILE, --key ID --data-dir DIR, or "
            f"--key ID --url URL (got {', '.join(chosen) or 'none'})"
        )
    pkcs11_given = any(v is not None for v in (pkcs11_module, token_label, pin_file, pin_env))
    if (pkcs11_given or hsm_kind == "pkcs11") and data_dir is None:
        raise click.UsageError("--hsm pkcs11, its module, token label and PIN need --data-dir")
    if pkcs11_given and hsm_kind != "pkcs11":
        raise click.UsageError("--pkcs11-module, --token-label and the PIN need --hsm pkcs11")
    if ca is not None and url is None:
        raise click.UsageError("--ca needs --url")
    with contextlib.ExitStack() as stack:
        if key_file is not None:
            if key_ref is not None or retired_keys or instance or token or token_file:
                raise click.UsageError(
                    "--key-file takes no --key, --retired-key, --instance or token"
                )
            plugin: KmsV2Api = _local_plugin(key_file, create_key, status_version)
            what = "a local key file"
        else:
            if key_ref is None or instance is None:
                raise click.UsageError(f"{chosen[0]} needs --key and --instance")
            if create_key:
                raise click.UsageError("--create-key goes with --key-file")
            bearer = _token(token, token_file)
            if data_dir is not None:
                hsm: Hsm | None = None
                if hsm_kind == "pkcs11":
                    hsm = stack.enter_context(
                        _pkcs11(data_dir, pkcs11_module, token_label, pin_file, pin_env)
                    )
                access: RootKeyAccess = _in_process(stack, data_dir, hsm, bearer, instance)
                what = f"root key {key_ref} of the key service in {data_dir}"
            else:
                assert url is not None
                access = _remote(stack, url, bearer, instance, ca)
                what = f"root key {key_ref} of the key service at {url}"
            plugin = RootKeyPlugin(
                access, key_ref, retired_key_refs=retired_keys, version=status_version
            )
        first = plugin.status()
        api = plugin
        if metrics_listen is not None:
            metrics = KmsMetrics()
            api = InstrumentedKmsV2Api(plugin, metrics)
            metrics.observe_status(first)
            metrics_server = serve_metrics(metrics.registry, metrics_listen)
            stack.callback(metrics_server.server_close)
            stack.callback(metrics_server.shutdown)
        server = KmsV2Server(api, endpoint)

        def ready() -> None:
            click.echo(
                f"kinko kms: listening on {endpoint} with key_id {first.key_id} "
                f"({what}; status version {status_version}; healthz {first.healthz})"
            )
            if metrics_listen is not None:
                click.echo(f"kinko kms: metrics at http://{metrics_listen}/metrics")

        serve_forever(server, grace=grace, on_ready=ready)


def _local_plugin(key_file: Path, create_key: bool, status_version: str) -> LocalKeyPlugin:
    if create_key and not key_file.exists():
        key = generate_key_file(key_file)
    else:
        key = load_key_file(key_file)
    return LocalKeyPlugin(key, version=status_version)


def _token(token: str | None, token_file: Path | None) -> str:
    """The bearer token from --token (or $KINKO_TOKEN) or --token-file; exactly one."""
    if (token is None) == (token_file is None):
        raise click.UsageError("give the bearer token with exactly one of --token or --token-file")
    if token is not None:
        return token
    assert token_file is not None
    try:
        lines = token_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read the token file {token_file}: {exc}") from exc
    text = lines[0].strip() if lines else ""
    if not text:
        raise InvalidArgument(f"expected a bearer token in {token_file}, got an empty file")
    return text


def _pkcs11(
    data_dir: Path,
    module: str | None,
    label: str | None,
    pin_file: Path | None,
    pin_env: str | None,
) -> contextlib.AbstractContextManager[Hsm]:
    # A missing module or label is a usage error here (exit 2), checked before anything opens.
    if not module or not label:
        raise click.UsageError("--hsm pkcs11 needs --pkcs11-module and --token-label")
    return open_hsm("pkcs11", data_dir, module, label, pin_file, pin_env)


def _in_process(
    stack: contextlib.ExitStack, data_dir: Path, hsm: Hsm | None, token: str, instance: str
) -> RootKeyAccess:
    """The key service of ``data_dir``, acting as the token's principal (audited by name)."""
    from kinko.keys.deployment import open_deployment

    deployment = stack.enter_context(open_deployment(data_dir, hsm=hsm))
    principal = deployment.service.authenticate(token, instance=instance)
    if principal.instance != instance:
        raise Unauthorized(f"the token is not for instance {instance}")
    return ServiceRootKeys(deployment.service, principal, instance)


def _remote(
    stack: contextlib.ExitStack, url: str, token: str, instance: str, ca: Path | None
) -> RootKeyAccess:
    from kinko.keys.client import KeyProtectClient
    from kinko.kms.rootkey_remote import RemoteRootKeys

    client = stack.enter_context(KeyProtectClient(url, token=token, instance=instance, ca=ca))
    return RemoteRootKeys(client)


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
