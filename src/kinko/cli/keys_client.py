"""`kinko keys …` operator commands against a running key service (Key Protect API v2).

A thin shell over :class:`kinko.keys.client.KeyProtectClient`: each command parses its
options, makes one client call (two for a secure import), and prints a rich table or JSON
(``-o json``). Errors propagate as :class:`~kinko.errors.KinkoError`; the ``kinko`` group maps
them to exit codes (``kinko.cli.errors``), so a remote 409 ``PROTECTED_RESOURCE_ERR`` exits
like a local DeletionRefused.

Every command takes the connection options: ``--url`` (``KINKO_URL``, default
``https://127.0.0.1:8443``), ``--token`` (``KINKO_TOKEN``) or ``--token-file``, ``--instance``
(``KINKO_INSTANCE``), ``--ca FILE`` or ``--data-dir DIR`` (``KINKO_DATA_DIR``; trusts
``DIR/tls/ca.crt``, the CA ``kinko keys serve`` generates), ``--key-ring``
(``KINKO_KEY_RING``), ``--timeout`` and ``-o table|json``.

The data folder of a running ``kinko up`` (``--data-dir DIR``, ``KINKO_DATA_DIR``, else
``KINKO_HOME``) holds an ``endpoints.json`` (:mod:`kinko.cluster.endpoints`); then it alone is
enough: the URL defaults to its ``keyService``, the instance to its ``instance``, the token to
its admin token file and the CA to its ``caFile``, each only where no option or environment
variable gives one. A folder without ``endpoints.json`` (``kinko keys serve``'s) is used as
above, and ``KINKO_HOME`` is then ignored.

Invariants:

- Key material and plaintext never reach the terminal unless a flag asks for it
  (``--show-plaintext``, ``--show-payload``, ``--stdout``). Otherwise they go only to a file
  created here with mode 0600 that did not exist before (``--out``, ``--payload-out``);
  a file is never overwritten.
- Text that came from the service (names, aliases, descriptions, messages) is printed as
  text, never as rich markup, and without control characters.
- The bearer token is never printed; ``--token-file`` keeps it out of the process list.
- The admin token of a data folder is only sent to that folder's own ``keyService``: with a
  ``--url`` (or ``KINKO_URL``) naming another service, ``--token`` or ``--token-file`` is
  required.

The module exposes :data:`CLIENT_COMMANDS` and :func:`add_client_commands`, which attach the
commands to the ``kinko keys`` group. Tests replace how the client is built by passing a
:class:`ClientHook` as the click context object.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kinko.cluster.endpoints import (
    ENDPOINTS_FILE,
    Endpoints,
    read_admin_token,
    read_endpoints,
)
from kinko.errors import InvalidArgument
from kinko.keys.client import (
    DEFAULT_TIMEOUT,
    KeyProtectClient,
    KeyResource,
    seal_for_import,
)
from kinko.keys.model import InstancePolicies, KeyState, RotationPolicy
from kinko.keys.results import KeyPolicies, VersionRef

DEFAULT_URL: Final = "https://127.0.0.1:8443"
#: Width of tables when stdout is not a terminal (so ids and CRNs are never cut in pipes).
PIPE_WIDTH: Final = 200

_F = Callable[..., Any]

_STATE_NAMES: Final = {s.name.lower(): s for s in KeyState}


# --------------------------------------------------------------------------- connection


@dataclass(frozen=True, slots=True)
class Connection:
    """Where and as whom the commands talk to the key service."""

    url: str
    token: str = field(repr=False)  # a bearer token: never shown
    instance: str
    ca: Path | None = None
    key_ring: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    def __repr__(self) -> str:
        return f"Connection(url={self.url!r}, instance={self.instance!r})"


ClientFactory = Callable[[Connection], KeyProtectClient]


@dataclass(frozen=True, slots=True)
class ClientHook:
    """The click context object that replaces how commands build their client (tests)."""

    factory: ClientFactory


def _default_client(conn: Connection) -> KeyProtectClient:
    return KeyProtectClient(
        conn.url,
        token=conn.token,
        instance=conn.instance,
        ca=conn.ca,
        key_ring=conn.key_ring,
        timeout=conn.timeout,
    )


def _resolve_ca(ca: Path | None, data_dir: Path | None) -> Path | None:
    if ca is not None:
        return ca
    if data_dir is None:
        return None
    path = data_dir / "tls" / "ca.crt"
    if not path.is_file():
        raise InvalidArgument(
            f"no CA certificate at {path}: start `kinko keys serve --data-dir {data_dir}` "
            "once, or pass --ca FILE"
        )
    return path


def _resolve_token(token: str | None, token_file: Path | None) -> str:
    if token_file is not None:
        text = _read_text(token_file).strip()
        if not text:
            raise click.UsageError(f"the token file {token_file} is empty")
        return text
    if not token:
        raise click.UsageError(
            "no bearer token: pass --token-file FILE, --token, KINKO_TOKEN, or the --data-dir "
            "of a running kinko up"
        )
    return token


def _kinko_up(data_dir: Path | None) -> tuple[Path, Endpoints] | None:
    """The folder of a running ``kinko up`` and its endpoints.json: ``data_dir``
    (``--data-dir`` or ``KINKO_DATA_DIR``), else ``KINKO_HOME``; None when that folder has no
    endpoints.json.

    Raises InvalidArgument (an endpoints.json that cannot be read or lacks a field).
    """
    folder = data_dir
    if folder is None:
        home = os.environ.get("KINKO_HOME")
        folder = Path(home) if home else None
    if folder is None or not (folder / ENDPOINTS_FILE).is_file():
        return None
    return folder, read_endpoints(folder)


def _service_identity(url: str) -> tuple[str, str, int, str] | None:
    """(scheme, host, port, path) of a key service base URL, or None if it is not one. Case
    in scheme and host, a default port and a trailing slash do not make another service."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return parts.scheme, parts.hostname.lower(), port, parts.path.rstrip("/")


def _same_service(url: str, own: str) -> bool:
    given = _service_identity(url)
    return given is not None and given == _service_identity(own)


def _resolve_connection(
    *,
    url: str | None,
    token: str | None,
    token_file: Path | None,
    instance: str | None,
    data_dir: Path | None,
    ca: Path | None,
    key_ring: str | None,
    timeout: float,
) -> Connection:
    """The connection the options describe (see the module docstring).

    Raises click.UsageError (no token or instance; a --url other than the data folder's key
    service without a token of its own), InvalidArgument (a bad endpoints.json, an unreadable
    token file, no CA certificate where one is expected).
    """
    url = url or None  # An empty KINKO_URL names no service.
    explicit_token = bool(token) or token_file is not None
    up = _kinko_up(data_dir)
    if up is not None:
        folder, endpoints = up
        if url is None or _same_service(url, endpoints.key_service):
            if ca is None and not endpoints.ca_file.is_file():
                raise InvalidArgument(
                    f"no CA certificate at {endpoints.ca_file} (caFile of "
                    f"{folder / ENDPOINTS_FILE}): pass --ca FILE"
                )
            return Connection(
                url=url or endpoints.key_service,
                token=(
                    _resolve_token(token, token_file)
                    if explicit_token
                    else read_admin_token(endpoints)
                ),
                instance=instance or endpoints.instance,
                ca=ca or endpoints.ca_file,
                key_ring=key_ring,
                timeout=timeout,
            )
        if not explicit_token:
            # The folder's admin token only ever goes to the key service the folder names.
            raise click.UsageError(
                f"--url {url} is not the key service of {folder} ({endpoints.key_service}): "
                "pass --token-file FILE or --token for it; the data folder's admin token is "
                "only sent to its own key service"
            )
    if not instance:
        raise click.UsageError(
            "no instance id: pass --instance ID, KINKO_INSTANCE, or the --data-dir of a "
            "running kinko up"
        )
    return Connection(
        url=url or DEFAULT_URL,
        token=_resolve_token(token, token_file),
        instance=instance,
        ca=_resolve_ca(ca, data_dir),
        key_ring=key_ring,
        timeout=timeout,
    )


_CONNECTION_OPTIONS: Final = (
    click.option(
        "--url",
        envvar="KINKO_URL",
        help=(
            "Base URL of the key service (env KINKO_URL) [default: the data folder's keyService, "
            f"else {DEFAULT_URL}]."
        ),
    ),
    click.option(
        "--token",
        envvar="KINKO_TOKEN",
        help="Bearer token (env KINKO_TOKEN) [default: the data folder's admin token].",
    ),
    click.option(
        "--token-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="File holding the bearer token (keeps it out of the process list).",
    ),
    click.option(
        "--instance",
        envvar="KINKO_INSTANCE",
        help=(
            "Instance id, sent as bluemix-instance (env KINKO_INSTANCE) [default: the data "
            "folder's]; required without a running kinko up's data folder."
        ),
    ),
    click.option(
        "--data-dir",
        envvar="KINKO_DATA_DIR",
        type=click.Path(file_okay=False, path_type=Path),
        help=(
            "kinko data folder (env KINKO_DATA_DIR, else KINKO_HOME). A running kinko up's "
            "(with endpoints.json) gives the URL, instance, admin token and CA; any other: "
            "trust its tls/ca.crt."
        ),
    ),
    click.option(
        "--ca",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="PEM CA bundle to verify the service with (default: the data folder's, else system).",
    ),
    click.option(
        "--key-ring",
        envvar="KINKO_KEY_RING",
        help="Key ring, sent as x-kms-key-ring (env KINKO_KEY_RING).",
    ),
    click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=DEFAULT_TIMEOUT,
        show_default=True,
        help="Seconds per request.",
    ),
    click.option(
        "-o",
        "--output",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="Output format.",
    ),
)


def _remote(fn: _F) -> _F:
    """Adds the connection options; calls ``fn(client=…, fmt=…, **its own options)``."""

    @functools.wraps(fn)
    def wrapper(
        *,
        url: str | None,
        token: str | None,
        token_file: Path | None,
        instance: str | None,
        data_dir: Path | None,
        ca: Path | None,
        key_ring: str | None,
        timeout: float,
        output: str,
        **kwargs: Any,
    ) -> Any:
        conn = _resolve_connection(
            url=url,
            token=token,
            token_file=token_file,
            instance=instance,
            data_dir=data_dir,
            ca=ca,
            key_ring=key_ring,
            timeout=timeout,
        )
        hook = click.get_current_context().find_object(ClientHook)
        factory = hook.factory if hook is not None else _default_client
        client = factory(conn)
        try:
            return fn(client=client, fmt=output, **kwargs)
        finally:
            client.close()

    for option in reversed(_CONNECTION_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


# --------------------------------------------------------------------------- output


def _console() -> Console:
    out = Console(file=sys.stdout)
    if not out.is_terminal:
        out = Console(file=sys.stdout, width=PIPE_WIDTH)
    return out


def _t(value: object) -> Text:
    """Service-provided text as rich Text: no markup, no control characters."""
    text = "" if value is None else str(value)
    return Text("".join(ch if ch.isprintable() else "?" for ch in text))


def _time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def state_label(state: KeyState) -> str:
    """A key state as word and number: ``Active (1)``."""
    return f"{state.label} ({int(state)})"


def _rotation_label(policy: RotationPolicy | None) -> str:
    if policy is None:
        return "-"
    if not policy.enabled:
        return "off"
    months = policy.interval_month
    return "on" if months is None else f"every {months} month{'s' if months != 1 else ''}"


def _jsonable(value: object) -> object:
    """Plain JSON for the CLI's values; fields declared ``repr=False`` (secrets) are left out."""
    if isinstance(value, IntEnum):
        return int(value)
    if isinstance(value, datetime):
        return _time(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value) if f.repr}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _key_json(key: KeyResource) -> dict[str, object]:
    doc = _jsonable(key)
    assert isinstance(doc, dict)
    doc["state_name"] = key.state.label
    return doc


def _echo_json(doc: object) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False))


def _keys_table(keys: Sequence[KeyResource], title: str | None = None) -> Table:
    table = Table(title=title)
    table.add_column("ID", no_wrap=True)
    table.add_column("NAME")
    table.add_column("STATE", no_wrap=True)
    table.add_column("TYPE", no_wrap=True)
    table.add_column("VERSION", no_wrap=True)
    table.add_column("ALIASES")
    table.add_column("RING", no_wrap=True)
    table.add_column("EXPIRES", no_wrap=True)
    for key in keys:
        table.add_row(
            _t(key.id),
            _t(key.name),
            state_label(key.state),
            "root" if key.is_root else "standard",
            _t(key.key_version.id[:8] if key.key_version else "-"),
            _t(", ".join(key.aliases) or "-"),
            _t(key.key_ring_id),
            _time(key.expiration_date),
        )
    return table


def _key_detail(key: KeyResource) -> Table:
    table = Table(show_header=False, title=_t(f"key {key.name}"))
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value")
    rows: list[tuple[str, object]] = [
        ("id", key.id),
        ("name", key.name),
        ("state", state_label(key.state)),
        ("type", "root key" if key.is_root else "standard key"),
        ("imported", "yes" if key.imported else "no"),
    ]
    if key.algorithm_type:
        rows.append(("algorithm", f"{key.algorithm_type}-{key.algorithm_bit_size or '?'}"))
    if key.description:
        rows.append(("description", key.description))
    rows += [
        ("key ring", key.key_ring_id),
        ("aliases", ", ".join(key.aliases) or "-"),
        ("crn", key.crn or "-"),
        ("created", f"{_time(key.creation_date)} by {key.created_by or '?'}"),
        ("last update", _time(key.last_update_date)),
        ("last rotated", _time(key.last_rotate_date)),
    ]
    if key.key_version is not None:
        rows.append(("version", f"{key.key_version.id} ({_time(key.key_version.creation_date)})"))
    rows += [("expires", _time(key.expiration_date)), ("rotation", _rotation_label(key.rotation))]
    dual = key.dual_auth_delete
    if dual is not None:
        label = "on" if dual.enabled else "off"
        if dual.key_set_for_deletion:
            label += f", set for deletion until {_time(dual.auth_expiration)}"
        rows.append(("dual authorization", label))
    if key.deleted:
        rows += [
            ("deleted", f"{_time(key.deletion_date)} by {key.deleted_by or '?'}"),
            ("restore until", _time(key.restore_expiration_date)),
            ("purge allowed from", _time(key.purge_allowed_from)),
            ("purge scheduled on", _time(key.purge_scheduled_on)),
        ]
    for name, value in rows:
        table.add_row(name, _t(value))
    return table


def _show_key(key: KeyResource, fmt: str) -> None:
    if fmt == "json":
        _echo_json(_key_json(key))
    else:
        _console().print(_key_detail(key))


def _done(fmt: str, action: str, key: str, sentence: str) -> None:
    if fmt == "json":
        _echo_json({"key": key, "action": action, "ok": True})
    else:
        click.echo(sentence)


# --------------------------------------------------------------------------- files


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None


def _read_text(path: Path) -> str:
    try:
        return _read_bytes(path).decode("ascii")
    except UnicodeDecodeError:
        raise InvalidArgument(f"{path} holds something other than ASCII text") from None


def _read_material(path: Path, *, b64: bool) -> bytes:
    data = _read_bytes(path)
    if not b64:
        return data
    try:
        return base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{path} does not hold standard base64 (--base64)") from None


@contextmanager
def _secret_file(path: Path) -> Iterator[int]:
    """A new file, mode 0600, created before the request so that a clash fails first; removed
    again if the command fails before writing it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidArgument(f"{path} exists; refusing to overwrite it") from None
    except OSError as exc:
        raise InvalidArgument(f"cannot create {path}: {exc.strerror}") from None
    ok = False
    try:
        yield fd
        ok = True
    finally:
        os.close(fd)
        if not ok:
            path.unlink(missing_ok=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_ciphertext(ciphertext: str | None, ciphertext_file: Path | None) -> str:
    if (ciphertext is None) == (ciphertext_file is None):
        raise click.UsageError("give exactly one of --ciphertext and --ciphertext-file")
    if ciphertext_file is not None:
        return _read_text(ciphertext_file).strip()
    assert ciphertext is not None
    return ciphertext.strip()


_ciphertext_options: Final = (
    click.option("--ciphertext", help="The ciphertext wrap returned."),
    click.option(
        "--ciphertext-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="File holding the ciphertext.",
    ),
    click.option(
        "--aad", multiple=True, help="Additional authenticated data, as at wrap (repeatable)."
    ),
)


def _with(options: Sequence[Callable[[_F], _F]]) -> Callable[[_F], _F]:
    def decorate(fn: _F) -> _F:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _rotation_choice(months: int | None, off: bool) -> RotationPolicy | None:
    if months is not None and off:
        raise click.UsageError("--rotation-months and --no-rotation exclude each other")
    if off:
        return RotationPolicy(enabled=False)
    if months is not None:
        return RotationPolicy(enabled=True, interval_month=months)
    return None


def _on_off(value: str | None) -> bool | None:
    return None if value is None else value == "on"


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"expected an RFC 3339 time such as 2030-01-01T00:00:00Z, got {value!r}"
        ) from None
    if moment.tzinfo is None:
        raise click.BadParameter("expected a time with a zone (Z or +hh:mm)")
    return moment


def _parse_states(values: Sequence[str]) -> list[int]:
    out: list[int] = []
    for value in values:
        for part in value.split(","):
            word = part.strip().lower()
            if word in _STATE_NAMES:
                out.append(int(_STATE_NAMES[word]))
            elif word in {"0", "1", "2", "3", "5"}:
                out.append(int(word))
            else:
                raise click.BadParameter(
                    "expected states among active, suspended, deactivated, destroyed "
                    f"(or 1, 2, 3, 5), got {part!r}"
                )
    return out


# --------------------------------------------------------------------------- keys


@click.command("create")
@click.argument("name")
@click.option("--standard", is_flag=True, help="A standard key (material readable) instead.")
@click.option(
    "--payload-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Import this key material instead of generating it (plain import).",
)
@click.option("--base64", "b64", is_flag=True, help="--payload-file holds base64 text.")
@click.option("--alias", "aliases", multiple=True, help="An alias for the key (up to 5).")
@click.option("--description", help="A description.")
@click.option("--expires", help="Expiration time, RFC 3339 (2030-01-01T00:00:00Z).")
@click.option(
    "--rotation-months",
    type=click.IntRange(1, 12),
    help="Rotate automatically every N months (root keys the service generates).",
)
@click.option("--dual-auth", is_flag=True, help="Require two users to delete the key.")
@_remote
def create(
    *,
    client: KeyProtectClient,
    fmt: str,
    name: str,
    standard: bool,
    payload_file: Path | None,
    b64: bool,
    aliases: tuple[str, ...],
    description: str | None,
    expires: str | None,
    rotation_months: int | None,
    dual_auth: bool,
) -> None:
    """Create a root key (or --standard key) NAME."""
    payload = None if payload_file is None else _read_material(payload_file, b64=b64)
    key = client.create_key(
        name,
        extractable=standard,
        payload=payload,
        aliases=aliases,
        description=description,
        expiration=_parse_time(expires),
        rotation=None if rotation_months is None else RotationPolicy(True, rotation_months),
        dual_auth=True if dual_auth else None,
    )
    _show_key(key, fmt)


@click.command("import")
@click.argument("name")
@click.option(
    "--payload-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The key material: 32 bytes for a root key.",
)
@click.option("--base64", "b64", is_flag=True, help="--payload-file holds base64 text.")
@click.option(
    "--secure",
    is_flag=True,
    help="Send the material encrypted to a fresh import token (RSA-OAEP-SHA256), root keys.",
)
@click.option("--standard", is_flag=True, help="Import a standard key (not with --secure).")
@click.option("--alias", "aliases", multiple=True, help="An alias for the key (up to 5).")
@click.option("--description", help="A description.")
@click.option("--expires", help="Expiration time, RFC 3339.")
@click.option("--dual-auth", is_flag=True, help="Require two users to delete the key.")
@_remote
def import_key(
    *,
    client: KeyProtectClient,
    fmt: str,
    name: str,
    payload_file: Path,
    b64: bool,
    secure: bool,
    standard: bool,
    aliases: tuple[str, ...],
    description: str | None,
    expires: str | None,
    dual_auth: bool,
) -> None:
    """Import key material as a new key NAME."""
    if secure and standard:
        raise click.UsageError("--secure imports root keys only; drop --standard")
    material = _read_material(payload_file, b64=b64)
    expiration = _parse_time(expires)
    if secure:
        client.create_import_token()
        sealed = seal_for_import(client.get_import_token(), material)
        key = client.create_key(
            name,
            secure=sealed,
            aliases=aliases,
            description=description,
            expiration=expiration,
            dual_auth=True if dual_auth else None,
        )
    else:
        key = client.create_key(
            name,
            extractable=standard,
            payload=material,
            aliases=aliases,
            description=description,
            expiration=expiration,
            dual_auth=True if dual_auth else None,
        )
    _show_key(key, fmt)


@click.command("list")
@click.option(
    "--state",
    "states",
    multiple=True,
    help="Only keys in these states: active, suspended, deactivated, destroyed (repeatable, "
    "or comma-separated). Default: all but destroyed.",
)
@click.option("--all", "all_states", is_flag=True, help="Keys in every state, destroyed too.")
@click.option("--root/--standard", "root", default=None, help="Only root or standard keys.")
@click.option("--limit", type=click.IntRange(1, 5000), default=200, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@_remote
def list_keys(
    *,
    client: KeyProtectClient,
    fmt: str,
    states: tuple[str, ...],
    all_states: bool,
    root: bool | None,
    limit: int,
    offset: int,
) -> None:
    """List the instance's keys."""
    wanted: list[int] | None = _parse_states(states) if states else None
    if all_states:
        if wanted is not None:
            raise click.UsageError("--all and --state exclude each other")
        wanted = [1, 2, 3, 5]
    page = client.list_keys(
        limit=limit,
        offset=offset,
        states=wanted,
        extractable=None if root is None else not root,
    )
    if fmt == "json":
        _echo_json({"keys": [_key_json(k) for k in page.keys], "total": page.total})
        return
    title = f"{len(page.keys)} key{'s' if len(page.keys) != 1 else ''}"
    if page.total is not None and page.total != len(page.keys):
        title += f" of {page.total}"
    _console().print(_keys_table(page.keys, title=title))


@click.command("get")
@click.argument("key")
@click.option(
    "--payload-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Standard keys: write the material to this new file (mode 0600).",
)
@click.option("--show-payload", is_flag=True, help="Standard keys: print the material (base64).")
@_remote
def get(
    *,
    client: KeyProtectClient,
    fmt: str,
    key: str,
    payload_out: Path | None,
    show_payload: bool,
) -> None:
    """Show KEY (id or alias). Material only with --payload-out or --show-payload."""
    if payload_out is None and not show_payload:
        _show_key(client.get_key_metadata(key), fmt)
        return
    if payload_out is not None:
        with _secret_file(payload_out) as fd:
            found = client.get_key(key)
            if found.payload is None:
                raise InvalidArgument(f"key {found.id} is a root key: its material never leaves")
            _write_all(fd, found.payload)
        click.echo(f"wrote {len(found.payload)} bytes of key material to {payload_out}", err=True)
    else:
        found = client.get_key(key)
        if found.payload is None:
            raise InvalidArgument(f"key {found.id} is a root key: its material never leaves")
    if show_payload:
        assert found.payload is not None
        if fmt == "json":
            doc = _key_json(found)
            doc["payload"] = base64.b64encode(found.payload).decode("ascii")
            _echo_json(doc)
        else:
            _show_key(found, fmt)
            click.echo(base64.b64encode(found.payload).decode("ascii"))
    else:
        _show_key(found, fmt)


@click.command("versions")
@click.argument("key")
@click.option("--all-states", is_flag=True, help="List versions of keys that are not Active, too.")
@_remote
def versions(*, client: KeyProtectClient, fmt: str, key: str, all_states: bool) -> None:
    """List KEY's versions, newest first."""
    found = client.versions(key, all_key_states=all_states)
    if fmt == "json":
        _echo_json({"versions": _jsonable(found.versions), "total": found.total})
        return
    _console().print(_versions_table(found.versions))


def _versions_table(items: Sequence[VersionRef]) -> Table:
    table = Table(title=f"{len(items)} version{'s' if len(items) != 1 else ''}")
    table.add_column("#", justify="right")
    table.add_column("VERSION ID", no_wrap=True)
    table.add_column("CREATED", no_wrap=True)
    for index, ref in enumerate(items):
        number = str(len(items) - index)
        table.add_row(
            number + (" (latest)" if index == 0 else ""), _t(ref.id), _time(ref.creation_date)
        )
    return table


# --------------------------------------------------------------------------- wrap


@click.command("wrap")
@click.argument("key")
@click.option(
    "--plaintext-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Wrap the bytes of this file (a DEK). Without it the service generates a DEK.",
)
@click.option("--aad", multiple=True, help="Additional authenticated data (repeatable).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the generated DEK to this new file (mode 0600).",
)
@click.option(
    "--show-plaintext",
    is_flag=True,
    help="Also print the generated DEK (base64) on stdout, after the ciphertext.",
)
@_remote
def wrap(
    *,
    client: KeyProtectClient,
    fmt: str,
    key: str,
    plaintext_file: Path | None,
    aad: tuple[str, ...],
    out: Path | None,
    show_plaintext: bool,
) -> None:
    """Wrap a DEK with root KEY; print the ciphertext."""
    if plaintext_file is not None and (out is not None or show_plaintext):
        raise click.UsageError("--out and --show-plaintext are for a generated DEK only")
    if plaintext_file is None and out is None and not show_plaintext:
        raise click.UsageError(
            "a generated DEK must go somewhere: pass --out FILE (or --show-plaintext), "
            "or wrap your own with --plaintext-file"
        )
    plaintext = None if plaintext_file is None else _read_bytes(plaintext_file)
    if out is not None:
        with _secret_file(out) as fd:
            result = client.wrap(key, plaintext, aad=aad)
            assert result.plaintext is not None
            _write_all(fd, result.plaintext)
        click.echo(f"wrote the generated {len(result.plaintext)}-byte DEK to {out}", err=True)
    else:
        result = client.wrap(key, plaintext, aad=aad)
    shown = result.plaintext if show_plaintext else None
    if fmt == "json":
        doc: dict[str, object] = {
            "ciphertext": result.ciphertext,
            "key_version": result.key_version,
        }
        if shown is not None:
            doc["plaintext"] = base64.b64encode(shown).decode("ascii")
        _echo_json(doc)
        return
    click.echo(result.ciphertext)
    if shown is not None:
        click.echo(base64.b64encode(shown).decode("ascii"))
    click.echo(f"wrapped with key version {result.key_version}", err=True)


@click.command("unwrap")
@click.argument("key")
@_with(_ciphertext_options)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the plaintext to this new file (mode 0600).",
)
@click.option("--stdout", "to_stdout", is_flag=True, help="Write the raw plaintext to stdout.")
@_remote
def unwrap(
    *,
    client: KeyProtectClient,
    fmt: str,
    key: str,
    ciphertext: str | None,
    ciphertext_file: Path | None,
    aad: tuple[str, ...],
    out: Path | None,
    to_stdout: bool,
) -> None:
    """Unwrap a ciphertext with KEY; the plaintext goes to --out FILE or, asked, --stdout."""
    if (out is None) == (not to_stdout):
        raise click.UsageError("give exactly one of --out FILE and --stdout")
    text = _read_ciphertext(ciphertext, ciphertext_file)
    if out is not None:
        with _secret_file(out) as fd:
            result = client.unwrap(key, text, aad=aad)
            _write_all(fd, result.plaintext)
        click.echo(f"wrote {len(result.plaintext)} bytes of plaintext to {out}", err=True)
    else:
        result = client.unwrap(key, text, aad=aad)
        sys.stdout.flush()
        sys.stdout.buffer.write(result.plaintext)
        sys.stdout.buffer.flush()
    rewrapped = result.ciphertext
    if fmt == "json" and not to_stdout:
        _echo_json(
            {
                "key_version": result.key_version,
                "ciphertext": rewrapped,
                "rewrapped_key_version": result.rewrapped_key_version,
            }
        )
        return
    click.echo(f"unwrapped: wrapped with key version {result.key_version}", err=True)
    if rewrapped is not None:
        click.echo(
            f"the key was rotated since; rewrapped under version {result.rewrapped_key_version}:",
            err=True,
        )
        click.echo(rewrapped, err=to_stdout)


@click.command("rewrap")
@click.argument("key")
@_with(_ciphertext_options)
@_remote
def rewrap(
    *,
    client: KeyProtectClient,
    fmt: str,
    key: str,
    ciphertext: str | None,
    ciphertext_file: Path | None,
    aad: tuple[str, ...],
) -> None:
    """Rewrap a ciphertext under KEY's latest version; print the new ciphertext."""
    result = client.rewrap(key, _read_ciphertext(ciphertext, ciphertext_file), aad=aad)
    if fmt == "json":
        _echo_json(
            {
                "ciphertext": result.ciphertext,
                "key_version": result.key_version,
                "rewrapped_key_version": result.rewrapped_key_version,
            }
        )
        return
    click.echo(result.ciphertext)
    click.echo(
        f"rewrapped from version {result.key_version} to {result.rewrapped_key_version}",
        err=True,
    )


# --------------------------------------------------------------------------- lifecycle


@click.command("rotate")
@click.argument("key")
@click.option(
    "--payload-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Imported keys: the new key material.",
)
@click.option("--base64", "b64", is_flag=True, help="--payload-file holds base64 text.")
@click.option("--secure", is_flag=True, help="Send the material through an import token.")
@_remote
def rotate(
    *,
    client: KeyProtectClient,
    fmt: str,
    key: str,
    payload_file: Path | None,
    b64: bool,
    secure: bool,
) -> None:
    """Rotate KEY: add a new version (old ciphertexts stay readable)."""
    if secure and payload_file is None:
        raise click.UsageError("--secure needs --payload-file")
    material = None if payload_file is None else _read_material(payload_file, b64=b64)
    if secure:
        assert material is not None
        client.create_import_token()
        sealed = seal_for_import(client.get_import_token(), material)
        found = client.rotate(key, secure=sealed)
    else:
        found = client.rotate(key, material)
    if found is None:
        found = client.get_key_metadata(key)
    _show_key(found, fmt)


def _simple_action(
    name: str, method: Callable[[KeyProtectClient, str], None], past: str, doc: str
) -> click.Command:
    @click.command(name, help=doc)
    @click.argument("key")
    @_remote
    def command(*, client: KeyProtectClient, fmt: str, key: str) -> None:
        method(client, key)
        _done(fmt, name, key, f"key {key}: {past}")

    return command


disable = _simple_action(
    "disable",
    KeyProtectClient.disable,
    "disabled (Suspended): wrap and unwrap refuse it until enabled",
    "Disable KEY (Active → Suspended).",
)
enable = _simple_action(
    "enable", KeyProtectClient.enable, "enabled (Active)", "Enable KEY (Suspended → Active)."
)
set_for_deletion = _simple_action(
    "set-for-deletion",
    KeyProtectClient.set_for_deletion,
    "authorized for deletion for 7 days; a second user may now delete it",
    "Dual authorization: give the first of two approvals to delete KEY.",
)
unset_for_deletion = _simple_action(
    "unset-for-deletion",
    KeyProtectClient.unset_for_deletion,
    "authorization to delete withdrawn",
    "Dual authorization: withdraw the approval to delete KEY.",
)


@click.command("delete")
@click.argument("key")
@click.option(
    "--force", is_flag=True, help="Delete despite registrations (not retention-protected ones)."
)
@_remote
def delete(*, client: KeyProtectClient, fmt: str, key: str, force: bool) -> None:
    """Delete KEY (→ Destroyed; restorable for 30 days, then purged)."""
    found = client.delete(key, force=force)
    if found is None:
        _done(fmt, "delete", key, f"key {key}: deleted")
    else:
        _show_key(found, fmt)


@click.command("restore")
@click.argument("key")
@_remote
def restore(*, client: KeyProtectClient, fmt: str, key: str) -> None:
    """Restore a deleted KEY (within 30 days; not an expired key)."""
    found = client.restore(key)
    if found is None:
        found = client.get_key_metadata(key)
    _show_key(found, fmt)


@click.command("purge")
@click.argument("key")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_remote
def purge(*, client: KeyProtectClient, fmt: str, key: str, yes: bool) -> None:
    """Purge a deleted KEY: its material is destroyed for good (needs the KeyPurge role)."""
    if not yes:
        click.confirm(
            f"Purge key {key}? Everything it wrapped becomes unreadable, forever", abort=True
        )
    found = client.purge(key)
    if found is None or fmt == "json":
        _done(fmt, "purge", key, f"key {key}: purged; its material is destroyed")
    else:
        click.echo(f"key {found.id} ({found.name}): purged; its material is destroyed")


@click.command("sync")
@click.argument("key")
@_remote
def sync(*, client: KeyProtectClient, fmt: str, key: str) -> None:
    """Ask the services registered with KEY to resynchronise."""
    client.sync(key)
    _done(fmt, "sync", key, f"key {key}: registered services asked to resynchronise")


# --------------------------------------------------------------------------- policies


_policy_options: Final = (
    click.option(
        "--rotation-months",
        type=click.IntRange(1, 12),
        help="Rotate automatically every N months.",
    ),
    click.option("--no-rotation", is_flag=True, help="Turn automatic rotation off."),
    click.option(
        "--dual-auth",
        type=click.Choice(["on", "off"]),
        help="Dual authorization for deletion (a key's cannot be turned off once on).",
    ),
)


def _policies_table(policies: KeyPolicies) -> Table:
    table = Table(show_header=False, title=_t(f"policies of key {policies.key_id}"), min_width=60)
    table.add_column("policy", style="bold")
    table.add_column("value")
    table.add_row("rotation", _rotation_label(policies.rotation))
    dual = policies.dual_auth_delete
    table.add_row("dual authorization", "-" if dual is None else ("on" if dual.enabled else "off"))
    return table


def _instance_table(policies: InstancePolicies) -> Table:
    table = Table(
        show_header=False, title="instance policies (inherited by new keys)", min_width=60
    )
    table.add_column("policy", style="bold")
    table.add_column("value")
    table.add_row("rotation", _rotation_label(policies.rotation))
    table.add_row("dual authorization", "on" if policies.dual_auth_delete else "off")
    return table


@click.group("policy")
def policy() -> None:
    """A key's rotation and dual authorization policies."""


@policy.command("get")
@click.argument("key")
@_remote
def policy_get(*, client: KeyProtectClient, fmt: str, key: str) -> None:
    """Show KEY's policies."""
    found = client.get_policies(key)
    if fmt == "json":
        _echo_json(_jsonable(found))
    else:
        _console().print(_policies_table(found))


@policy.command("set")
@click.argument("key")
@_with(_policy_options)
@_remote
def policy_set(
    *,
    client: KeyProtectClient,
    fmt: str,
    key: str,
    rotation_months: int | None,
    no_rotation: bool,
    dual_auth: str | None,
) -> None:
    """Set KEY's rotation and/or dual authorization policy."""
    rotation = _rotation_choice(rotation_months, no_rotation)
    if rotation is None and dual_auth is None:
        raise click.UsageError("nothing to set: --rotation-months, --no-rotation or --dual-auth")
    found = client.put_policies(key, rotation=rotation, dual_auth_delete=_on_off(dual_auth))
    if fmt == "json":
        _echo_json(_jsonable(found))
    else:
        _console().print(_policies_table(found))


@click.group("instance-policy")
def instance_policy() -> None:
    """The instance's policies, inherited by keys created from now on."""


@instance_policy.command("get")
@_remote
def instance_policy_get(*, client: KeyProtectClient, fmt: str) -> None:
    """Show the instance's policies."""
    found = client.get_instance_policies()
    if fmt == "json":
        _echo_json(_jsonable(found))
    else:
        _console().print(_instance_table(found))


@instance_policy.command("set")
@_with(_policy_options)
@_remote
def instance_policy_set(
    *,
    client: KeyProtectClient,
    fmt: str,
    rotation_months: int | None,
    no_rotation: bool,
    dual_auth: str | None,
) -> None:
    """Set the instance's rotation and/or dual authorization policy."""
    rotation = _rotation_choice(rotation_months, no_rotation)
    if rotation is None and dual_auth is None:
        raise click.UsageError("nothing to set: --rotation-months, --no-rotation or --dual-auth")
    client.put_instance_policies(rotation=rotation, dual_auth_delete=_on_off(dual_auth))
    found = client.get_instance_policies()
    if fmt == "json":
        _echo_json(_jsonable(found))
    else:
        _console().print(_instance_table(found))


# --------------------------------------------------------------------------- aliases, rings


@click.group("alias")
def alias() -> None:
    """Aliases of keys: names usable wherever a key id is."""


@alias.command("add")
@click.argument("key")
@click.argument("name")
@_remote
def alias_add(*, client: KeyProtectClient, fmt: str, key: str, name: str) -> None:
    """Give KEY the alias NAME."""
    entry = client.create_alias(key, name)
    if fmt == "json":
        _echo_json(_jsonable(entry))
    else:
        click.echo(f"key {entry.key_id}: alias {_t(entry.alias)} added")


@alias.command("remove")
@click.argument("key")
@click.argument("name")
@_remote
def alias_remove(*, client: KeyProtectClient, fmt: str, key: str, name: str) -> None:
    """Remove the alias NAME from KEY."""
    client.delete_alias(key, name)
    _done(fmt, "alias-remove", key, f"key {key}: alias {_t(name)} removed")


@click.group("ring")
def ring() -> None:
    """Key rings: groups of keys within an instance."""


@ring.command("list")
@_remote
def ring_list(*, client: KeyProtectClient, fmt: str) -> None:
    """List the instance's key rings."""
    found = client.list_key_rings()
    if fmt == "json":
        _echo_json({"key_rings": _jsonable(found.key_rings), "total": found.total})
        return
    table = Table(title=f"{len(found.key_rings)} key ring{'s' if found.total != 1 else ''}")
    table.add_column("ID", no_wrap=True)
    table.add_column("CREATED", no_wrap=True)
    table.add_column("CREATED BY")
    for item in found.key_rings:
        table.add_row(_t(item.id), _time(item.creation_date), _t(item.created_by or "-"))
    _console().print(table)


@ring.command("create")
@click.argument("ring_id")
@_remote
def ring_create(*, client: KeyProtectClient, fmt: str, ring_id: str) -> None:
    """Create the key ring RING_ID."""
    client.create_key_ring(ring_id)
    if fmt == "json":
        _echo_json({"key_ring": ring_id, "action": "create", "ok": True})
    else:
        click.echo(f"key ring {_t(ring_id)} created")


@ring.command("delete")
@click.argument("ring_id")
@click.option("--force", is_flag=True, help="Also if it holds only Destroyed keys.")
@_remote
def ring_delete(*, client: KeyProtectClient, fmt: str, ring_id: str, force: bool) -> None:
    """Delete the key ring RING_ID (it must hold no live keys)."""
    client.delete_key_ring(ring_id, force=force)
    if fmt == "json":
        _echo_json({"key_ring": ring_id, "action": "delete", "ok": True})
    else:
        click.echo(f"key ring {_t(ring_id)} deleted")


@ring.command("move")
@click.argument("key")
@click.argument("ring_id")
@_remote
def ring_move(*, client: KeyProtectClient, fmt: str, key: str, ring_id: str) -> None:
    """Move KEY to the key ring RING_ID."""
    _show_key(client.move_key(key, ring_id), fmt)


# --------------------------------------------------------------------------- registrations


@click.command("registrations")
@click.argument("key", required=False)
@click.option("--all", "all_keys", is_flag=True, help="Registrations of every key.")
@click.option("--crn", help="Only resources whose CRN matches (* matches anything).")
@click.option("--limit", type=click.IntRange(1, 5000), default=200, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@_remote
def registrations(
    *,
    client: KeyProtectClient,
    fmt: str,
    key: str | None,
    all_keys: bool,
    crn: str | None,
    limit: int,
    offset: int,
) -> None:
    """List the resources registered with KEY (or with every key: --all)."""
    if (key is None) == (not all_keys):
        raise click.UsageError("give KEY or --all")
    found = client.list_registrations(key, crn_query=crn, limit=limit, offset=offset)
    if fmt == "json":
        _echo_json({"registrations": _jsonable(found.registrations), "total": found.total})
        return
    table = Table(title=f"{len(found.registrations)} registration{'s' if found.total != 1 else ''}")
    table.add_column("KEY ID", no_wrap=True)
    table.add_column("RESOURCE CRN")
    table.add_column("PREVENTS DELETION", no_wrap=True)
    table.add_column("KEY VERSION", no_wrap=True)
    table.add_column("CREATED", no_wrap=True)
    for reg in found.registrations:
        table.add_row(
            _t(reg.key_id),
            _t(reg.resource_crn),
            "yes" if reg.prevent_key_deletion else "no",
            _t(reg.key_version_id[:8] or "-"),
            _time(reg.creation_date),
        )
    _console().print(table)


# --------------------------------------------------------------------------- attaching

#: Every client command, in the order ``kinko keys --help`` should list them.
CLIENT_COMMANDS: Final[tuple[click.Command, ...]] = (
    create,
    import_key,
    list_keys,
    get,
    versions,
    wrap,
    unwrap,
    rewrap,
    rotate,
    disable,
    enable,
    set_for_deletion,
    unset_for_deletion,
    delete,
    restore,
    purge,
    sync,
    policy,
    instance_policy,
    alias,
    ring,
    registrations,
)


def add_client_commands(group: click.Group) -> None:
    """Attaches :data:`CLIENT_COMMANDS` to ``group`` (the ``kinko keys`` group)."""
    for command in CLIENT_COMMANDS:
        group.add_command(command)
