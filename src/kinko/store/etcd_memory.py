"""An in-memory twin of :class:`~kinko.store.etcd.EtcdClient` for fast unit tests.

It keeps etcd's revision rules: one store-wide revision counter, bumped by every put and
delete (a CAS batch bumps it once per written op here, which is finer than etcd's one
revision per txn but keeps every observable compare outcome the same); ``mod_revision`` of a
missing key is 0, so ``CasPut(mod_revision=0)`` creates only if absent. Not thread-safe.
The real-part tests in ``tests/integration`` hold the real client to the same behaviour.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from kinko.errors import InvalidArgument
from kinko.store.etcd import DEFAULT_PAGE_LIMIT, CasPut, KeyValue


class MemoryEtcd:
    """A dict of keys with etcd-style revisions."""

    def __init__(self) -> None:
        self._data: dict[bytes, KeyValue] = {}
        self._revision = 1

    @property
    def revision(self) -> int:
        return self._revision

    def get(self, key: bytes) -> KeyValue | None:
        """Raises nothing."""
        return self._data.get(key)

    def put(self, key: bytes, value: bytes) -> int:
        """Raises InvalidArgument (empty key)."""
        if not key:
            raise InvalidArgument("etcd Put: key is not provided")
        self._revision += 1
        old = self._data.get(key)
        self._data[key] = KeyValue(
            key=key,
            value=value,
            mod_revision=self._revision,
            create_revision=old.create_revision if old else self._revision,
            version=old.version + 1 if old else 1,
        )
        return self._revision

    def delete(self, key: bytes) -> bool:
        """Raises nothing."""
        if self._data.pop(key, None) is None:
            return False
        self._revision += 1
        return True

    def range_prefix(self, prefix: bytes, *, limit: int = DEFAULT_PAGE_LIMIT) -> Iterator[KeyValue]:
        """A snapshot of the keys under ``prefix``, in key order. Raises InvalidArgument."""
        if limit < 1:
            raise InvalidArgument(f"page limit must be at least 1, got {limit}")
        snapshot = [self._data[k] for k in sorted(self._data) if k.startswith(prefix)]
        yield from snapshot

    def count_prefix(self, prefix: bytes) -> int:
        """Raises nothing."""
        return sum(1 for k in self._data if k.startswith(prefix))

    def cas_batch(self, ops: Sequence[CasPut]) -> list[bool]:
        """Raises InvalidArgument (the same key twice)."""
        if len({op.key for op in ops}) != len(ops):
            raise InvalidArgument("a key appears twice in one CAS batch")
        results: list[bool] = []
        for op in ops:
            current = self._data.get(op.key)
            if (current.mod_revision if current else 0) != op.mod_revision:
                results.append(False)
                continue
            self.put(op.key, op.value)
            results.append(True)
        return results
