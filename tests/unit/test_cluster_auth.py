"""Cluster tokens: the role, verb, resource and namespace table, records and the token book."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from kinko.cluster.auth import (
    CLUSTER_TOKENS,
    BookedToken,
    ClusterPrincipal,
    ClusterRole,
    ClusterTokenBook,
    Verb,
    authorize,
    cluster_token_path,
    cluster_token_record,
    dump_cluster_token,
    find_token,
    issue_cluster_token,
    list_tokens,
    load_cluster_token,
    revocation,
    revoke_token,
)
from kinko.errors import (
    Conflict,
    CorruptMetadata,
    Forbidden,
    InvalidArgument,
    NotFound,
    Unauthorized,
)
from kinko.keys.auth import TokenBook, dump_token, hash_token, issue_token, token_path
from kinko.store.memory import MemoryStore
from kinko.store.port import Delete, Put

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

ADMIN = ClusterPrincipal("root", ClusterRole.ADMINISTRATOR, None)
EDITOR_A = ClusterPrincipal("ed", ClusterRole.EDITOR, frozenset({"team-a"}))
EDITOR_ALL = ClusterPrincipal("ed-all", ClusterRole.EDITOR, None)
VIEWER_A = ClusterPrincipal("vi", ClusterRole.VIEWER, frozenset({"team-a", "team-c"}))
VIEWER_ALL = ClusterPrincipal("vi-all", ClusterRole.VIEWER, None)

WRITES = (Verb.CREATE, Verb.UPDATE, Verb.PATCH, Verb.DELETE)
READS = (Verb.GET, Verb.LIST)


def _rng(n: int) -> bytes:
    return bytes(range(n))


# --- authorize: the table ------------------------------------------------------------------

# (principal, verb, resource, namespace) → include_data (True/False) or Forbidden.
ALLOWED: list[tuple[ClusterPrincipal, Verb, str, str | None, bool]] = [
    *[(ADMIN, v, r, "team-b", True) for v in (*READS, *WRITES) for r in ("secrets", "configmaps")],
    (ADMIN, Verb.LIST, "secrets", None, True),
    (ADMIN, Verb.FORCE_DELETE, "secrets", "team-b", True),
    (ADMIN, Verb.FORCE_DELETE, "configmaps", "kube-system", True),
    (ADMIN, Verb.ADMIN, "", None, True),
    (ADMIN, Verb.ADMIN, "secrets", None, True),
    *[
        (EDITOR_A, v, r, "team-a", True)
        for v in (*READS, *WRITES)
        for r in ("secrets", "configmaps")
    ],
    *[(EDITOR_ALL, v, "secrets", "any-ns", True) for v in (*READS, *WRITES)],
    (EDITOR_ALL, Verb.LIST, "configmaps", None, True),
    (VIEWER_A, Verb.GET, "secrets", "team-a", False),
    (VIEWER_A, Verb.LIST, "secrets", "team-c", False),
    (VIEWER_A, Verb.GET, "configmaps", "team-a", True),
    (VIEWER_A, Verb.LIST, "configmaps", "team-c", True),
    (VIEWER_ALL, Verb.LIST, "secrets", None, False),
    (VIEWER_ALL, Verb.LIST, "configmaps", None, True),
    (VIEWER_ALL, Verb.GET, "secrets", "elsewhere", False),
]

FORBIDDEN: list[tuple[ClusterPrincipal, Verb, str, str | None, str]] = [
    *[(VIEWER_A, v, "secrets", "team-a", "needs an Editor or Administrator token") for v in WRITES],
    *[(VIEWER_ALL, v, "configmaps", "x", "needs an Editor or Administrator token") for v in WRITES],
    (
        VIEWER_A,
        Verb.CREATE,
        "secrets",
        "team-b",
        "Viewer token for namespaces team-a, team-c may not create secrets in namespace team-b: "
        "needs an Editor or Administrator token for namespace team-b",
    ),
    (
        VIEWER_A,
        Verb.GET,
        "secrets",
        "team-b",
        "Viewer token for namespaces team-a, team-c may not get secrets in namespace team-b: "
        "needs a Viewer, Editor or Administrator token for namespace team-b",
    ),
    (
        VIEWER_A,
        Verb.LIST,
        "configmaps",
        None,
        "may not list configmaps across all namespaces: needs a Viewer, Editor or "
        "Administrator token for all namespaces",
    ),
    (EDITOR_A, Verb.LIST, "secrets", None, "Editor token for namespaces team-a may not list"),
    (EDITOR_A, Verb.GET, "configmaps", "team-b", "for namespace team-b"),
    (EDITOR_A, Verb.DELETE, "secrets", "team-b", "may not delete secrets in namespace team-b"),
    (EDITOR_A, Verb.FORCE_DELETE, "secrets", "team-a", "needs an Administrator token"),
    (EDITOR_ALL, Verb.FORCE_DELETE, "configmaps", "team-a", "needs an Administrator token"),
    (VIEWER_ALL, Verb.FORCE_DELETE, "secrets", "team-a", "needs an Administrator token"),
    (
        EDITOR_ALL,
        Verb.ADMIN,
        "",
        None,
        "Editor token for all namespaces may not change encryption or read cluster status: "
        "needs an Administrator token",
    ),
    (VIEWER_ALL, Verb.ADMIN, "", None, "needs an Administrator token"),
    (EDITOR_A, Verb.ADMIN, "", "team-a", "needs an Administrator token"),
]


@pytest.mark.parametrize(("principal", "verb", "resource", "namespace", "include"), ALLOWED)
def test_allowed(
    principal: ClusterPrincipal, verb: Verb, resource: str, namespace: str | None, include: bool
) -> None:
    assert authorize(principal, verb, resource, namespace) is include


@pytest.mark.parametrize(("principal", "verb", "resource", "namespace", "message"), FORBIDDEN)
def test_forbidden(
    principal: ClusterPrincipal, verb: Verb, resource: str, namespace: str | None, message: str
) -> None:
    with pytest.raises(Forbidden) as info:
        authorize(principal, verb, resource, namespace)
    assert message in str(info.value)
    assert info.value.reason_code == "FORBIDDEN_ERR"


def test_a_viewer_never_gets_secret_data() -> None:
    for principal in (VIEWER_A, VIEWER_ALL):
        for verb in READS:
            assert authorize(principal, verb, "secrets", "team-a") is False


@pytest.mark.parametrize("verb", list(Verb))
def test_no_principal_is_unauthorized(verb: Verb) -> None:
    with pytest.raises(Unauthorized):
        authorize(None, verb, "secrets", "team-a")


@pytest.mark.parametrize(
    ("verb", "resource", "namespace", "message"),
    [
        (Verb.GET, "pods", "team-a", "got 'pods'"),
        (Verb.LIST, "", "team-a", "got ''"),
        (Verb.GET, "Secrets", "team-a", "got 'Secrets'"),
        (Verb.ADMIN, "nodes", None, "got 'nodes'"),
        (Verb.GET, "secrets", None, "get secrets needs a namespace"),
        (Verb.CREATE, "configmaps", None, "needs a namespace"),
        (Verb.FORCE_DELETE, "secrets", None, "needs a namespace"),
    ],
)
def test_bad_requests_are_invalid_arguments(
    verb: Verb, resource: str, namespace: str | None, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        authorize(ADMIN, verb, resource, namespace)


# --- records -------------------------------------------------------------------------------


def test_issue_cluster_token_has_the_key_service_format() -> None:
    token, record = issue_cluster_token(
        rng=_rng, role="Viewer", namespaces=["team-b", "team-a"], now=NOW
    )
    key_service = issue_token(rng=_rng, instance="i", roles=["Reader"], now=NOW)
    assert token == key_service.token
    assert record.token_hash == hash_token(token) == key_service.record.token_hash
    assert record.name == key_service.record.name == f"token-{record.token_hash[:12]}"
    assert record.role is ClusterRole.VIEWER
    assert record.namespaces == frozenset({"team-a", "team-b"})
    assert record.created == NOW
    assert record.expires is None
    principal = record.principal()
    assert principal == ClusterPrincipal(
        name=record.name,
        role=ClusterRole.VIEWER,
        namespaces=frozenset({"team-a", "team-b"}),
        token_id=record.token_hash[:12],
    )
    assert token not in repr(record)


@pytest.mark.parametrize(
    ("role", "namespaces", "expected"),
    [
        ("Administrator", None, None),
        ("Administrator", [], None),
        ("Editor", ["*"], None),
        ("Viewer", ("a", "b-1", "a"), frozenset({"a", "b-1"})),
        ("Editor", ["x" * 63], frozenset({"x" * 63})),
    ],
)
def test_record_scopes(role: str, namespaces: list[str] | None, expected: object) -> None:
    record = cluster_token_record(
        token_hash="0" * 64, role=role, namespaces=namespaces, name="n", now=NOW
    )
    assert record.namespaces == expected


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"role": "Admin"}, "among Administrator, Editor, Viewer, got 'Admin'"),
        ({"role": "viewer"}, "got 'viewer'"),
        ({"role": "Administrator", "namespaces": ["a"]}, "no namespaces for an Administrator"),
        ({"role": "Administrator", "namespaces": ["*"]}, "no namespaces for an Administrator"),
        ({"role": "Editor", "namespaces": None}, "at least one namespace"),
        ({"role": "Viewer", "namespaces": []}, "at least one namespace"),
        ({"namespaces": ["*", "a"]}, "'\\*' alone"),
        ({"namespaces": ["Team-A"]}, "got 'Team-A'"),
        ({"namespaces": ["a_b"]}, "got 'a_b'"),
        ({"namespaces": ["-a"]}, "got '-a'"),
        ({"namespaces": ["x" * 64]}, "at most 63"),
        ({"namespaces": [""]}, "got ''"),
        ({"name": "two words"}, "token name"),
        ({"name": ""}, "token name"),
        ({"name": "x" * 129}, "token name"),
        ({"token_hash": "ABC"}, "64 lowercase hex"),
        ({"now": datetime(2025, 3, 1)}, "time zone"),
        ({"expires": datetime(2026, 1, 1)}, "expiry"),
        ({"expires": NOW}, "later than now"),
        ({"expires": NOW - timedelta(seconds=1)}, "later than now"),
    ],
)
def test_bad_records_are_refused(changes: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "token_hash": "a" * 64,
        "role": "Editor",
        "namespaces": ["team-a"],
        "name": "ci",
        "now": NOW,
        **changes,
    }
    with pytest.raises(InvalidArgument, match=message):
        cluster_token_record(**args)  # type: ignore[arg-type]


def test_issue_refuses_short_randomness() -> None:
    with pytest.raises(InvalidArgument, match="32 random bytes"):
        issue_cluster_token(rng=lambda n: b"x", role="Administrator", namespaces=None, now=NOW)


def test_stored_form_is_canonical_versioned_json_and_round_trips() -> None:
    _, record = issue_cluster_token(
        rng=_rng,
        role="Editor",
        namespaces=["b", "a"],
        now=NOW.astimezone(timezone(timedelta(hours=2))),
        name="alice@example.com",
        expires=NOW + timedelta(days=1),
    )
    data = dump_cluster_token(record)
    doc = json.loads(data)
    assert doc == {
        "v": 1,
        "tokenHash": record.token_hash,
        "role": "Editor",
        "namespaces": ["a", "b"],
        "name": "alice@example.com",
        "created": "2025-03-01T12:00:00+00:00",
        "expires": "2025-03-02T12:00:00+00:00",
    }
    assert data == json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    assert load_cluster_token(data) == record
    for role, namespaces in (("Administrator", None), ("Viewer", ["*"])):
        _, other = issue_cluster_token(rng=_rng, role=role, namespaces=namespaces, now=NOW)
        assert json.loads(dump_cluster_token(other))["namespaces"] == ["*"]
        assert load_cluster_token(dump_cluster_token(other)) == other


def _doc(**changes: object) -> bytes:
    doc: dict[str, object] = {
        "v": 1,
        "tokenHash": "a" * 64,
        "role": "Viewer",
        "namespaces": ["a"],
        "name": "n",
        "created": "2025-03-01T12:00:00+00:00",
        **changes,
    }
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        b"[]",
        b"not json",
        _doc(v=2),
        _doc(v=...),
        _doc(role="Root"),
        _doc(role=...),
        _doc(namespaces="a"),
        _doc(namespaces=[1]),
        _doc(namespaces=[]),
        _doc(namespaces=["A"]),
        _doc(role="Administrator"),  # an Administrator's scope must be ["*"]
        _doc(role="Administrator", namespaces=[]),
        _doc(name="two words"),
        _doc(name=5),
        _doc(tokenHash="short"),
        _doc(created="yesterday"),
        _doc(created="2025-03-01T12:00:00"),
        _doc(created=7),
        _doc(expires="2025-03-01T12:00:00"),
    ],
)
def test_corrupt_records_are_corrupt_metadata(data: bytes) -> None:
    with pytest.raises(CorruptMetadata, match="malformed"):
        load_cluster_token(data)


# --- the token book ------------------------------------------------------------------------


def test_book_round_trip_stores_only_the_hash() -> None:
    store = MemoryStore()
    book = ClusterTokenBook(store)
    token, record = issue_cluster_token(
        rng=_rng, role="Editor", namespaces=["team-a"], now=NOW, name="ci"
    )
    book.add(record)
    entry = store.get(CLUSTER_TOKENS + record.token_hash.encode())
    assert entry is not None
    assert token.encode() not in entry.value
    assert cluster_token_path(record.token_hash) == entry.key
    principal = book.authenticate(token, now=NOW + timedelta(days=3650))
    assert principal == record.principal()
    assert principal.token_id == hash_token(token)[:12]
    # The key service's book does not know a cluster-only token.
    with pytest.raises(Unauthorized):
        TokenBook(store).authenticate(token, now=NOW)


def test_add_twice_is_a_conflict() -> None:
    book = ClusterTokenBook(MemoryStore())
    _, record = issue_cluster_token(rng=_rng, role="Administrator", namespaces=None, now=NOW)
    book.add(record)
    with pytest.raises(Conflict):
        book.add(record)


def test_one_token_in_both_books_in_one_transaction() -> None:
    store = MemoryStore()
    issued = issue_token(rng=_rng, instance="inst", roles=["Manager"], now=NOW, name="admin")
    record = cluster_token_record(
        token_hash=issued.record.token_hash,
        role="Administrator",
        namespaces=None,
        name=issued.record.name,
        now=NOW,
    )
    book = ClusterTokenBook(store)
    book.add(record, key_token=issued.record)
    assert book.authenticate(issued.token, now=NOW).role is ClusterRole.ADMINISTRATOR
    assert TokenBook(store).authenticate(issued.token, now=NOW).instance == "inst"
    # A second registration conflicts and writes neither record.
    other = MemoryStore()
    TokenBook(other).add(issued.record)
    with pytest.raises(Conflict):
        ClusterTokenBook(other).add(record, key_token=issued.record)
    assert other.get(cluster_token_path(record.token_hash)) is None


def test_add_refuses_a_key_record_of_another_token() -> None:
    issued = issue_token(rng=_rng, instance="inst", roles=["Reader"], now=NOW)
    _, record = issue_cluster_token(
        rng=lambda n: b"\x01" * n, role="Administrator", namespaces=None, now=NOW
    )
    with pytest.raises(InvalidArgument, match="same token"):
        ClusterTokenBook(MemoryStore()).add(record, key_token=issued.record)


@pytest.mark.parametrize(
    "presented",
    [
        None,
        "",
        "kinko_",
        "kinko_" + "A" * 42,
        "kinko_" + "A" * 44,
        "kinko_" + "A" * 42 + "=",
        "kinko_" + "A" * 42 + "/",
        "KINKO_" + "A" * 43,
        "Bearer kinko_" + "A" * 43,
        "kinko_" + "A" * 43 + "\n",
    ],
)
def test_malformed_tokens_are_unauthorized(presented: str | None) -> None:
    with pytest.raises(Unauthorized, match="missing or malformed bearer token") as info:
        ClusterTokenBook(MemoryStore()).authenticate(presented, now=NOW)
    if presented:
        assert presented not in str(info.value)


def test_unknown_token_is_unauthorized_and_not_echoed() -> None:
    token, _ = issue_cluster_token(rng=_rng, role="Administrator", namespaces=None, now=NOW)
    with pytest.raises(Unauthorized, match="unknown or revoked") as info:
        ClusterTokenBook(MemoryStore()).authenticate(token, now=NOW)
    assert token not in str(info.value)
    assert info.value.reason_code == "UNAUTHORIZED_ERR"


@pytest.mark.parametrize(
    ("later", "valid"),
    [
        (timedelta(0), True),
        (timedelta(hours=1, microseconds=-1), True),
        (timedelta(hours=1), False),
        (timedelta(days=400), False),
    ],
)
def test_expiry(later: timedelta, valid: bool) -> None:
    book = ClusterTokenBook(MemoryStore())
    token, record = issue_cluster_token(
        rng=_rng, role="Viewer", namespaces=["*"], now=NOW, expires=NOW + timedelta(hours=1)
    )
    book.add(record)
    if valid:
        assert book.authenticate(token, now=NOW + later).namespaces is None
    else:
        with pytest.raises(Unauthorized, match="expired bearer token"):
            book.authenticate(token, now=NOW + later)


def test_revoke() -> None:
    book = ClusterTokenBook(MemoryStore())
    token, record = issue_cluster_token(rng=_rng, role="Viewer", namespaces=["a"], now=NOW)
    book.add(record)
    book.revoke(record.token_hash)
    with pytest.raises(Unauthorized, match="unknown or revoked"):
        book.authenticate(token, now=NOW)
    with pytest.raises(NotFound):
        book.revoke(record.token_hash)
    with pytest.raises(InvalidArgument, match="64 lowercase hex"):
        book.revoke("../tokens/x")


def test_corrupt_stored_record_is_corrupt_metadata() -> None:
    store = MemoryStore()
    token, record = issue_cluster_token(rng=_rng, role="Viewer", namespaces=["a"], now=NOW)
    path = cluster_token_path(record.token_hash)
    store.txn([Put(path, b'{"v":1,"role":"Viewer"}', 0)])
    with pytest.raises(CorruptMetadata):
        ClusterTokenBook(store).authenticate(token, now=NOW)


def test_a_record_stored_under_another_hash_is_corrupt_metadata() -> None:
    store = MemoryStore()
    token, _ = issue_cluster_token(rng=_rng, role="Viewer", namespaces=["a"], now=NOW)
    _, other = issue_cluster_token(
        rng=lambda n: b"\x02" * n, role="Administrator", namespaces=None, now=NOW
    )
    store.txn([Put(cluster_token_path(hash_token(token)), dump_cluster_token(other), 0)])
    with pytest.raises(CorruptMetadata, match="another token"):
        ClusterTokenBook(store).authenticate(token, now=NOW)


# --- listing and revoking across both books ------------------------------------------------


def _seeded(n: int) -> Callable[[int], bytes]:
    return lambda size: bytes([n]) * size


def _numbered(n: int) -> Callable[[int], bytes]:
    return lambda size: n.to_bytes(size, "big")


def _three_tokens(store: MemoryStore) -> tuple[str, str, str]:
    """A key-only, a cluster-only and a both-books token, issued an hour apart."""
    key_only = issue_token(rng=_seeded(1), instance="i", roles=["Reader"], now=NOW, name="k")
    TokenBook(store).add(key_only.record)
    cluster_only, record = issue_cluster_token(
        rng=_seeded(2), role="Viewer", namespaces=["a"], now=NOW + timedelta(hours=1), name="c"
    )
    ClusterTokenBook(store).add(record)
    both = issue_token(
        rng=_seeded(3), instance="i", roles=["Manager"], now=NOW + timedelta(hours=2), name="b"
    )
    ClusterTokenBook(store).add(
        cluster_token_record(
            token_hash=both.record.token_hash,
            role="Administrator",
            namespaces=None,
            name="b",
            now=NOW + timedelta(hours=2),
        ),
        key_token=both.record,
    )
    return key_only.token, cluster_only, both.token


def test_each_book_lists_its_own_records_in_hash_order() -> None:
    store = MemoryStore()
    key_only, cluster_only, both = _three_tokens(store)

    key_hashes = [r.token_hash for r in TokenBook(store).list()]
    cluster_hashes = [r.token_hash for r in ClusterTokenBook(store).list()]

    assert key_hashes == sorted([hash_token(key_only), hash_token(both)])
    assert cluster_hashes == sorted([hash_token(cluster_only), hash_token(both)])
    assert TokenBook(MemoryStore()).list() == ()
    assert ClusterTokenBook(MemoryStore()).list() == ()


def test_both_books_list_past_one_store_page() -> None:
    store = MemoryStore()
    for n in range(510):
        issued = issue_token(rng=_numbered(n), instance="i", roles=["Reader"], now=NOW)
        record = cluster_token_record(
            token_hash=issued.record.token_hash,
            role="Administrator",
            namespaces=None,
            name=issued.record.name,
            now=NOW,
        )
        ClusterTokenBook(store).add(record, key_token=issued.record)

    assert len({r.token_hash for r in TokenBook(store).list()}) == 510
    assert len({r.token_hash for r in ClusterTokenBook(store).list()}) == 510
    assert {b.books for b in list_tokens(store)} == {"both"}


def test_a_record_stored_under_another_hash_fails_either_listing() -> None:
    wrong = "f" * 64
    store = MemoryStore()
    issued = issue_token(rng=_seeded(1), instance="i", roles=["Reader"], now=NOW)
    store.txn([Put(token_path(wrong), dump_token(issued.record), 0)])
    with pytest.raises(CorruptMetadata, match="another token"):
        TokenBook(store).list()

    store = MemoryStore()
    _, record = issue_cluster_token(rng=_seeded(1), role="Administrator", namespaces=None, now=NOW)
    store.txn([Put(cluster_token_path(wrong), dump_cluster_token(record), 0)])
    with pytest.raises(CorruptMetadata, match="another token"):
        ClusterTokenBook(store).list()


def test_list_tokens_merges_the_books_oldest_first() -> None:
    store = MemoryStore()
    key_only, cluster_only, both = _three_tokens(store)

    listed = list_tokens(store)

    assert [(b.token_hash, b.name, b.books) for b in listed] == [
        (hash_token(key_only), "k", "key"),
        (hash_token(cluster_only), "c", "cluster"),
        (hash_token(both), "b", "both"),
    ]
    assert [b.token_id for b in listed] == [
        hash_token(t)[:12] for t in (key_only, cluster_only, both)
    ]
    assert listed[2].key is not None
    assert listed[2].cluster is not None
    assert listed[1].created == NOW + timedelta(hours=1)


def test_a_booked_token_expires_with_its_longest_lived_record() -> None:
    issued = issue_token(
        rng=_rng, instance="i", roles=["Reader"], now=NOW, expires=NOW + timedelta(hours=1)
    )
    cluster = cluster_token_record(
        token_hash=issued.record.token_hash,
        role="Administrator",
        namespaces=None,
        name=issued.record.name,
        now=NOW,
        expires=NOW + timedelta(hours=2),
    )
    never = cluster_token_record(
        token_hash=issued.record.token_hash,
        role="Administrator",
        namespaces=None,
        name=issued.record.name,
        now=NOW,
    )
    h = issued.record.token_hash
    assert BookedToken(h, issued.record, cluster).expires == NOW + timedelta(hours=2)
    assert BookedToken(h, issued.record, never).expires is None
    assert BookedToken(h, issued.record).expires == NOW + timedelta(hours=1)


def test_find_token_by_id_prefix() -> None:
    store = MemoryStore()
    key_only, cluster_only, both = _three_tokens(store)
    for token in (key_only, cluster_only, both):
        digest = hash_token(token)
        assert find_token(store, digest[:12]) == digest
        assert find_token(store, digest[:8].upper()) == digest
        assert find_token(store, digest) == digest


@pytest.mark.parametrize("given", ["", "0123456", "0123456z", "../token", "0" * 65, " 01234567"])
def test_find_token_refuses_a_short_or_non_hex_id(given: str) -> None:
    with pytest.raises(InvalidArgument, match="8 to 64 hex"):
        find_token(MemoryStore(), given)


def test_find_token_refuses_an_unknown_or_ambiguous_id() -> None:
    store = MemoryStore()
    first, second = "abcdef01" + "0" * 56, "abcdef01" + "1" * 56
    _, a = issue_cluster_token(rng=_rng, role="Administrator", namespaces=None, now=NOW)
    store.txn([Put(cluster_token_path(first), dump_cluster_token(replace(a, token_hash=first)), 0)])
    issued = issue_token(rng=_rng, instance="i", roles=["Reader"], now=NOW)
    store.txn([Put(token_path(second), dump_token(replace(issued.record, token_hash=second)), 0)])

    with pytest.raises(InvalidArgument, match="more than one token"):
        find_token(store, "abcdef01")
    assert find_token(store, "abcdef010") == first
    with pytest.raises(NotFound, match="abcdef02"):
        find_token(store, "abcdef02")


def test_revoke_token_removes_it_from_both_books() -> None:
    store = MemoryStore()
    key_only, cluster_only, both = _three_tokens(store)

    revoked = revoke_token(store, hash_token(both))

    assert (revoked.name, revoked.books) == ("b", "both")
    for book in (TokenBook(store), ClusterTokenBook(store)):
        with pytest.raises(Unauthorized, match="unknown or revoked"):
            book.authenticate(both, now=NOW)
    assert revoke_token(store, hash_token(key_only)).books == "key"
    assert revoke_token(store, hash_token(cluster_only)).books == "cluster"
    assert list_tokens(store) == ()
    with pytest.raises(NotFound, match="either token book"):
        revoke_token(store, hash_token(both))


def test_a_revocation_whose_record_changed_meanwhile_removes_nothing() -> None:
    store = MemoryStore()
    _, _, both = _three_tokens(store)
    digest = hash_token(both)
    key_entry = store.get(token_path(digest))
    entry = store.get(cluster_token_path(digest))
    assert key_entry is not None
    assert entry is not None
    booked, ops = revocation(store, digest)
    assert booked.books == "both"
    assert ops == (
        Delete(key_entry.key, key_entry.mod_revision),
        Delete(entry.key, entry.mod_revision),
    )
    # Another writer rewrites the cluster record between the read and the transaction.
    store.txn([Put(entry.key, entry.value, entry.mod_revision)])
    assert not store.txn(ops).succeeded
    assert TokenBook(store).authenticate(both, now=NOW).name == "b"
    assert ClusterTokenBook(store).authenticate(both, now=NOW).name == "b"
