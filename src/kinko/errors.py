"""The one error hierarchy of kinko.

Every error kinko raises on purpose is a :class:`KinkoError`. Transports map these classes
to their own codes in exactly one table each (CLI exit codes live in ``kinko.cli.errors``;
gRPC status codes in ``kinko.kms.server``).

::

    KinkoError
    ├── CallerError                 the request is wrong; retrying it unchanged will fail again
    │   ├── InvalidArgument         malformed input (bytes, fields, options)
    │   │   ├── ConfigError         an EncryptionConfiguration field is invalid (names its path)
    │   │   └── EnvelopeError       a stored KMS v2 EncryptedObject is malformed
    │   ├── DecryptionError         a value could not be decrypted (deliberately opaque)
    │   ├── NotFound                a named thing does not exist
    │   └── Conflict                compare-and-swap lost, or the object changed meanwhile
    └── UnavailableError            the environment failed; the same request may work later
        ├── PluginError             a KMS plugin is unreachable, timed out, unhealthy or
        │                           answered something invalid
        ├── StoreUnavailable        the store (etcd, SQLite) did not answer
        └── HsmUnavailable          the HSM or keystore did not answer, or refused the session

Invariant: no message carries key bytes, plaintext or ciphertext. Messages say what was
expected and what came, using sizes, names and field paths only.
"""

from __future__ import annotations


class KinkoError(Exception):
    """Root of every error kinko raises on purpose."""


class CallerError(KinkoError):
    """The request itself is wrong; the same request will fail again."""


class InvalidArgument(CallerError):
    """Malformed input: bytes, fields or options that do not satisfy their rules."""


class ConfigError(InvalidArgument):
    """An EncryptionConfiguration is invalid.

    ``path`` names the offending field, e.g. ``resources[1].providers[0].aescbc.keys[0].secret``.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.detail = message
        super().__init__(f"{path}: {message}" if path else message)


class EnvelopeError(InvalidArgument):
    """A stored KMS v2 ``EncryptedObject`` is malformed (missing or oversize fields)."""


class DecryptionError(CallerError):
    """A value could not be decrypted.

    Deliberately opaque: a wrong key, a tampered byte, an AAD from another storage key and a
    truncated payload all look the same to the caller, so the error is no oracle. ``reason``
    is one of the two fixed strings below and never carries data.
    """

    NO_MATCHING_PROVIDER = "no configured provider matches the value's prefix"
    NOT_AUTHENTIC = "no configured provider could decrypt the value"

    def __init__(self, reason: str = NOT_AUTHENTIC) -> None:
        self.reason = reason
        super().__init__(f"cannot decrypt value: {reason}")


class NotFound(CallerError):
    """A named thing (key, object, resource) does not exist."""


class Conflict(CallerError):
    """A compare-and-swap lost: the object changed since it was read."""


class UnavailableError(KinkoError):
    """The environment failed; the same request may succeed later."""


class PluginError(UnavailableError):
    """A KMS plugin is unreachable, timed out, is unhealthy, or answered something invalid."""


class StoreUnavailable(UnavailableError):
    """The key-value store did not answer, or the outcome of a write is unknown."""


class HsmUnavailable(UnavailableError):
    """The HSM (a PKCS#11 token) or the soft keystore did not answer, or refused the session.

    Raised for an unloadable module, a missing token, a refused login, a lost session or an
    unreadable keystore file. The message names the token or path, never a PIN or key bytes.
    """
