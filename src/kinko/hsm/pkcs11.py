"""The PKCS#11 adapter: root keys on a real token (a network HSM, or SoftHSM2 in tests).

Keys are AES-256 objects stored on the token (CKA_TOKEN), CKA_SENSITIVE and not
CKA_EXTRACTABLE, with CKA_LABEL = the caller's label and CKA_ID = 16 random bytes whose hex
is the handle. AES-256-GCM (CKM_AES_GCM, 128-bit tag) runs inside the token; SoftHSM2's
output is byte-identical to pyca's ``AESGCM``.

Sessions: one long-lived, logged-in R/W session per (module, token) per process, shared by
every :class:`Pkcs11Hsm` on that token and guarded by one lock. Measured on SoftHSM2 2.6.1:
a session per call costs about 1.1 ms (open + C_Login) against 27 µs for a GCM operation on a
long-lived session, and PKCS#11 login state is per application, so a second logged-in session
would fail with CKR_USER_ALREADY_LOGGED_IN anyway. A lost session (device removed, session
closed) is dropped and reopened on the next call.

Session copies: wrap and unwrap run on a **session copy** of the token key (C_CopyObject with
CKA_TOKEN false), made once per key per session. The copy keeps CKA_SENSITIVE true and
CKA_EXTRACTABLE false (PKCS#11 lets no copy loosen them; SoftHSM2 refuses with
AttributeReadOnly), lives only inside the token's session and dies with it. It exists for
speed: SoftHSM2 checks a token object's file before every use (18 system calls per GCM
operation, 4 on a session object; 28 against 15 µs in a loop). A token that refuses copies
(CKA_COPYABLE false) is used through the token object itself. The token object is looked up
again (an object search, about 200 µs) when the copy was last checked more than
``verify_interval`` ago (1 s): a key another process destroyed stops working here within
that interval, its copy destroyed, the caller told NotFound. :meth:`Pkcs11Hsm.destroy`
destroys the copy and the token object at once. A copy is made on a key's first use; one
that fails (a token short of memory) leaves the token object in use and is tried again at
the next lookup; a key unused for ``IDLE_COPY_SECONDS`` (60 s) loses its copy at the next
lookup of any key. A stale cached object is looked up again once.

Invariants:

- Token found by label, never by slot number (SoftHSM reassigns slots).
- Labels are unique: checked before creating (PKCS#11 itself allows duplicates, which later
  make lookups by label ambiguous).
- Foreign exceptions are wrapped at this seam: :class:`~kinko.errors.HsmUnavailable` for the
  device, :class:`~kinko.errors.DecryptionError` for any unwrap failure that is not the
  device's. Messages name the token and the PKCS#11 error class, never a PIN or any bytes.
- Every object search is run to its end (``list(...)``), so no half-finished search is left
  to a finaliser once its session is gone (python-pkcs11 then prints SessionHandleInvalid).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.mechanisms import GCMParams

from kinko.errors import Conflict, DecryptionError, HsmUnavailable, InvalidArgument, NotFound
from kinko.hsm.port import (
    TAG_SIZE,
    check_handle,
    check_label,
    check_material,
    check_nonce,
    new_handle,
    unwrap_input_ok,
)

#: Where Debian's softhsm2 package puts its module.
SOFTHSM2_MODULE = "/usr/lib/softhsm/libsofthsm2.so"

T = TypeVar("T")

#: How long a session copy is used before the token object is looked up again (seconds).
VERIFY_INTERVAL: Final = 1.0
#: A key not used for this long loses its session copy at the next lookup of any key.
IDLE_COPY_SECONDS: Final = 60.0

#: Errors meaning the device or session is gone: the connection is dropped and reopened.
_DEVICE_ERRORS: tuple[type[Exception], ...] = (
    p11e.DeviceError,
    p11e.DeviceMemory,
    p11e.DeviceRemoved,
    p11e.HostMemory,
    p11e.SessionClosed,
    p11e.SessionHandleInvalid,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.UserNotLoggedIn,
)
#: Errors meaning a cached object handle went stale (another client destroyed it).
_STALE_OBJECT: tuple[type[Exception], ...] = (p11e.ObjectHandleInvalid, p11e.KeyHandleInvalid)

_KEY_CAPABILITIES = MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT


def pin_from(file: Path | None, env: str | None) -> str:
    """The token's user PIN, read from ``file`` (first line) or else the variable ``env``.

    Raises InvalidArgument if neither is given, the file cannot be read, the variable is unset
    or the PIN is empty. Messages name the file or variable, never the PIN.
    """
    if file is not None:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"cannot read the PIN file {file}: {exc}") from exc
        pin = text.splitlines()[0].strip() if text.strip() else ""
        if not pin:
            raise InvalidArgument(f"expected a PIN in {file}, got an empty file")
        return pin
    if env is not None:
        pin = os.environ.get(env, "")
        if not pin:
            raise InvalidArgument(f"expected the PIN in ${env}, but it is unset or empty")
        return pin
    raise InvalidArgument("expected a PIN file or a PIN environment variable, got neither")


@dataclass(slots=True)
class _Held:
    """A key as this process uses it: the token object, its session copy (None when the
    token refuses copies), and the monotonic time the token object was last seen."""

    token: Any
    copy: Any
    verified: float
    #: The object wraps and unwraps run on: the copy, else the token object (a field, not a
    #: property: it is read on every call).
    usable: Any = field(init=False)

    def __post_init__(self) -> None:
        self.usable = self.token if self.copy is None else self.copy


class _Connection:
    """One logged-in session to one token, shared by every adapter on it in this process."""

    def __init__(self, module_path: str, token_label: str, pin: str) -> None:
        self.module_path = module_path
        self.token_label = token_label
        self.lock = threading.RLock()
        self.users = 0
        self.keys: dict[str, _Held] = {}
        self._pin = pin
        self._session: Any = None
        try:
            self._token = pkcs11.lib(module_path).get_token(token_label=token_label)
        except p11e.NoSuchToken as exc:
            raise HsmUnavailable(f"no PKCS#11 token labelled {token_label!r}") from exc
        except (p11e.PKCS11Error, OSError, RuntimeError) as exc:
            raise HsmUnavailable(
                f"cannot load PKCS#11 module {module_path}: {type(exc).__name__}"
            ) from exc
        info = f"{self._token.manufacturer_id} {self._token.model}".strip()
        self.info = info
        self.hsm_grade = "softhsm" not in info.lower()

    def pin_matches(self, pin: str) -> bool:
        """Whether ``pin`` is the PIN this connection logged in with (constant time)."""
        return hmac.compare_digest(pin.encode("utf-8"), self._pin.encode("utf-8"))

    def session(self) -> Any:
        """The logged-in session, opened if needed. Call with ``lock`` held."""
        if self._session is None:
            try:
                self._session = self._token.open(rw=True, user_pin=self._pin)
            except p11e.PKCS11Error as exc:
                raise HsmUnavailable(
                    f"cannot log in to PKCS#11 token {self.token_label!r}: {type(exc).__name__}"
                ) from exc
        return self._session

    def drop(self) -> None:
        """Forgets the session and cached objects (after a device error, or on last close);
        closing the session destroys its session copies."""
        session, self._session = self._session, None
        self.keys.clear()
        if session is not None:
            # A session that fails to close is gone already; nothing is left to release.
            with contextlib.suppress(p11e.PKCS11Error):
                session.close()


_connections: dict[tuple[str, str], _Connection] = {}
_connections_lock = threading.Lock()


class Pkcs11Hsm:
    """An :class:`~kinko.hsm.port.Hsm` on a PKCS#11 token, found by its label.

    Usable as a context manager; :meth:`close` logs out when the last adapter on the token in
    this process closes. ``verify_interval`` and ``monotonic``: how often, on which clock, a
    session copy's token object is looked up again (module docstring).
    """

    __slots__ = ("_closed", "_conn", "_monotonic", "_verify_interval")

    def __init__(
        self,
        module_path: str,
        token_label: str,
        pin: str,
        *,
        verify_interval: float = VERIFY_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Loads the module and logs in. Raises HsmUnavailable, InvalidArgument (a negative
        ``verify_interval``)."""
        if not verify_interval >= 0:
            raise InvalidArgument(f"verify_interval must be at least 0 s, got {verify_interval}")
        self._verify_interval = verify_interval
        self._monotonic = monotonic
        with _connections_lock:
            conn = _connections.get((module_path, token_label))
            if conn is None:
                conn = _Connection(module_path, token_label, pin)
                with conn.lock:
                    conn.session()
                _connections[(module_path, token_label)] = conn
            elif not conn.pin_matches(pin):
                raise HsmUnavailable(
                    f"PKCS#11 token {token_label!r} is open in this process with another PIN"
                )
            with conn.lock:
                conn.users += 1
        self._conn = conn
        self._closed = False

    def __repr__(self) -> str:
        return f"Pkcs11Hsm(token={self._conn.token_label!r}, module={self._conn.module_path!r})"

    def __enter__(self) -> Pkcs11Hsm:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Releases this adapter; the last one on the token closes the session. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with _connections_lock, self._conn.lock:
            self._conn.users -= 1
            if self._conn.users == 0:
                self._conn.drop()
                del _connections[(self._conn.module_path, self._conn.token_label)]

    @property
    def hsm_grade(self) -> bool:
        """False for SoftHSM (software keys in files), True for any other token."""
        return self._conn.hsm_grade

    @property
    def description(self) -> str:
        """The token's label, manufacturer and model."""
        grade = "" if self.hsm_grade else ", not HSM-grade"
        return f"PKCS#11 token {self._conn.token_label!r} ({self._conn.info}{grade})"

    def generate_key(self, label: str) -> str:
        """Creates an AES-256 key on the token. Raises InvalidArgument, Conflict, HsmUnavailable."""
        check_label(label)
        handle = new_handle()

        def create(session: Any) -> Any:
            return session.generate_key(
                KeyType.AES,
                256,
                label=label,
                id=bytes.fromhex(handle),
                store=True,
                capabilities=_KEY_CAPABILITIES,
                template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                },
            )

        return self._create(label, handle, create)

    def import_key(self, label: str, material: bytes) -> str:
        """Stores AES-256 material on the token as a sensitive, non-extractable key.

        Raises InvalidArgument, Conflict, HsmUnavailable.
        """
        check_label(label)
        check_material(material)
        handle = new_handle()

        def create(session: Any) -> Any:
            return session.create_object(
                {
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: KeyType.AES,
                    Attribute.VALUE: bytes(material),
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.ENCRYPT: True,
                    Attribute.DECRYPT: True,
                    Attribute.WRAP: False,
                    Attribute.UNWRAP: False,
                    Attribute.LABEL: label,
                    Attribute.ID: bytes.fromhex(handle),
                }
            )

        return self._create(label, handle, create)

    def wrap(self, handle: str, plaintext: bytes, *, aad: bytes, nonce: bytes) -> bytes:
        """AES-256-GCM encrypt on the token. Raises InvalidArgument, NotFound, HsmUnavailable."""
        check_nonce(nonce)
        params = GCMParams(nonce, aad, TAG_SIZE * 8)
        out: bytes = self._with_key(
            handle,
            lambda key: key.encrypt(plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=params),
            "wrap",
        )
        return out

    def unwrap(self, handle: str, ciphertext: bytes, *, aad: bytes, nonce: bytes) -> bytes:
        """AES-256-GCM decrypt on the token. Raises DecryptionError, NotFound, HsmUnavailable."""
        # Both branches go through _with_key, which checks the handle first.
        if not unwrap_input_ok(ciphertext, aad=aad, nonce=nonce):
            # Still resolve the handle, so an unknown key is NotFound whatever the input.
            self._with_key(handle, lambda key: None, "unwrap")
            raise DecryptionError()
        params = GCMParams(nonce, aad, TAG_SIZE * 8)

        def decrypt(key: Any) -> bytes:
            try:
                out: bytes = key.decrypt(
                    ciphertext, mechanism=Mechanism.AES_GCM, mechanism_param=params
                )
            except (*_DEVICE_ERRORS, *_STALE_OBJECT):
                raise
            except p11e.PKCS11Error as exc:
                # SoftHSM reports a tag mismatch as a plain CKR_FUNCTION_FAILED; every other
                # refusal of the input is just as opaque to the caller.
                raise DecryptionError() from exc
            return out

        result: bytes = self._with_key(handle, decrypt, "unwrap")
        return result

    def destroy(self, handle: str) -> None:
        """Destroys this process's session copy, then the key object on the token (looked up
        afresh). Raises NotFound, HsmUnavailable."""
        check_handle(handle)
        conn = self._conn
        with conn.lock:
            try:
                held = conn.keys.pop(handle, None)
                if held is not None:
                    self._destroy_copy(held)
                found = self._find(handle)
                if not found:
                    raise NotFound("no key with that handle")
                found[0].destroy()
            except p11e.PKCS11Error as exc:
                raise self._unavailable("destroy", exc) from exc

    def _create(self, label: str, handle: str, create: Callable[[Any], Any]) -> str:
        conn = self._conn
        with conn.lock:
            try:
                session = conn.session()
                existing = list(
                    session.get_objects(
                        {
                            Attribute.CLASS: ObjectClass.SECRET_KEY,
                            Attribute.LABEL: label,
                            Attribute.TOKEN: True,
                        }
                    )
                )
                if existing:
                    raise Conflict(f"expected a new key label, got {label!r}, which is in use")
                create(session)  # Its session copy is made on first use (_key).
            except p11e.PKCS11Error as exc:
                raise self._unavailable("create a key", exc) from exc
        return handle

    def _with_key(self, handle: str, use: Callable[[Any], T], operation: str) -> T:
        """Runs ``use(key)`` under the lock, retrying once if the cached object went stale."""
        check_handle(handle)
        conn = self._conn
        with conn.lock:
            for attempt in (1, 2):
                try:
                    return use(self._key(handle))
                except _STALE_OBJECT as exc:
                    conn.keys.pop(handle, None)
                    if attempt == 2:
                        raise self._unavailable(operation, exc) from exc
                except p11e.PKCS11Error as exc:
                    raise self._unavailable(operation, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _key(self, handle: str) -> Any:
        """The object to use for ``handle``: its session copy (or the token object), looked
        up again when last checked more than ``verify_interval`` ago; a copy that could not
        be made is tried again then. Call with the lock held. Raises NotFound (destroying a
        copy whose token object is gone)."""
        conn = self._conn
        held = conn.keys.get(handle)
        now = self._monotonic()
        if held is not None and now - held.verified < self._verify_interval:
            return held.usable
        self._sweep(now, keep=handle)
        found = self._find(handle)
        if not found:
            if held is not None:
                del conn.keys[handle]
                self._destroy_copy(held)
            raise NotFound("no key with that handle")
        (token,) = found
        copy = held.copy if held is not None and held.copy is not None else self._copy(token)
        held = conn.keys[handle] = _Held(token, copy, now)
        return held.usable

    def _sweep(self, now: float, *, keep: str) -> None:
        """Destroys the session copies of keys (other than ``keep``) not used for
        :data:`IDLE_COPY_SECONDS`, so the session keeps no copy of a key it no longer uses."""
        keys = self._conn.keys
        idle = [
            h for h, held in keys.items() if h != keep and now - held.verified >= IDLE_COPY_SECONDS
        ]
        for handle in idle:
            self._destroy_copy(keys.pop(handle))

    @staticmethod
    def _destroy_copy(held: _Held) -> None:
        if held.copy is not None:
            with contextlib.suppress(*_STALE_OBJECT):
                held.copy.destroy()

    def _find(self, handle: str) -> list[Any]:
        """The token objects with CKA_ID = handle (never session copies): none or one.
        Raises HsmUnavailable (several)."""
        found = list(
            self._conn.session().get_objects(
                {
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.ID: bytes.fromhex(handle),
                    Attribute.TOKEN: True,
                }
            )
        )
        if len(found) > 1:
            raise HsmUnavailable(
                f"token {self._conn.token_label!r} holds {len(found)} keys with one CKA_ID"
            )
        return found

    @staticmethod
    def _copy(token: Any) -> Any:
        """A session copy of a token key, or None if the token will not make one now (it
        refuses copies, or is short of memory): the token object is used instead. Raises the
        errors that mean the device or session is gone."""
        try:
            return token.copy({Attribute.TOKEN: False})
        except (p11e.DeviceMemory, p11e.HostMemory):
            return None
        except _DEVICE_ERRORS:
            raise
        except p11e.PKCS11Error:
            return None

    def _unavailable(self, operation: str, exc: Exception) -> HsmUnavailable:
        """Wraps a PKCS#11 error; drops the session if the device or session is gone."""
        if isinstance(exc, _DEVICE_ERRORS):
            self._conn.drop()
        return HsmUnavailable(
            f"PKCS#11 token {self._conn.token_label!r} failed to {operation}: {type(exc).__name__}"
        )
