"""Generate kinko's own deterministic test vectors: ``tests/vectors/kinko_generated.json``.

Upstream Kubernetes recorded no aescbc, secretbox or KMS v1 ciphertexts, so these vectors
pin kinko's output for every provider: fixed keys, fixed plaintexts, fixed storage keys and
a fixed random stream. Each vector records the exact random bytes its seal drew
(``rng_hex``), so a test can replay them and must get ``value_hex`` again; the tests also
rebuild every value with raw ``cryptography``/PyNaCl calls, independently of kinko.

aescbc, aesgcm, secretbox and KMS v2 values are sealed by kinko's transformers. kinko never
writes KMS v1 (it is read-only, as upstream has deprecated it), so those values are built
here with raw ``cryptography`` in the layout kube-apiserver wrote: GCM payloads (1.25+) and
CBC payloads (up to 1.24).

The random stream is ``SHA-256(label ‖ uint64-BE counter)`` blocks, consumed in order.

Usage: ``python scripts/gen_vectors.py [--check]``; ``--check`` exits 1 if the file on disk
differs from what would be generated.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from pathlib import Path
from typing import TypeAlias

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kinko.crypto.formats import AesCbc, AesGcm, KmsV2, Secretbox
from kinko.crypto.types import EncryptedObject, KmsWriteState, Transformer

OUTPUT = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "kinko_generated.json"

Json: TypeAlias = "bool | int | str | list[Json] | dict[str, Json] | None"

PLAINTEXTS: dict[str, bytes] = {
    "empty": b"",
    "short": b"pandas are the best",
    "one-block": b"0123456789abcdef",
    "secret": b'k8s\x00\n\x0c\n\x02v1\x12\x06Secret{"api_key":"086a7ffc"}',
}


class RecordingRng:
    """The deterministic stream; remembers every byte handed out since the last ``take``."""

    def __init__(self, label: str) -> None:
        self._label = label.encode()
        self._counter = 0
        self._buffer = b""
        self._drawn = bytearray()

    def __call__(self, size: int) -> bytes:
        while len(self._buffer) < size:
            block = hashlib.sha256(self._label + self._counter.to_bytes(8, "big")).digest()
            self._buffer += block
            self._counter += 1
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        self._drawn += out
        return out

    def take(self) -> bytes:
        """The bytes drawn since the last call."""
        out = bytes(self._drawn)
        self._drawn.clear()
        return out


class Base64Keys:
    """The upstream test plugin's wrapping: the wrapped seed is its base64 text."""

    def __init__(self, seed: bytes, key_id: str, annotations: dict[str, bytes]) -> None:
        self._state = KmsWriteState(
            seed=seed,
            key_id=key_id,
            encrypted_dek_source=base64.b64encode(seed),
            annotations=annotations,
        )

    def write_state(self) -> KmsWriteState:
        return self._state

    def dek_source(self, obj: EncryptedObject) -> bytes:
        return base64.b64decode(obj.encrypted_dek_source)

    def seed_epoch(self) -> int:
        return 0

    def kept_hit(self, obj: EncryptedObject, epoch: int, count: int = 1) -> bool:
        return True

    def current_key_id(self) -> str | None:
        return self._state.key_id


def _sealed(transformer: Transformer, rng: RecordingRng, plaintext: bytes, aad: bytes) -> Json:
    rng.take()
    value = transformer.seal(plaintext, aad=aad)
    return {
        "plaintext_hex": plaintext.hex(),
        "aad": aad.decode(),
        "rng_hex": rng.take().hex(),
        "value_hex": value.hex(),
    }


def local_vectors() -> list[Json]:
    out: list[Json] = []
    keys = RecordingRng("kinko/vectors/keys")
    cases = [
        ("aescbc", 16, "short"),
        ("aescbc", 16, "empty"),
        ("aescbc", 24, "one-block"),
        ("aescbc", 32, "secret"),
        ("aescbc", 32, "empty"),
        ("aesgcm", 16, "short"),
        ("aesgcm", 24, "secret"),
        ("aesgcm", 32, "empty"),
        ("aesgcm", 32, "one-block"),
        ("secretbox", 32, "short"),
        ("secretbox", 32, "empty"),
        ("secretbox", 32, "secret"),
    ]
    for index, (provider, size, text) in enumerate(cases):
        key = keys(size)
        keys.take()
        name = f"key{index}"
        rng = RecordingRng(f"kinko/vectors/{provider}/{index}")
        transformer: Transformer
        if provider == "aescbc":
            transformer = AesCbc(name, key, rng=rng)
        elif provider == "aesgcm":
            transformer = AesGcm(name, key, rng=rng)
        else:
            transformer = Secretbox(name, key, rng=rng)
        aad = f"/registry/secrets/default/{provider}-{index}".encode()
        vector: dict[str, Json] = {
            "name": f"{provider}-{size * 8}-{text}",
            "provider": provider,
            "key_name": name,
            "key_hex": key.hex(),
        }
        sealed = _sealed(transformer, rng, PLAINTEXTS[text], aad)
        assert isinstance(sealed, dict)
        vector.update(sealed)
        out.append(vector)
    return out


def kms_v1_vectors() -> list[Json]:
    """Built with raw ``cryptography``: kinko reads KMS v1 but never writes it."""
    out: list[Json] = []
    for index, (cipher, text) in enumerate(
        [("gcm", "short"), ("gcm", "empty"), ("cbc", "short"), ("cbc", "secret")]
    ):
        rng = RecordingRng(f"kinko/vectors/kms-v1/{index}")
        dek = rng(32)
        rng.take()
        wrapped = base64.b64encode(dek)
        plaintext = PLAINTEXTS[text]
        aad = f"/registry/secrets/default/kms-v1-{index}".encode()
        if cipher == "gcm":
            nonce = rng(12)
            payload = nonce + AESGCM(dek).encrypt(nonce, plaintext, aad)
        else:
            iv = rng(16)
            padder = padding.PKCS7(128).padder()
            padded = padder.update(plaintext) + padder.finalize()
            encryptor = Cipher(algorithms.AES(dek), modes.CBC(iv)).encryptor()
            payload = iv + encryptor.update(padded) + encryptor.finalize()
        value = b"k8s:enc:kms:v1:kms-v1:" + len(wrapped).to_bytes(2, "big") + wrapped + payload
        out.append(
            {
                "name": f"kms-v1-{cipher}-{text}",
                "provider": "kms_v1",
                "kms_name": "kms-v1",
                "dek_hex": dek.hex(),
                "payload_cipher": cipher,
                "stale": cipher == "cbc",
                "plaintext_hex": plaintext.hex(),
                "aad": aad.decode(),
                "rng_hex": rng.take().hex(),
                "value_hex": value.hex(),
            }
        )
    return out


def kms_v2_vectors() -> list[Json]:
    out: list[Json] = []
    cases: list[tuple[str, str, dict[str, bytes]]] = [
        ("short", "1", {"local-kek.kms.kubernetes.io": b"encrypted-local-kek"}),
        ("secret", "2", {"local-kek.kms.kubernetes.io": b"encrypted-local-kek"}),
        ("empty", "key-version-3", {}),
        (
            "short",
            "sha256:0123abcd",
            {"version.encryption.remote.io": b"1", "a.example.com": b"\x00\xff"},
        ),
    ]
    for index, (text, key_id, notes) in enumerate(cases):
        rng = RecordingRng(f"kinko/vectors/kms-v2/{index}")
        seed = rng(32)
        rng.take()
        transformer = KmsV2("kms-v2", Base64Keys(seed, key_id, notes), rng=rng)
        aad = f"/registry/secrets/default/kms-v2-{index}".encode()
        vector: dict[str, Json] = {
            "name": f"kms-v2-type1-{text}-{index}",
            "provider": "kms_v2",
            "kms_name": "kms-v2",
            "seed_hex": seed.hex(),
            "key_id": key_id,
            "annotations_hex": {k: v.hex() for k, v in notes.items()},
        }
        sealed = _sealed(transformer, rng, PLAINTEXTS[text], aad)
        assert isinstance(sealed, dict)
        vector.update(sealed)
        out.append(vector)
    return out


def generate() -> str:
    document: dict[str, Json] = {
        "description": (
            "kinko's own deterministic vectors. Local and KMS v2 values are sealed by kinko's "
            "transformers; KMS v1 values are built with raw cryptography in kube-apiserver's "
            "layout. rng_hex is every random byte the seal drew, in order. The KMS mocks are "
            "base64: a wrapped seed or DEK is the base64 text of its plaintext."
        ),
        "generator": "scripts/gen_vectors.py",
        "rng": "SHA-256(label || uint64 big-endian counter) blocks, consumed in order",
        "vectors": [*local_vectors(), *kms_v1_vectors(), *kms_v2_vectors()],
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    text = generate()
    if args.check:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date; run scripts/gen_vectors.py", file=sys.stderr)
            return 1
        print(f"{OUTPUT} is up to date")
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
