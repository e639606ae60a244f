"""The CLI's one error-mapping table: exception class → exit code.

Commands let :class:`~kinko.errors.KinkoError` propagate; :class:`KinkoGroup` prints the
message (which never carries key bytes, plaintext or ciphertext) and exits with the code
below. The most specific class in the table wins.
"""

from __future__ import annotations

from kinko import errors

#: Exit codes. 1 is reserved for unexpected failures (bugs), 2 for click usage errors.
EXIT_CODES: dict[type[errors.KinkoError], int] = {
    errors.ConfigError: 3,
    errors.Invalid: 4,
    errors.InvalidArgument: 4,
    errors.DecryptionError: 5,
    errors.NotFound: 6,
    errors.Conflict: 7,
    errors.Unauthorized: 8,
    errors.Forbidden: 9,
    errors.Gone: 14,
    errors.CallerError: 4,
    errors.CorruptMetadata: 15,
    errors.PluginError: 10,
    errors.StoreUnavailable: 11,
    errors.HsmUnavailable: 13,
    errors.KeyServiceUnavailable: 16,
    errors.UnavailableError: 12,
    errors.KinkoError: 1,
}


def exit_code_for(exc: errors.KinkoError) -> int:
    """The exit code of the most specific class of ``exc`` that the table names."""
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1
