"""The files ``kinko up`` writes into its data folder so that programs can find and use it.

* ``endpoints.json`` (:func:`write_endpoints`, :func:`read_endpoints`): where the cluster API,
  the key service and the KMS v2 plugin listen, which key service instance and root key are in
  use, and where the CA, the admin token and the kubeconfig are. Keys are camelCase, as in
  Kubernetes' own files::

      {"clusterApi": "https://127.0.0.1:6443", "keyService": "https://127.0.0.1:6443",
       "instance": "…", "kmsPluginSocket": "unix:///abs/path/kms.sock",
       "caFile": "/abs/tls/ca.crt", "adminTokenFile": "/abs/admin.token",
       "kubeconfig": "/abs/kubeconfig", "rootKey": "…" or null}

* ``admin.token`` (:func:`write_admin_token`, :func:`read_admin_token`): the Administrator's
  bearer token, one line.
* ``kubeconfig`` (:func:`kubeconfig_yaml`, :func:`write_kubeconfig`): a standard kubeconfig
  for ``kubectl`` and the ``kubernetes`` Python client, carrying the CA and the admin token.

Invariants: every file is written atomically (a temporary file in the same folder, fsynced,
then renamed over the old one), so a reader sees the old file or the new one, never half of
one; every file is mode 0600 from the moment it exists, since two of them carry the admin
token. A read ``endpoints.json`` names files inside its own folder only, and
:func:`read_admin_token` returns only a kinko token: a planted ``endpoints.json`` cannot make
the CLI send some other file to some other server. Error messages name files, never a token.
"""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from kinko.errors import InvalidArgument

__all__ = [
    "ADMIN_TOKEN_FILE",
    "ENDPOINTS_FILE",
    "KUBECONFIG_FILE",
    "Endpoints",
    "kubeconfig_yaml",
    "read_admin_token",
    "read_endpoints",
    "read_token_file",
    "write_admin_token",
    "write_endpoints",
    "write_kubeconfig",
    "write_private_file",
]

ENDPOINTS_FILE: Final = "endpoints.json"
KUBECONFIG_FILE: Final = "kubeconfig"
ADMIN_TOKEN_FILE: Final = "admin.token"  # noqa: S105 (a file name, not a token)

#: The shape of a kinko bearer token (kinko.keys.auth issues them).
_ADMIN_TOKEN: Final = re.compile(r"kinko_[A-Za-z0-9_-]{43}")
#: Mode of every file written here: readable by its owner only.
FILE_MODE: Final = 0o600
#: Mode of a data folder created here.
DIR_MODE: Final = 0o700


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where a running ``kinko up`` serves, and the files a client needs to talk to it.

    ``cluster_api`` and ``key_service`` are base URLs (they may be the same server);
    ``instance`` the key service instance id; ``kms_plugin_socket`` a ``unix://`` address;
    ``ca_file`` the PEM CA that signed the servers' certificates; ``admin_token_file`` the
    file holding the Administrator's token; ``kubeconfig`` the kubeconfig file; ``root_key``
    the id of the root key the plugin wraps with, when there is one.
    """

    cluster_api: str
    key_service: str
    instance: str
    kms_plugin_socket: str
    ca_file: Path
    admin_token_file: Path
    kubeconfig: Path
    root_key: str | None = None


_STRING_FIELDS: Final = ("clusterApi", "keyService", "instance", "kmsPluginSocket")
_PATH_FIELDS: Final = ("caFile", "adminTokenFile", "kubeconfig")


def write_private_file(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically with mode 0600, replacing any file there.

    The temporary file is created 0600 (``mkstemp``) in the target's folder, so the data is
    never readable by others, not even for a moment, and the rename stays on one filesystem.

    Raises InvalidArgument (the folder does not exist or is not writable).
    """
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise InvalidArgument(f"cannot write {path}: {exc.strerror}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), FILE_MODE)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InvalidArgument(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _ensure_dir(data_dir: Path) -> None:
    try:
        data_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidArgument(f"cannot create the data folder {data_dir}: {exc.strerror}") from None


def write_endpoints(data_dir: Path, endpoints: Endpoints) -> Path:
    """Writes ``DATA_DIR/endpoints.json`` (0600, atomically) and returns its path.

    Paths are stored absolute, so the file means the same from any working directory.

    Raises InvalidArgument (the folder cannot be created or written).
    """
    doc: dict[str, object] = {
        "clusterApi": endpoints.cluster_api,
        "keyService": endpoints.key_service,
        "instance": endpoints.instance,
        "kmsPluginSocket": endpoints.kms_plugin_socket,
        "caFile": str(endpoints.ca_file.absolute()),
        "adminTokenFile": str(endpoints.admin_token_file.absolute()),
        "kubeconfig": str(endpoints.kubeconfig.absolute()),
        "rootKey": endpoints.root_key,
    }
    _ensure_dir(data_dir)
    path = data_dir / ENDPOINTS_FILE
    write_private_file(path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
    return path


def read_endpoints(data_dir: Path) -> Endpoints:
    """Reads ``DATA_DIR/endpoints.json``.

    A relative path in the file is taken relative to ``data_dir``.

    Raises InvalidArgument (no such file: ``kinko up`` is not running there; not this user's
    or not mode 0600; unreadable; not JSON; a field missing or of the wrong type; a path
    outside ``data_dir``).
    """
    path = data_dir / ENDPOINTS_FILE
    try:
        _check_private(path)
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidArgument(
            f"no {ENDPOINTS_FILE} in {data_dir}: is kinko up running there?"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InvalidArgument(f"cannot read {path}: {reason}") from None
    try:
        doc = json.loads(text)
    except ValueError:
        raise InvalidArgument(f"{path} is not JSON") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{path}: expected a JSON object, got {type(doc).__name__}")
    values: dict[str, str] = {}
    for name in (*_STRING_FIELDS, *_PATH_FIELDS):
        value = doc.get(name)
        if not isinstance(value, str) or not value:
            raise InvalidArgument(f"{path}: expected {name} as a non-empty string")
        values[name] = value
    root_key = doc.get("rootKey")
    if root_key is not None and not isinstance(root_key, str):
        raise InvalidArgument(f"{path}: expected rootKey as a string or null")
    return Endpoints(
        cluster_api=values["clusterApi"],
        key_service=values["keyService"],
        instance=values["instance"],
        kms_plugin_socket=values["kmsPluginSocket"],
        ca_file=_inside(data_dir, values["caFile"], "caFile", path),
        admin_token_file=_inside(data_dir, values["adminTokenFile"], "adminTokenFile", path),
        kubeconfig=_inside(data_dir, values["kubeconfig"], "kubeconfig", path),
        root_key=root_key or None,
    )


def _check_private(path: Path) -> None:
    """Refuses an ``endpoints.json`` that ``kinko up`` did not write: one another user owns or
    may change, or one whose mode lets others read it (``kinko up`` writes it 0600; a file
    checked out of a repository or copied in is not). Like ssh's StrictModes, this keeps a
    planted file from sending the caller's secrets and tokens to a server it names."""
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise InvalidArgument(
            f"refusing {path}: expected a file of this user with mode 0600, as kinko up writes "
            f"it (got owner uid {info.st_uid}, mode {info.st_mode & 0o777:04o})"
        )


def _inside(data_dir: Path, value: str, name: str, source: Path) -> Path:
    """``value`` as a path in ``data_dir``. A file naming a path elsewhere is refused: the CLI
    sends the admin token it names to the server it names, so an ``endpoints.json`` that did
    not come from ``kinko up`` (say, one committed to a repository) must not be able to make it
    read and send any other file."""
    target = (data_dir / value).resolve()
    if not target.is_relative_to(data_dir.resolve()):
        raise InvalidArgument(
            f"{source}: {name} must name a file inside {data_dir}, as kinko up writes it"
        )
    return data_dir / value


def write_admin_token(data_dir: Path, token: str) -> Path:
    """Writes the Administrator's token to ``DATA_DIR/admin.token`` (0600, atomically).

    Raises InvalidArgument (an empty token or one with a line break; an unwritable folder).
    """
    token = token.strip()
    if not token or "\n" in token or "\r" in token:
        raise InvalidArgument("expected a token on one line, got an empty or multi-line one")
    _ensure_dir(data_dir)
    path = data_dir / ADMIN_TOKEN_FILE
    write_private_file(path, (token + "\n").encode("utf-8"))
    return path


def read_token_file(path: Path) -> str:
    """The token in ``path``, without surrounding whitespace.

    Raises InvalidArgument (missing, unreadable, not UTF-8, or empty).
    """
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise InvalidArgument(f"no token file at {path}") from None
    except OSError as exc:
        raise InvalidArgument(f"cannot read the token file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidArgument(f"the token file {path} is not UTF-8 text") from None
    if not token:
        raise InvalidArgument(f"the token file {path} is empty")
    return token


def read_admin_token(endpoints: Endpoints) -> str:
    """The admin token of a running ``kinko up``, from the file its ``endpoints.json`` names.

    The file must hold a kinko token (``kinko_`` and 43 URL-safe characters): whatever else is
    there is not sent anywhere. Raises InvalidArgument (what :func:`read_token_file` raises;
    the file holds no kinko token).
    """
    token = read_token_file(endpoints.admin_token_file)
    if _ADMIN_TOKEN.fullmatch(token) is None:
        raise InvalidArgument(
            f"{endpoints.admin_token_file} holds no kinko token; expected the admin token "
            "kinko up writes there"
        )
    return token


def kubeconfig_yaml(
    *,
    server: str,
    ca_pem: bytes,
    token: str,
    cluster: str = "kinko",
    user: str = "kinko-admin",
    namespace: str = "default",
) -> str:
    """A kubeconfig (``apiVersion: v1``, ``kind: Config``) with one cluster, user and context.

    The cluster carries ``server`` and the CA as ``certificate-authority-data`` (base64 of the
    PEM), the user the bearer ``token``; the context ``cluster@…`` ties them with
    ``namespace`` and is the current one. ``kubectl --kubeconfig FILE`` and the ``kubernetes``
    client's ``config.load_kube_config(FILE)`` read it as is.

    Raises InvalidArgument (an empty server, token or CA).
    """
    if not server:
        raise InvalidArgument("expected the cluster API URL, got none")
    if not token.strip():
        raise InvalidArgument("expected a bearer token, got none")
    if not ca_pem.strip():
        raise InvalidArgument("expected the CA certificate (PEM), got nothing")
    context = f"{user}@{cluster}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {
                "name": cluster,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode("ascii"),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token.strip()}}],
        "contexts": [
            {
                "name": context,
                "context": {"cluster": cluster, "user": user, "namespace": namespace},
            }
        ],
        "current-context": context,
    }
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def write_kubeconfig(data_dir: Path, text: str) -> Path:
    """Writes ``text`` to ``DATA_DIR/kubeconfig`` (0600, atomically) and returns its path.

    Raises InvalidArgument (an unwritable folder).
    """
    _ensure_dir(data_dir)
    path = data_dir / KUBECONFIG_FILE
    write_private_file(path, text.encode("utf-8"))
    return path
