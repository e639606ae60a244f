"""A key service served over HTTPS on a real loopback port, in this process.

The same stack as ``kinko keys serve`` (SQLite store, soft keystore or a given HSM, file
audit log, the generated CA and server certificate, uvicorn with TLS), run on a thread so
that tests can move its clock: Key Protect's timing rules (30 s before enable or restore,
4 h before purge, 1 h between rotations) are then checked without sleeping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kinko.api.keyprotect import create_keyprotect_app
from kinko.api.server import BackgroundServer, ListenAddress, TlsConfig
from kinko.api.tls import ensure_server_tls
from kinko.hsm.port import Hsm
from kinko.hsm.soft import SoftKeystore
from kinko.keys.audit import FileAuditSink
from kinko.keys.auth import TokenBook, issue_token
from kinko.keys.service import KeyService
from kinko.store.sqlite import SqliteStore


class MovableClock:
    """The service's clock: real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


@dataclass
class RunningKeyService:
    url: str
    ca: Path
    data_dir: Path
    store: SqliteStore
    service: KeyService
    clock: MovableClock
    audit_log: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def add_token(
        self, name: str, instance: str, *roles: str, service_identity: bool = False
    ) -> str:
        """Issues a token straight into the store (as ``kinko token create`` does)."""
        issued = issue_token(
            rng=os.urandom,
            instance=instance,
            roles=roles,
            now=self.clock(),
            service=service_identity,
            name=name,
        )
        TokenBook(self.store).add(issued.record)
        self.tokens[name] = issued.token
        return issued.token


@contextmanager
def running_keyservice(
    data_dir: Path,
    *,
    hsm: Hsm | None = None,
    echo: bool = False,
    import_key_bits: int = 2048,
) -> Iterator[RunningKeyService]:
    """The key service on ``https://127.0.0.1:<free port>``, stopped on exit."""
    data_dir.mkdir(parents=True, exist_ok=True)
    clock = MovableClock()
    with ExitStack() as stack:
        store = SqliteStore(data_dir / "kinko.db")
        stack.callback(store.close)
        device = hsm if hsm is not None else SoftKeystore(data_dir / "keystore")
        audit = stack.enter_context(FileAuditSink(data_dir / "audit.log"))
        service = KeyService(
            store,
            device,
            audit=audit,
            clock=clock,
            rng=os.urandom,
            import_key_bits=import_key_bits,
        )
        tls = ensure_server_tls(data_dir)
        app = create_keyprotect_app(service, echo=echo)
        server = stack.enter_context(
            BackgroundServer(app, ListenAddress("127.0.0.1", 0), tls=TlsConfig(tls.cert, tls.key))
        )
        yield RunningKeyService(
            url=f"https://127.0.0.1:{server.port}",
            ca=tls.ca_cert,
            data_dir=data_dir,
            store=store,
            service=service,
            clock=clock,
            audit_log=data_dir / "audit.log",
        )
