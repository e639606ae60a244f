"""``kinko secret …``, ``kinko configmap …`` and ``kinko kubeconfig``: a kubectl-like shell
over a running kinko's cluster API (or any Kubernetes API).

A thin shell over :class:`kinko.cluster.client.ClusterClient`: each command parses its
options, builds the object exactly as ``kubectl create`` builds it, makes one or two client
calls, and prints a rich table, JSON or YAML (``-o``). Errors propagate as
:class:`~kinko.errors.KinkoError`; the ``kinko`` group maps them to exit codes
(``kinko.cli.errors``): NotFound 6, Conflict/AlreadyExists 7, Unauthorized 8, Forbidden 9,
Invalid 4, UnavailableError 12. Bad input (a malformed ``KEY=VALUE``, a duplicate key) is a
click usage error (2); a file that cannot be read is an InvalidArgument (4).

Where the server is (:func:`remote`, the shared options):

- ``--data-dir DIR`` (env ``KINKO_HOME``, default ``./.kinko``): the folder of a running
  ``kinko up``; its ``endpoints.json`` names the cluster API, the CA and the admin token file
  (:mod:`kinko.cluster.endpoints`). ``--token`` and ``--ca`` override its token and CA.
- ``--server URL`` (env ``KINKO_SERVER``) with ``--token`` (env ``KINKO_TOKEN``) and
  optionally ``--ca FILE``: any server. The data folder's admin token is then never used, so
  it is never sent to a server other than the one ``kinko up`` wrote down.

Invariants:

- Values of Secrets are never printed in table mode, and never appear in an error message
  (a bad ``--from-literal`` is reported without its value). ``-o json|yaml`` prints the
  object as the server returned it, data included, because that is what was asked for.
- Text from the server is printed as text, never as rich markup, without control characters.
- The bearer token is never printed (``kinko kubeconfig`` prints the kubeconfig, token
  included: that is its job).

Tests replace how the client is built by passing a :class:`ClusterHook` as the click
context object (the same seam as ``kinko keys``'s ``ClientHook``); everything else, the
options included, runs as in production.
"""

from __future__ import annotations

import base64
import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import click
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kinko.cluster.client import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_TIMEOUT,
    ClusterClient,
    KubeObject,
    Unreadable,
)
from kinko.cluster.endpoints import read_admin_token, read_endpoints, write_private_file
from kinko.errors import DecryptionError, InvalidArgument

__all__ = [
    "CLUSTER_COMMANDS",
    "DEFAULT_DATA_DIR",
    "ClusterConnection",
    "ClusterHook",
    "add_cluster_commands",
    "configmap",
    "configmap_body",
    "copy_body",
    "docker_config_json",
    "human_age",
    "kubeconfig",
    "remote",
    "remote_with",
    "resolve_connection",
    "secret",
    "secret_body",
]

#: The data folder when neither ``--data-dir`` nor ``KINKO_HOME`` names one.
DEFAULT_DATA_DIR: Final = ".kinko"
#: Width of tables when stdout is not a terminal (so names are never cut in pipes).
PIPE_WIDTH: Final = 200
#: kubectl's default registry for ``create secret docker-registry``.
DEFAULT_DOCKER_SERVER: Final = "https://index.docker.io/v1/"
#: Metadata a copy must not carry over: the server assigns it, or it points at the source.
_SERVER_METADATA: Final = (
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "selfLink",
    "managedFields",
    "ownerReferences",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)

_F = Callable[..., Any]


# --------------------------------------------------------------------------- connection


@dataclass(frozen=True, slots=True)
class ClusterConnection:
    """Where and as whom the commands talk to the cluster API."""

    server: str
    token: str = field(repr=False)
    ca: Path | None = None
    timeout: float = DEFAULT_TIMEOUT


ClusterClientFactory = Callable[[ClusterConnection], ClusterClient]


@dataclass(frozen=True, slots=True)
class ClusterHook:
    """The click context object that replaces how commands build their client (tests)."""

    factory: ClusterClientFactory


def _default_client(conn: ClusterConnection) -> ClusterClient:
    return ClusterClient(conn.server, token=conn.token, ca=conn.ca, timeout=conn.timeout)


def resolve_connection(
    *,
    data_dir: Path,
    server: str | None,
    token: str | None,
    ca: Path | None,
    timeout: float = DEFAULT_TIMEOUT,
) -> ClusterConnection:
    """The connection the options describe (see the module docstring).

    Raises click.UsageError (``--server`` without a token), InvalidArgument (no or a bad
    ``endpoints.json``, an unreadable token file).
    """
    if server:
        if not token:
            raise click.UsageError(
                "--server needs --token (or KINKO_TOKEN); the data folder's admin token is "
                "only sent to the server kinko up wrote down"
            )
        return ClusterConnection(server=server, token=token, ca=ca, timeout=timeout)
    endpoints = read_endpoints(data_dir)
    return ClusterConnection(
        server=endpoints.cluster_api,
        token=token or read_admin_token(endpoints),
        ca=ca or endpoints.ca_file,
        timeout=timeout,
    )


_DATA_DIR_OPTION: Final = click.option(
    "--data-dir",
    envvar="KINKO_HOME",
    default=DEFAULT_DATA_DIR,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of a running kinko up (env KINKO_HOME).",
)


def _connection_options(ca_flag: str) -> tuple[Callable[[_F], _F], ...]:
    return (
        _DATA_DIR_OPTION,
        click.option(
            "--server",
            envvar="KINKO_SERVER",
            help="Cluster API URL instead of the data folder's (env KINKO_SERVER; needs --token).",
        ),
        click.option("--token", envvar="KINKO_TOKEN", help="Bearer token (env KINKO_TOKEN)."),
        click.option(
            ca_flag,
            "server_ca",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="PEM CA bundle to verify the server with (default: the data folder's).",
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
            type=click.Choice(["table", "json", "yaml"]),
            default="table",
            show_default=True,
            help="Output format.",
        ),
    )


def remote_with(*, ca_flag: str = "--ca") -> Callable[[_F], _F]:
    """:func:`remote` with the server CA option named ``ca_flag`` (``kinko secret create
    tls`` needs ``--ca`` for the certificate it stores)."""

    def decorate(fn: _F) -> _F:
        @functools.wraps(fn)
        def wrapper(
            *,
            data_dir: Path,
            server: str | None,
            token: str | None,
            server_ca: Path | None,
            timeout: float,
            output: str,
            **kwargs: Any,
        ) -> Any:
            conn = resolve_connection(
                data_dir=data_dir, server=server, token=token, ca=server_ca, timeout=timeout
            )
            hook = click.get_current_context().find_object(ClusterHook)
            factory = hook.factory if hook is not None else _default_client
            with factory(conn) as client:
                return fn(client=client, fmt=output, **kwargs)

        decorated: _F = wrapper
        for option in reversed(_connection_options(ca_flag)):
            decorated = option(decorated)
        return decorated

    return decorate


def remote(fn: _F) -> _F:
    """Adds the connection options; calls ``fn(client=…, fmt=…, **its own options)``."""
    return remote_with()(fn)


# --------------------------------------------------------------------------- output


def _console() -> Console:
    out = Console(file=sys.stdout)
    if not out.is_terminal:
        out = Console(file=sys.stdout, width=PIPE_WIDTH)
    return out


def _t(value: object) -> Text:
    """Server-provided text as rich Text: no markup, no control characters."""
    text = "" if value is None else str(value)
    return Text("".join(ch if ch.isprintable() else "?" for ch in text))


def _echo_doc(doc: object, fmt: str) -> None:
    if fmt == "yaml":
        click.echo(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False), nl=False)
    else:
        click.echo(json.dumps(doc, indent=2))


def human_age(age: timedelta) -> str:
    """An age as kubectl shows it (``HumanDuration``): ``45s``, ``5m3s``, ``3h``, ``2d4h``."""
    seconds = int(age.total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        rest = seconds % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        years, days = hours // 24 // 365, hours // 24 % 365
        return f"{years}y{days}d" if days else f"{years}y"
    return f"{hours // 24 // 365}y"


def _field(obj: KubeObject, *path: str) -> object:
    value: object = obj
    for name in path:
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return value


def _age(obj: KubeObject, now: datetime) -> str:
    stamp = _field(obj, "metadata", "creationTimestamp")
    if not isinstance(stamp, str):
        return "<unknown>"
    try:
        created = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return human_age(now - created)


def _count(obj: KubeObject, *names: str) -> int:
    total = 0
    for name in names:
        value = obj.get(name)
        if isinstance(value, dict):
            total += len(value)
    return total


@dataclass(frozen=True, slots=True)
class _Kind:
    """What differs between Secrets and ConfigMaps in the shared commands."""

    resource: str  # secrets
    singular: str  # secret
    kind: str  # Secret
    data_fields: tuple[str, ...]
    show_type: bool


SECRETS: Final = _Kind("secrets", "secret", "Secret", ("data",), show_type=True)
CONFIGMAPS: Final = _Kind("configmaps", "configmap", "ConfigMap", ("data", "binaryData"), False)


def _table(kind: _Kind, objects: Sequence[KubeObject], *, namespaces: bool) -> Table:
    """NAME, [TYPE,] DATA (how many keys), AGE; never a value."""
    now = datetime.now(UTC)
    table = Table()
    if namespaces:
        table.add_column("NAMESPACE", no_wrap=True)
    table.add_column("NAME", no_wrap=True)
    if kind.show_type:
        table.add_column("TYPE", no_wrap=True)
    table.add_column("DATA", no_wrap=True, justify="right")
    table.add_column("AGE", no_wrap=True)
    for obj in objects:
        row: list[str | Text] = []
        if namespaces:
            row.append(_t(_field(obj, "metadata", "namespace") or ""))
        row.append(_t(_field(obj, "metadata", "name") or ""))
        if kind.show_type:
            row.append(_t(obj.get("type") or "Opaque"))
        row += [str(_count(obj, *kind.data_fields)), _age(obj, now)]
        table.add_row(*row)
    return table


def _show_object(kind: _Kind, obj: KubeObject, fmt: str) -> None:
    if fmt == "table":
        _console().print(_table(kind, [obj], namespaces=False))
    else:
        _echo_doc(obj, fmt)


def _created(kind: _Kind, obj: KubeObject, fmt: str, verb: str = "created") -> None:
    if fmt == "table":
        click.echo(f"{kind.singular}/{_t(_field(obj, 'metadata', 'name') or '')} {verb}")
    else:
        _echo_doc(obj, fmt)


def _warn_unreadable(kind: _Kind, unreadable: Unreadable) -> None:
    """One line on stderr naming the objects the server left out as undecryptable."""
    if not unreadable:
        return
    named = "; ".join(
        f"{item.namespace}/{item.name}" + (f" ({item.reason})" if item.reason else "")
        for item in unreadable.items
    )
    more = unreadable.count - len(unreadable.items)
    if more > 0:
        named += f"{'; ' if named else ''}{more} more"
    noun, verb = (kind.singular, "was") if unreadable.count == 1 else (kind.resource, "were")
    text = f"warning: {unreadable.count} {noun} cannot be decrypted and {verb} left out: {named}"
    click.echo(_t(text).plain, err=True)


# --------------------------------------------------------------------------- building objects


def _split_pair(option: str, text: str, *, echo_value: bool) -> tuple[str, str]:
    """``KEY=VALUE`` → (KEY, VALUE). The message shows the text only when ``echo_value``
    (never for a secret literal)."""
    key, sep, value = text.partition("=")
    if not sep:
        shown = f", got {text!r}" if echo_value else " (no '=' found)"
        raise click.UsageError(f"expected {option} KEY=VALUE{shown}")
    if not key:
        raise click.UsageError(f"{option}: expected a non-empty KEY before '='")
    return key, value


def _labels(pairs: Iterable[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, value = _split_pair("--label", pair, echo_value=True)
        if key in labels:
            raise click.UsageError(f"--label {key!r} given twice")
        labels[key] = value
    return labels


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None


def _add(values: dict[str, bytes], key: str, value: bytes) -> None:
    if key in values:
        raise click.UsageError(f"cannot add key {key!r}: another key by that name already exists")
    values[key] = value


def _file_values(specs: Iterable[str], values: dict[str, bytes]) -> None:
    """``--from-file [KEY=]PATH`` as kubectl reads it: a file under KEY (default: its base
    name), or every regular file of a folder under its own name."""
    for spec in specs:
        key, sep, raw_path = spec.partition("=")
        if not sep:
            key, raw_path = "", spec
        elif not key:
            raise click.UsageError(f"--from-file: expected a non-empty KEY before '=' in {spec!r}")
        path = Path(raw_path)
        if path.is_dir():
            if key:
                raise click.UsageError(f"--from-file: cannot give a KEY for the folder {path}")
            for entry in sorted(path.iterdir()):
                if entry.is_file():
                    _add(values, entry.name, _read_file(entry))
            continue
        _add(values, key or path.name, _read_file(path))


def _collect(literals: Iterable[str], files: Iterable[str]) -> dict[str, bytes]:
    values: dict[str, bytes] = {}
    for literal in literals:
        key, value = _split_pair("--from-literal", literal, echo_value=False)
        _add(values, key, value.encode("utf-8"))
    _file_values(files, values)
    return values


def _metadata(name: str, namespace: str, labels: dict[str, str]) -> dict[str, object]:
    meta: dict[str, object] = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = labels
    return meta


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def secret_body(
    name: str,
    namespace: str,
    data: dict[str, bytes],
    *,
    type_: str = "Opaque",
    labels: dict[str, str] | None = None,
) -> KubeObject:
    """A core/v1 Secret with ``data`` base64-encoded, as ``kubectl create secret`` sends it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(name, namespace, labels or {}),
        "type": type_,
        "data": {key: _b64(value) for key, value in data.items()},
    }


def configmap_body(
    name: str, namespace: str, values: dict[str, bytes], *, labels: dict[str, str] | None = None
) -> KubeObject:
    """A core/v1 ConfigMap: UTF-8 values in ``data``, anything else base64 in ``binaryData``
    (kubectl's rule)."""
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    for key, value in values.items():
        try:
            data[key] = value.decode("utf-8")
        except UnicodeDecodeError:
            binary[key] = _b64(value)
    body: KubeObject = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(name, namespace, labels or {}),
    }
    if data:
        body["data"] = data
    if binary:
        body["binaryData"] = binary
    return body


def _go_json(doc: object) -> str:
    """JSON as Go's ``encoding/json`` writes it: compact, UTF-8, and ``<``, ``>``, ``&``,
    U+2028 and U+2029 escaped, so the bytes equal what kubectl would store."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text


def docker_config_json(server: str, username: str, password: str, email: str = "") -> bytes:
    """The ``.dockerconfigjson`` value ``kubectl create secret docker-registry`` builds:
    ``{"auths": {SERVER: {"username", "password", "email", "auth"}}}`` with
    ``auth = base64(USER:PASSWORD)``, empty fields left out (Go's ``omitempty``)."""
    entry: dict[str, str] = {}
    for name, value in (("username", username), ("password", password), ("email", email)):
        if value:
            entry[name] = value
    entry["auth"] = _b64(f"{username}:{password}".encode())
    return _go_json({"auths": {server: entry}}).encode("utf-8")


# --------------------------------------------------------------------------- shared commands

_namespace_option: Final = click.option(
    "-n", "--namespace", default="default", show_default=True, help="Namespace."
)
_label_option: Final = click.option(
    "--label", "labels", multiple=True, metavar="KEY=VALUE", help="A label (repeatable)."
)
_literal_option: Final = click.option(
    "--from-literal",
    "literals",
    multiple=True,
    metavar="KEY=VALUE",
    help="A key and its literal value (repeatable).",
)
_file_option: Final = click.option(
    "--from-file",
    "files",
    multiple=True,
    metavar="[KEY=]PATH",
    help="A file under KEY (default: its name), or every file of a folder (repeatable).",
)


def _get_command(kind: _Kind) -> click.Command:
    @click.command("get")
    @click.argument("name")
    @_namespace_option
    @remote
    def get(*, client: ClusterClient, fmt: str, name: str, namespace: str) -> None:
        _show_object(kind, client.get(kind.resource, namespace, name), fmt)

    get.help = f"Show the {kind.kind} NAME (table: no values; -o json|yaml: the object as stored)."
    return get


def _list_command(kind: _Kind) -> click.Command:
    @click.command("list")
    @click.option("-n", "--namespace", help="Namespace [default: default].")
    @click.option("-A", "--all-namespaces", is_flag=True, help="List in every namespace.")
    @click.option("-l", "--selector", help="Label selector, e.g. app=web,tier!=db.")
    @click.option(
        "--chunk-size",
        type=click.IntRange(min=1),
        default=DEFAULT_PAGE_SIZE,
        show_default=True,
        help="Objects per request (the rest follow by continue).",
    )
    @remote
    def list_(
        *,
        client: ClusterClient,
        fmt: str,
        namespace: str | None,
        all_namespaces: bool,
        selector: str | None,
        chunk_size: int,
    ) -> None:
        if all_namespaces and namespace is not None:
            raise click.UsageError("-n and -A exclude each other")
        where = None if all_namespaces else (namespace or "default")
        page = client.list_all(kind.resource, where, label_selector=selector, page_size=chunk_size)
        _warn_unreadable(kind, page.unreadable)
        if fmt == "table":
            if page.items:
                _console().print(_table(kind, page.items, namespaces=all_namespaces))
            else:
                scope = "any namespace" if where is None else f"namespace {where}"
                click.echo(f"no {kind.resource} found in {scope}", err=True)
            return
        doc = {
            "apiVersion": "v1",
            "kind": f"{kind.kind}List",
            "metadata": {"resourceVersion": page.resource_version},
            "items": list(page.items),
        }
        _echo_doc(doc, fmt)

    list_.help = (
        f"List {kind.resource} (following continue to the end). Objects the server cannot "
        "decrypt are named in a warning on stderr."
    )
    return list_


def _delete_command(kind: _Kind) -> click.Command:
    @click.command("delete")
    @click.argument("name")
    @_namespace_option
    @click.option(
        "--force-unreadable",
        is_flag=True,
        help="Delete it even though it can no longer be decrypted (Administrator only).",
    )
    @remote
    def delete(
        *, client: ClusterClient, fmt: str, name: str, namespace: str, force_unreadable: bool
    ) -> None:
        try:
            answer = client.delete(
                kind.resource, namespace, name, force_unreadable=force_unreadable
            )
        except DecryptionError:
            if not force_unreadable:
                click.echo(
                    "hint: an Administrator deletes it unread with --force-unreadable", err=True
                )
            raise
        if fmt == "table":
            click.echo(f'{kind.singular} "{_t(name)}" deleted')
        else:
            _echo_doc(answer, fmt)

    delete.help = f"Delete the {kind.kind} NAME."
    return delete


# --------------------------------------------------------------------------- kinko secret


@click.group("secret")
def secret() -> None:
    """Secrets of the cluster API: create, get, list, delete, copy."""


@secret.group("create")
def secret_create() -> None:
    """Create a Secret (generic, tls or docker-registry)."""


@secret_create.command("generic")
@click.argument("name")
@_namespace_option
@_literal_option
@_file_option
@click.option("--type", "type_", default="Opaque", show_default=True, help="The Secret's type.")
@_label_option
@remote
def secret_create_generic(
    *,
    client: ClusterClient,
    fmt: str,
    name: str,
    namespace: str,
    literals: tuple[str, ...],
    files: tuple[str, ...],
    type_: str,
    labels: tuple[str, ...],
) -> None:
    """Create the Secret NAME from literals and files."""
    body = secret_body(
        name, namespace, _collect(literals, files), type_=type_, labels=_labels(labels)
    )
    _created(SECRETS, client.create("secrets", namespace, body), fmt)


@secret_create.command("tls")
@click.argument("name")
@_namespace_option
@click.option(
    "--cert",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM certificate (chain), stored as tls.crt.",
)
@click.option(
    "--key",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM private key, stored as tls.key.",
)
@click.option(
    "--ca",
    "--ca-cert",
    "ca_cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM CA certificate, stored as ca.crt.",
)
@_label_option
@remote_with(ca_flag="--server-ca")
def secret_create_tls(
    *,
    client: ClusterClient,
    fmt: str,
    name: str,
    namespace: str,
    cert: Path,
    key: Path,
    ca_cert: Path | None,
    labels: tuple[str, ...],
) -> None:
    """Create the kubernetes.io/tls Secret NAME from a certificate and its key.

    Here --ca is the ca.crt stored in the Secret; the CA that verifies the server is
    --server-ca (or the data folder's).
    """
    data = {"tls.crt": _read_file(cert), "tls.key": _read_file(key)}
    if ca_cert is not None:
        data["ca.crt"] = _read_file(ca_cert)
    body = secret_body(name, namespace, data, type_="kubernetes.io/tls", labels=_labels(labels))
    _created(SECRETS, client.create("secrets", namespace, body), fmt)


@secret_create.command("docker-registry")
@click.argument("name")
@_namespace_option
@click.option(
    "--docker-server",
    default=DEFAULT_DOCKER_SERVER,
    show_default=True,
    help="Registry server.",
)
@click.option("--docker-username", required=True, help="Registry user name.")
@click.option("--docker-password", required=True, help="Registry password.")
@click.option("--docker-email", default="", help="Registry email.")
@_label_option
@remote
def secret_create_docker_registry(
    *,
    client: ClusterClient,
    fmt: str,
    name: str,
    namespace: str,
    docker_server: str,
    docker_username: str,
    docker_password: str,
    docker_email: str,
    labels: tuple[str, ...],
) -> None:
    """Create the kubernetes.io/dockerconfigjson Secret NAME (an image pull secret)."""
    value = docker_config_json(docker_server, docker_username, docker_password, docker_email)
    body = secret_body(
        name,
        namespace,
        {".dockerconfigjson": value},
        type_="kubernetes.io/dockerconfigjson",
        labels=_labels(labels),
    )
    _created(SECRETS, client.create("secrets", namespace, body), fmt)


secret.add_command(_get_command(SECRETS))
secret.add_command(_list_command(SECRETS))
secret.add_command(_delete_command(SECRETS))


def copy_body(source: KubeObject, *, namespace: str, name: str) -> KubeObject:
    """``source`` as a new object NAME in NAMESPACE: the metadata the server assigns (uid,
    resourceVersion, creationTimestamp, …) is dropped; labels, annotations, type, data and
    immutability are kept."""
    body = {k: v for k, v in source.items() if k != "status"}
    meta = source.get("metadata")
    new_meta: dict[str, object] = dict(meta) if isinstance(meta, dict) else {}
    for key in _SERVER_METADATA:
        new_meta.pop(key, None)
    new_meta["name"] = name
    new_meta["namespace"] = namespace
    body["metadata"] = new_meta
    return body


@secret.command("copy")
@click.argument("name")
@click.option(
    "--from-namespace",
    default="default",
    show_default=True,
    help="Namespace to copy from.",
)
@click.option("--to-namespace", required=True, help="Namespace to copy to.")
@click.option("--name", "new_name", help="Name of the copy [default: NAME].")
@remote
def secret_copy(
    *,
    client: ClusterClient,
    fmt: str,
    name: str,
    from_namespace: str,
    to_namespace: str,
    new_name: str | None,
) -> None:
    """Copy the Secret NAME to another namespace (e.g. image pull secrets out of default)."""
    target = new_name or name
    if from_namespace == to_namespace and target == name:
        raise click.UsageError(
            "the copy would replace the original: give another namespace or --name"
        )
    source = client.get("secrets", from_namespace, name)
    copied = client.create(
        "secrets", to_namespace, copy_body(source, namespace=to_namespace, name=target)
    )
    _created(SECRETS, copied, fmt, verb=f"copied from {from_namespace}/{name}")


# --------------------------------------------------------------------------- kinko configmap


@click.group("configmap")
def configmap() -> None:
    """ConfigMaps of the cluster API: create, get, list, delete."""


@configmap.command("create")
@click.argument("name")
@_namespace_option
@_literal_option
@_file_option
@_label_option
@remote
def configmap_create(
    *,
    client: ClusterClient,
    fmt: str,
    name: str,
    namespace: str,
    literals: tuple[str, ...],
    files: tuple[str, ...],
    labels: tuple[str, ...],
) -> None:
    """Create the ConfigMap NAME from literals and files (non-UTF-8 files go to binaryData)."""
    body = configmap_body(name, namespace, _collect(literals, files), labels=_labels(labels))
    _created(CONFIGMAPS, client.create("configmaps", namespace, body), fmt)


configmap.add_command(_get_command(CONFIGMAPS))
configmap.add_command(_list_command(CONFIGMAPS))
configmap.add_command(_delete_command(CONFIGMAPS))


# --------------------------------------------------------------------------- kinko kubeconfig


@click.command("kubeconfig")
@_DATA_DIR_OPTION
@click.option(
    "--output-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write it to this file (mode 0600) instead of printing it.",
)
@click.option("--force", is_flag=True, help="Replace --output-file if it exists.")
def kubeconfig(data_dir: Path, output_file: Path | None, force: bool) -> None:
    """Print the kubeconfig kinko up wrote (for kubectl and the kubernetes client).

    It carries the admin token: keep what you write it to private.
    """
    path = read_endpoints(data_dir).kubeconfig
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidArgument(f"no kubeconfig at {path}: is kinko up running there?") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InvalidArgument(f"cannot read {path}: {reason}") from None
    if output_file is None:
        click.echo(text, nl=False)
        return
    if output_file.exists() and not force:
        raise InvalidArgument(f"{output_file} exists; refusing to overwrite it without --force")
    write_private_file(output_file, text.encode("utf-8"))
    click.echo(f"kubeconfig written to {output_file}")


# --------------------------------------------------------------------------- attaching

#: Every command of this module, as ``kinko --help`` lists them.
CLUSTER_COMMANDS: Final[tuple[click.Command, ...]] = (secret, configmap, kubeconfig)


def add_cluster_commands(group: click.Group) -> None:
    """Attaches :data:`CLUSTER_COMMANDS` to ``group`` (the ``kinko`` group)."""
    for command in CLUSTER_COMMANDS:
        group.add_command(command)
