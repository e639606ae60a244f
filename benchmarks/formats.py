"""Seal and open throughput of every kinko value format next to raw AES-256-GCM.

Prints, for 1 KiB and 64 KiB values, ops/s of each provider's seal and open beside raw
``cryptography`` AES-256-GCM encrypt/decrypt of the same size measured in the same run, and
the ratio. The machine is shared and noisy, so rounds are interleaved (raw, provider, raw,
provider, ...) and the best round of each is kept; only the ratios mean much.

Targets: aesgcm ≥ 0.8 of raw; KMS v2 (type 1) seal ≥ 0.5 of raw (it adds the envelope, and one
HKDF per 65,536 writes).

Usage: ``python benchmarks/formats.py [--rounds N] [--seconds S]``
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kinko.crypto.chain import ProviderChain
from kinko.crypto.formats import AesCbc, AesGcm, Identity, KmsV2, Secretbox
from kinko.crypto.types import Transformer
from kinko.kms.envelope import KmsV2Session
from kinko.kms.plugin import LocalKeyPlugin

AAD = b"/registry/secrets/default/bench"
SIZES = (1024, 64 * 1024)


def ops_per_second(fn: Callable[[], object], seconds: float) -> float:
    """Calls ``fn`` in batches until ``seconds`` have passed; returns calls per second."""
    n = 0
    batch = 16
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            fn()
        n += batch
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def transformers() -> list[tuple[str, Transformer]]:
    key = os.urandom(32)
    session = KmsV2Session(LocalKeyPlugin(os.urandom(32)), name="bench")
    return [
        ("identity", Identity()),
        ("aescbc", AesCbc("k1", key, rng=os.urandom)),
        ("aesgcm", AesGcm("k1", key, rng=os.urandom)),
        ("secretbox", Secretbox("k1", key, rng=os.urandom)),
        ("kms v2 (type 1)", KmsV2("bench", session, rng=os.urandom)),
    ]


def measure(
    chain: ProviderChain, raw: AESGCM, plaintext: bytes, *, rounds: int, seconds: float
) -> dict[str, float]:
    """Best-of-``rounds`` ops/s of seal, open and raw GCM, interleaved round by round."""
    stored = chain.seal(plaintext, aad=AAD)
    raw_ct = raw.encrypt(b"\0" * 12, plaintext, AAD)
    cases: dict[str, Callable[[], object]] = {
        "raw_enc": lambda: raw.encrypt(os.urandom(12), plaintext, AAD),
        "seal": lambda: chain.seal(plaintext, aad=AAD),
        "raw_dec": lambda: raw.decrypt(b"\0" * 12, raw_ct, AAD),
        "open": lambda: chain.open(stored, aad=AAD),
    }
    best = dict.fromkeys(cases, 0.0)
    for _ in range(rounds):
        for name, fn in cases.items():
            best[name] = max(best[name], ops_per_second(fn, seconds))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.3, help="per measurement")
    args = parser.parse_args()

    raw = AESGCM(os.urandom(32))
    print(
        f"{'provider':<18}{'size':>7} {'seal/s':>10} {'raw enc/s':>10} {'ratio':>6}   "
        f"{'open/s':>10} {'raw dec/s':>10} {'ratio':>6}"
    )
    for size in SIZES:
        plaintext = os.urandom(size)
        for name, transformer in transformers():
            best = measure(
                ProviderChain([transformer]),
                raw,
                plaintext,
                rounds=args.rounds,
                seconds=args.seconds,
            )
            print(
                f"{name:<18}{size // 1024:>5}Ki {best['seal']:>10,.0f} {best['raw_enc']:>10,.0f} "
                f"{best['seal'] / best['raw_enc']:>6.2f}   {best['open']:>10,.0f} "
                f"{best['raw_dec']:>10,.0f} {best['open'] / best['raw_dec']:>6.2f}"
            )
    print(
        "\nratio = provider ops/s / raw AES-256-GCM ops/s on the same size, same run "
        "(raw encrypt includes drawing its 12-byte nonce)."
    )
    print("targets: aesgcm >= 0.80 of raw; kms v2 (type 1) seal >= 0.50 of raw")


if __name__ == "__main__":
    main()
