"""A migrating process for the crash tests: one :class:`Migrator` run, then exit.

Usage: ``python migrate_child.py --config FILE (--sqlite FILE | --etcd URL...) [--batch N]``.

It reads the EncryptionConfiguration (KMS v2 providers through gRPC on their sockets, as in
production), migrates ``secrets`` and prints the report as one JSON line. Exit codes: 0 done,
3 Conflict (another migration), 4 an UnavailableError (the run paused). The tests kill it
with SIGKILL at random points and start it again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kinko.cluster.encryption import EncryptionConfigSource
from kinko.cluster.migrate import Migrator
from kinko.errors import Conflict, UnavailableError
from kinko.store.etcd import EtcdClient
from kinko.store.etcd_store import EtcdStore
from kinko.store.port import Store
from kinko.store.sqlite import SqliteStore


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--sqlite", type=Path)
    parser.add_argument("--etcd", nargs="*", default=[])
    parser.add_argument("--batch", type=int, default=10)
    args = parser.parse_args()
    store: Store
    closers = []
    if args.sqlite is not None:
        sqlite = SqliteStore(args.sqlite, busy_timeout=30.0)
        store = sqlite
        closers.append(sqlite.close)
    else:
        client = EtcdClient(args.etcd, timeout=30.0)
        store = EtcdStore(client)
        closers.append(client.close)
    source = EncryptionConfigSource(args.config, poll_kms=False)
    closers.append(source.close)
    try:
        report = Migrator(store, source, batch=args.batch, resources=["secrets"]).run("secrets")
    except Conflict as exc:
        print(json.dumps({"conflict": str(exc)}), flush=True)
        return 3
    except UnavailableError as exc:
        print(json.dumps({"paused": str(exc)}), flush=True)
        return 4
    finally:
        for close in reversed(closers):
            close()
    print(
        json.dumps(
            {
                "done": report.done,
                "rewritten": report.rewritten,
                "skipped": report.skipped,
                "conflicts": report.conflicts,
                "unreadable": report.unreadable,
                "resumed": report.resumed,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
