"""A key service and a root-key KMS plugin on in-memory twins, shared by unit and integration
tests: MemoryStore, a MemoryHsm that counts its wrap and unwrap calls, a fake wall clock for
the key service and a fake monotonic clock for the plugin's health cache and the key
service's caches.

The plugin reaches the service either in-process (:class:`ServiceRootKeys`) or, with
``remote=True``, through the real Key Protect REST app and :class:`KeyProtectClient` (over
FastAPI's in-process transport), with a Reader token named ``kms-plugin``. A remote plugin
may reuse a key's state for ``STATE_TTL`` on its monotonic clock, so every helper that changes
the key lets that much time pass afterwards (:meth:`World.settle`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from kinko.api.keyprotect import create_keyprotect_app
from kinko.hsm.memory import MemoryDevice, MemoryHsm
from kinko.hsm.port import Hsm
from kinko.keys.audit import MemoryAuditSink
from kinko.keys.auth import Principal, Role, TokenBook, issue_token
from kinko.keys.client import KeyProtectClient
from kinko.keys.service import KeyService
from kinko.kms.rootkey import STATE_TTL, RootKeyAccess, RootKeyPlugin, ServiceRootKeys
from kinko.kms.rootkey_remote import RemoteRootKeys
from kinko.store.memory import MemoryStore
from kinko.store.port import Store

T0 = datetime(2030, 1, 1, tzinfo=UTC)
INSTANCE = "inst-kms"
PLUGIN = Principal(name="kms-plugin", instance=INSTANCE, roles=frozenset({Role.READER}))
ADMIN = Principal(name="admin", instance=INSTANCE, roles=frozenset({Role.MANAGER, Role.WRITER}))
PURGER = Principal(name="purger", instance=INSTANCE, roles=frozenset({Role.KEY_PURGE}))
CLUSTER = Principal(
    name="cluster-service", instance=INSTANCE, roles=frozenset({Role.READER}), service=True
)
CLUSTER_CRN = "crn:v1:kinko:local:containers-kubernetes:local:a/kinko:inst-kms::cluster:c1"
SEED = bytes(range(32))


class WallClock:
    """The key service's clock: aware UTC, moved by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class MonoClock:
    """The plugin's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingHsm(MemoryHsm):
    """The memory twin, counting wrap and unwrap calls (health checks must not hammer it)."""

    def __init__(self, device: MemoryDevice | None = None) -> None:
        super().__init__(device)
        self.wraps = 0
        self.unwraps = 0

    @property
    def calls(self) -> int:
        return self.wraps + self.unwraps

    def wrap(self, handle: str, plaintext: bytes, *, aad: bytes, nonce: bytes) -> bytes:
        self.wraps += 1
        return super().wrap(handle, plaintext, aad=aad, nonce=nonce)

    def unwrap(self, handle: str, ciphertext: bytes, *, aad: bytes, nonce: bytes) -> bytes:
        self.unwraps += 1
        return super().unwrap(handle, ciphertext, aad=aad, nonce=nonce)


@dataclass
class World:
    """One key service with one root key, and a plugin on it."""

    store: Store
    hsm: Hsm
    audit: MemoryAuditSink
    clock: WallClock
    mono: MonoClock
    service: KeyService
    key_id: str
    remote: bool = False
    plugins: list[RootKeyPlugin] = field(default_factory=list)
    _client: KeyProtectClient | None = None

    def access(self) -> RootKeyAccess:
        """The plugin's way to the key service: in-process, or over the REST API."""
        if not self.remote:
            return ServiceRootKeys(self.service, PLUGIN, INSTANCE)
        if self._client is None:
            issued = issue_token(
                rng=os.urandom,
                instance=INSTANCE,
                roles=[Role.READER.value],
                now=self.clock(),
                name=PLUGIN.name,
            )
            TokenBook(self.store).add(issued.record)
            http = TestClient(
                create_keyprotect_app(self.service),
                base_url="http://127.0.0.1",
                raise_server_exceptions=False,
            )
            self._client = KeyProtectClient(
                "http://127.0.0.1", token=issued.token, instance=INSTANCE, http=http
            )
        return RemoteRootKeys(self._client, clock=self.mono)

    def plugin(self, key_ref: str | None = None, **kwargs: object) -> RootKeyPlugin:
        access = self.access()
        plugin = RootKeyPlugin(
            access,
            key_ref or self.key_id,
            clock=self.mono,
            **kwargs,  # type: ignore[arg-type]
        )
        self.plugins.append(plugin)
        return plugin

    def settle(self) -> None:
        """Let a state a remote plugin may hold run out (an in-process one sees changes at
        once)."""
        self.mono.advance(STATE_TTL)

    def new_key(self, name: str, **kwargs: object) -> str:
        view = self.service.create_key(ADMIN, INSTANCE, name=name, **kwargs)  # type: ignore[arg-type]
        return view.id

    def rotate(self, key_ref: str | None = None) -> str:
        """Rotates (an hour after the last rotation, as Key Protect allows); returns the new
        version id."""
        self.clock.advance(hours=1, seconds=1)
        view = self.service.rotate(ADMIN, INSTANCE, key_ref or self.key_id)
        self.settle()
        return view.key_version.id

    def disable(self) -> None:
        self.service.disable(ADMIN, INSTANCE, self.key_id)
        self.settle()

    def enable(self) -> None:
        self.clock.advance(seconds=31)
        self.service.enable(ADMIN, INSTANCE, self.key_id)
        self.settle()

    def delete(self, *, force: bool = False) -> None:
        self.service.delete_key(ADMIN, INSTANCE, self.key_id, force=force)
        self.settle()

    def restore(self) -> None:
        self.clock.advance(seconds=31)
        self.service.restore_key(ADMIN, INSTANCE, self.key_id)
        self.settle()

    def purge(self) -> None:
        self.clock.advance(hours=4, seconds=1)
        self.service.purge_key(PURGER, INSTANCE, self.key_id)
        self.settle()


def make_world(
    hsm: Hsm | None = None,
    store: Store | None = None,
    *,
    remote: bool = False,
    **key_options: object,
) -> World:
    """A fresh world whose root key ``kms-root`` (alias ``kms-root-alias``) exists."""
    store = store if store is not None else MemoryStore()
    hsm = hsm if hsm is not None else CountingHsm()
    audit, clock, mono = MemoryAuditSink(), WallClock(), MonoClock()
    service = KeyService(store, hsm, audit=audit, clock=clock, rng=os.urandom, monotonic=mono)
    view = service.create_key(
        ADMIN,
        INSTANCE,
        name="kms-root",
        aliases=("kms-root-alias",),
        **key_options,  # type: ignore[arg-type]
    )
    return World(store, hsm, audit, clock, mono, service, view.id, remote=remote)
