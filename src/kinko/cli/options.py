"""Click options shared by several ``kinko`` commands, and the one way they open an HSM."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import click

from kinko.errors import InvalidArgument
from kinko.hsm.port import Hsm

#: Where the key service keeps its root keys: the soft keystore of the data folder (NOT
#: HSM-grade) or a PKCS#11 token.
HSM_KINDS: Final = ("soft", "pkcs11")


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


_HSM_OPTIONS = [
    click.option(
        "--hsm",
        "hsm_kind",
        type=click.Choice(HSM_KINDS),
        default="soft",
        show_default=True,
        help="Where root keys live: the soft keystore (NOT HSM-grade) or a PKCS#11 token.",
    ),
    click.option("--pkcs11-module", help="Path of the PKCS#11 library (with --hsm pkcs11)."),
    click.option("--token-label", help="Label of the PKCS#11 token (with --hsm pkcs11)."),
    click.option(
        "--pin-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="With --hsm pkcs11: a file whose first line is the user PIN.",
    ),
    click.option("--pin-env", help="Name of the environment variable holding the user PIN."),
]


def hsm_options(f: click.decorators.FC) -> click.decorators.FC:
    """``--hsm soft|pkcs11`` and the PKCS#11 module, token label and PIN source, passed as
    ``hsm_kind``, ``pkcs11_module``, ``token_label``, ``pin_file`` and ``pin_env``; open
    them with :func:`open_hsm`."""
    for option in reversed(_HSM_OPTIONS):
        f = option(f)
    return f


def check_hsm_options(
    kind: str,
    module: str | None,
    label: str | None,
    pin_file: Path | None,
    pin_env: str | None,
) -> None:
    """Raises InvalidArgument: PKCS#11 options without ``--hsm pkcs11``, ``--hsm pkcs11``
    without its module and token label, or an unknown kind."""
    if kind not in HSM_KINDS:
        raise InvalidArgument(f"expected --hsm {' or '.join(HSM_KINDS)}, got {kind!r}")
    if kind == "soft":
        if module or label or pin_file or pin_env:
            raise InvalidArgument("PKCS#11 options need --hsm pkcs11")
        return
    if not module or not label:
        raise InvalidArgument("--hsm pkcs11 needs --pkcs11-module and --token-label")


@contextlib.contextmanager
def open_hsm(
    kind: str,
    data_dir: Path,
    module: str | None,
    label: str | None,
    pin_file: Path | None,
    pin_env: str | None,
) -> Iterator[Hsm]:
    """The HSM the options name, closed on exit: the soft keystore under ``DATA_DIR/keystore``
    or a logged-in session on the PKCS#11 token ``label`` of ``module``.

    Raises InvalidArgument (as :func:`check_hsm_options`; a PIN source missing or unreadable),
    HsmUnavailable (the module, token or login failed).
    """
    check_hsm_options(kind, module, label, pin_file, pin_env)
    if kind == "soft":
        from kinko.hsm.soft import SoftKeystore
        from kinko.keys.deployment import KEYSTORE_DIR

        yield SoftKeystore(data_dir / KEYSTORE_DIR)
        return
    assert module is not None
    assert label is not None
    from kinko.hsm.pkcs11 import Pkcs11Hsm, pin_from

    with Pkcs11Hsm(module, label, pin_from(pin_file, pin_env)) as hsm:
        yield hsm
