"""A real SoftHSM2 token for tests, in its own directory with its own configuration.

The fixture writes a ``softhsm2.conf`` (file object store, ``log.level = ERROR``) into a
temporary directory, points ``SOFTHSM2_CONF`` at it in ``os.environ`` and initialises a
token labelled ``kinko-test`` with ``softhsm2-util``. SoftHSM reads ``SOFTHSM2_CONF`` once,
when the module is loaded, and python-pkcs11 loads a module once per process, so there is
one token per test session (the fixture is session-scoped) and every test uses fresh labels.

Without ``softhsm2-util`` or the module the tests that need it are skipped — and
``.ci/run`` turns a skipped ``hsm``-marked test into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kinko.hsm.pkcs11 import SOFTHSM2_MODULE

TOKEN_LABEL = "kinko-test"
_MODULE_CANDIDATES = (SOFTHSM2_MODULE, "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")


@dataclass(frozen=True, slots=True)
class SoftHsmToken:
    """An initialised SoftHSM2 token: where its module and configuration are, and its PINs."""

    module: str
    label: str
    conf: Path
    pin: str = field(repr=False)
    so_pin: str = field(repr=False)


def softhsm_module() -> str | None:
    """The SoftHSM2 module: ``$KINKO_SOFTHSM_MODULE`` or Debian's path; None if absent."""
    explicit = os.environ.get("KINKO_SOFTHSM_MODULE")
    for candidate in (explicit, *_MODULE_CANDIDATES):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@contextmanager
def softhsm_token(directory: Path) -> Iterator[SoftHsmToken]:
    """Initialises a token under ``directory``, with SOFTHSM2_CONF set while in use.

    Skips the calling test when SoftHSM2 is not installed.
    """
    util = shutil.which("softhsm2-util")
    module = softhsm_module()
    if util is None or module is None:
        pytest.skip("SoftHSM2 is not installed (softhsm2-util or libsofthsm2.so missing)")
    tokens = directory / "tokens"
    tokens.mkdir(mode=0o700, parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    pin, so_pin = os.urandom(8).hex(), os.urandom(8).hex()
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        command = [util, "--init-token", "--free", "--label", TOKEN_LABEL]
        command += ["--so-pin", so_pin, "--pin", pin]
        subprocess.run(
            command,
            check=True,
            capture_output=True,
            timeout=30,
        )
        yield SoftHsmToken(module=module, label=TOKEN_LABEL, conf=conf, pin=pin, so_pin=so_pin)
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous
