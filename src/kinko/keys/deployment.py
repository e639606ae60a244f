"""Open the key service of a kinko data folder: its store, its HSM and its audit log.

Job: one place that knows how a data folder is laid out, so every process that runs the key
service in-process (``kinko kms serve --data-dir``, tests, benchmarks) opens the same files
the same way. The layout is the one ``kinko keys serve`` and ``kinko token`` use::

    DIR/              created 0700 if missing
      kinko.db        the SQLite store (metadata, tokens, registrations)
      keystore/       the soft keystore (NOT HSM-grade), unless an HSM is passed in
      audit.log       one JSON line per key service action, fsynced

Invariants: several processes may open one folder at once (SQLite serialises writers and
the key service's writes are guarded transactions); only one process should create keys in
the soft keystore at a time (its label check is per process). :meth:`Deployment.close`
closes what this module opened and never an HSM the caller passed in.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Final

from kinko.errors import InvalidArgument
from kinko.hsm.port import Hsm
from kinko.keys.audit import FileAuditSink, SyncMode
from kinko.keys.service import KeyService
from kinko.store.port import Store
from kinko.store.sqlite import SqliteStore

STORE_FILE: Final = "kinko.db"
KEYSTORE_DIR: Final = "keystore"
AUDIT_FILE: Final = "audit.log"


def utc_now() -> datetime:
    """The key service's clock: aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Deployment:
    """An opened data folder: the service and the parts it runs on."""

    data_dir: Path
    service: KeyService
    store: SqliteStore = field(repr=False)
    hsm: Hsm = field(repr=False)
    audit: FileAuditSink = field(repr=False)
    owns_hsm: bool = False

    def close(self) -> None:
        """Closes the store and the audit log (and the HSM if this module opened it, which
        for the soft keystore holds nothing to close). Raises nothing."""
        self.audit.close()
        self.store.close()

    def __enter__(self) -> Deployment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """Where a deployment keeps its metadata: etcd when endpoints are given, else SQLite in
    the data folder."""

    data_dir: Path
    etcd_endpoints: tuple[str, ...] = ()
    etcd_cacert: Path | None = None
    etcd_cert: Path | None = None
    etcd_key: Path | None = None


@contextlib.contextmanager
def open_store(options: StoreOptions) -> Iterator[tuple[Store, str]]:
    """The store and a one-line description of it; closed on exit.

    Raises InvalidArgument (TLS files with http endpoints), StoreUnavailable.
    """
    if options.etcd_endpoints:
        from kinko.store.etcd import EtcdClient
        from kinko.store.etcd_store import EtcdStore

        client = EtcdClient(
            options.etcd_endpoints,
            cacert=options.etcd_cacert,
            cert=options.etcd_cert,
            key=options.etcd_key,
        )
        try:
            yield EtcdStore(client), f"etcd {', '.join(options.etcd_endpoints)}"
        finally:
            client.close()
        return
    options.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = options.data_dir / STORE_FILE
    store = SqliteStore(path)
    try:
        yield store, f"SQLite {path}"
    finally:
        store.close()


def open_deployment(
    data_dir: Path,
    *,
    hsm: Hsm | None = None,
    clock: Callable[[], datetime] = utc_now,
    rng: Callable[[int], bytes] = os.urandom,
    audit_sync: SyncMode = "interval",
) -> Deployment:
    """Opens (creating on first use) the data folder ``data_dir`` (module docstring).

    ``hsm``: the HSM holding the root keys (default: the soft keystore in the folder).
    ``audit_sync``: when audit records reach the disk (:class:`FileAuditSink`).

    Raises InvalidArgument (``data_dir`` is not a folder), StoreUnavailable (the SQLite file),
    HsmUnavailable (the soft keystore), UnavailableError (the audit log).
    """
    data_dir = Path(data_dir)
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise InvalidArgument(f"data folder {data_dir}: exists and is not a folder") from exc
    except OSError as exc:
        raise InvalidArgument(f"data folder {data_dir}: cannot create: {exc.strerror}") from exc
    owns_hsm = hsm is None
    if hsm is None:
        from kinko.hsm.soft import SoftKeystore

        hsm = SoftKeystore(data_dir / KEYSTORE_DIR)
    store = SqliteStore(data_dir / STORE_FILE)
    try:
        audit = FileAuditSink(data_dir / AUDIT_FILE, sync=audit_sync)
    except BaseException:
        store.close()
        raise
    service = KeyService(store, hsm, audit=audit, clock=clock, rng=rng)
    return Deployment(data_dir, service, store, hsm, audit, owns_hsm)


def open_key_service(
    data_dir: Path,
    *,
    hsm: Hsm | None = None,
    clock: Callable[[], datetime] = utc_now,
    rng: Callable[[int], bytes] = os.urandom,
) -> KeyService:
    """The key service of ``data_dir``, for a process that keeps it until it exits (use
    :func:`open_deployment` to close it earlier).

    Raises what :func:`open_deployment` raises.
    """
    return open_deployment(data_dir, hsm=hsm, clock=clock, rng=rng).service
