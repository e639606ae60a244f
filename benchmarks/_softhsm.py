"""A throw-away SoftHSM2 token in a temporary folder, for the benchmark scripts.

Job: when ``softhsm2-util`` and the PKCS#11 module are installed, point ``SOFTHSM2_CONF`` at
a token folder under ``work``, initialise a token with random PINs and open it as a
:class:`~kinko.hsm.pkcs11.Pkcs11Hsm`; otherwise yield None so a benchmark can skip its
SoftHSM2 part.

Plain functions and a context manager, no pytest: the scripts run as ``python
benchmarks/<name>.py``, which puts this folder first on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from kinko.hsm.port import Hsm

SOFTHSM_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
)
TOKEN_LABEL = "kinko-bench"  # noqa: S105 (a token label, not a secret)


@contextlib.contextmanager
def softhsm_token(work: Path) -> Iterator[Hsm | None]:
    """An opened throw-away token under ``work``, or None when SoftHSM2 is not installed."""
    util = shutil.which("softhsm2-util")
    module = next((m for m in SOFTHSM_MODULES if Path(m).is_file()), None)
    if util is None or module is None:
        yield None
        return
    from kinko.hsm.pkcs11 import Pkcs11Hsm

    tokens = work / "softhsm-tokens"
    tokens.mkdir(mode=0o700)
    conf = work / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin = os.urandom(8).hex()
    subprocess.run(
        [
            *(util, "--init-token", "--free", "--label", TOKEN_LABEL),
            *("--so-pin", os.urandom(8).hex(), "--pin", pin),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    with Pkcs11Hsm(module, TOKEN_LABEL, pin) as hsm:
        yield hsm
