"""Wrap and unwrap throughput of each HSM adapter next to raw pyca AES-256-GCM.

Wraps a 32-byte seed (what the KMS v2 plugin wraps) with a 12-byte nonce and a short AAD,
through the in-memory twin, the soft keystore and a PKCS#11 token (SoftHSM2, set up in a
temporary directory when ``softhsm2-util`` is installed), and prints ops/s beside raw
``AESGCM`` measured in the same run, with the ratio. One run; the machine is shared and
noisy, so only the order of magnitude of the ratios means much.

Usage: ``python benchmarks/hsm.py [--seconds S]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kinko.hsm.memory import MemoryHsm
from kinko.hsm.port import Hsm
from kinko.hsm.soft import SoftKeystore

SEED = os.urandom(32)
AAD = b"kms-v2-seed"
NONCE = os.urandom(12)


def ops_per_second(fn: Callable[[], object], seconds: float) -> float:
    """Calls ``fn`` in batches until ``seconds`` have passed; returns calls per second."""
    n, batch = 0, 16
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        n += batch
        now = time.perf_counter()
        if now - start >= seconds:
            return n / (now - start)


def softhsm(directory: Path) -> Hsm | None:
    """A Pkcs11Hsm on a fresh SoftHSM2 token under ``directory``, or None without SoftHSM2."""
    util = shutil.which("softhsm2-util")
    module = "/usr/lib/softhsm/libsofthsm2.so"
    if util is None or not Path(module).is_file():
        return None
    (directory / "tokens").mkdir(parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\n"
        "log.level = ERROR\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin = os.urandom(8).hex()
    command = [util, "--init-token", "--free", "--label", "bench"]
    command += ["--so-pin", os.urandom(8).hex(), "--pin", pin]
    subprocess.run(command, check=True, capture_output=True)
    from kinko.hsm.pkcs11 import Pkcs11Hsm

    return Pkcs11Hsm(module, "bench", pin)


def measure(hsm: Hsm, name: str, seconds: float) -> tuple[float, float]:
    """Wrap and unwrap ops/s of one adapter with a key generated for the run."""
    handle = hsm.generate_key(f"bench-{name}")
    ct = hsm.wrap(handle, SEED, aad=AAD, nonce=NONCE)
    wrap = ops_per_second(lambda: hsm.wrap(handle, SEED, aad=AAD, nonce=NONCE), seconds)
    unwrap = ops_per_second(lambda: hsm.unwrap(handle, ct, aad=AAD, nonce=NONCE), seconds)
    return wrap, unwrap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        adapters: list[tuple[str, Hsm]] = [
            ("memory twin", MemoryHsm()),
            ("soft keystore", SoftKeystore(Path(tmp) / "soft")),
        ]
        token = softhsm(Path(tmp) / "softhsm")
        if token is not None:
            adapters.append(("pkcs11 (SoftHSM2)", token))
        raw = AESGCM(os.urandom(32))
        raw_ct = raw.encrypt(NONCE, SEED, AAD)
        raw_wrap = ops_per_second(lambda: raw.encrypt(NONCE, SEED, AAD), args.seconds)
        raw_unwrap = ops_per_second(lambda: raw.decrypt(NONCE, raw_ct, AAD), args.seconds)
        print(
            f"{'adapter':<20} {'wrap ops/s':>12} {'vs raw':>8} {'unwrap ops/s':>13} {'vs raw':>8}"
        )
        print(
            f"{'raw pyca AES-GCM':<20} {raw_wrap:>12,.0f} {1:>8.2f} {raw_unwrap:>13,.0f} {1:>8.2f}"
        )
        for name, hsm in adapters:
            w, u = measure(hsm, name, args.seconds)
            print(f"{name:<20} {w:>12,.0f} {w / raw_wrap:>8.2f} {u:>13,.0f} {u / raw_unwrap:>8.2f}")
        if token is None:
            print("pkcs11: skipped (SoftHSM2 is not installed)")


if __name__ == "__main__":
    main()
