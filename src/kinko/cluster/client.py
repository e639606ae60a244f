"""A typed HTTPS client of the Kubernetes REST API for Secrets and ConfigMaps.

Job: one method per operation of core/v1 namespaced resources, exactly as Kubernetes serves
them, so the same client talks to kinko's cluster API or to a real kube-apiserver:

==========  ================================================================  ==============
method      request                                                           answer
==========  ================================================================  ==============
get         ``GET /api/v1/namespaces/{ns}/{resource}/{name}``                 the object
list        ``GET /api/v1/namespaces/{ns}/{resource}`` or ``/api/v1/{res}``   a ListPage
create      ``POST /api/v1/namespaces/{ns}/{resource}``                       the object
replace     ``PUT …/{name}`` (the body carries ``metadata.resourceVersion``)  the object
patch       ``PATCH …/{name}``, ``application/merge-patch+json``              the object
delete      ``DELETE …/{name}``                                               what it says
version     ``GET /version``                                                  version info
==========  ================================================================  ==============

Lists take ``labelSelector``, ``limit`` and ``continue``; :meth:`ClusterClient.list_all`
follows ``continue`` to the end. Objects travel as plain JSON (``dict[str, object]``), so
the answer of ``get`` is exactly what the server sent.

kinko's own API group ``kinko.io/v1`` (same base URL and token; a kube-apiserver has none):

=================  ===================================================  =======================
method             request                                              answer
=================  ===================================================  =======================
cluster_status     ``GET /apis/kinko.io/v1/status`` (any role)          :class:`ClusterStatus`
encryption_report  ``GET /apis/kinko.io/v1/encryption`` (Administrator)  :class:`EncryptionReport`
kms_enable         ``POST /apis/kinko.io/v1/kms/enable`` ``{"key"}``     :class:`KmsEnabled`
start_migration    ``POST /apis/kinko.io/v1/migrations``                :class:`MigrationStarted`,
                   ``{"resources"?, "dryRun"}``                         or with ``dry_run`` a
                                                                        :class:`MigrationPlan`
=================  ===================================================  =======================

Their answers are parsed into the frozen values below, each keeping the document as sent in
``doc`` (for ``-o json``). A field that is missing takes its default (0, None, empty); a
field of the wrong type makes the answer malformed (UnavailableError), like any answer that
is not the API. Times are RFC 3339 strings (``updated`` may also be Unix seconds); a root
key's ``state`` may be Key Protect's number (1 Active … 5 Destroyed) or its name, and its time
to expiry may come as ``expiresInSeconds`` or ``secondsToExpiry``. Fields the values do not
name stay in ``doc``.

kinko's extensions of core/v1, which a kube-apiserver never sends and this client does not
require:

- a list answer may carry ``"unreadable": {"count": N, "items": [{"namespace", "name",
  "reason"}]}`` and the header ``X-Kinko-Unreadable: N``: objects left out because they can
  no longer be decrypted. They come back as :attr:`ListPage.unreadable`.
- ``DELETE …?ignoreStoreReadErrorWithClusterBreakingPotential=true`` (Kubernetes' own
  DeleteOptions flag; Administrator only) deletes such an object.

Errors: an answer other than 2xx is read as a Kubernetes ``Status`` and raised as the kinko
error of its ``reason`` from :data:`REASON_ERRORS`, the client's one table; a reason not in it
falls back to the HTTP status (:data:`STATUS_ERRORS`), then to UnavailableError for 5xx (and
anything that is not 4xx) and InvalidArgument for any other 4xx. ``Invalid`` comes back as
:class:`~kinko.errors.Invalid` with the server's field causes; ``StorageReadError`` (an object
that can no longer be decrypted) as :class:`~kinko.errors.DecryptionError`; ``Expired`` (a
stale ``continue`` token) as :class:`~kinko.errors.Gone`. A refused or failed connection,
a TLS failure, a timeout, and an answer that is not the Kubernetes API raise
:class:`~kinko.errors.UnavailableError`.

Invariants:

- TLS is verified: against ``ca`` when given (kinko's CA), else the system trust store. Plain
  ``http://`` is refused for anything but a loopback host, so the bearer token never crosses
  a network in clear.
- No message or repr carries the bearer token or a value of ``data``/``stringData``: error
  messages are built from the status, reason, path and the server's own message (control
  characters removed, length capped); request bodies never appear in them; nothing logs.
- The client holds no state between calls but its settings and the connection pool; it is
  safe to share between threads (``httpx.Client`` is).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal, cast, overload
from urllib.parse import quote

import httpx

from kinko import __version__, errors, httpclient
from kinko.httpclient import MAX_MESSAGE, HttpClient, clean

__all__ = [
    "ADMIN_API",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_TIMEOUT",
    "PHASE_READY",
    "REASON_ERRORS",
    "STATUS_ERRORS",
    "UNREADABLE_HEADER",
    "ClusterClient",
    "ClusterStatus",
    "EncryptionReport",
    "KeyIdCoverage",
    "KmsEnabled",
    "KubeObject",
    "ListPage",
    "MigrationPlan",
    "MigrationPlanEntry",
    "MigrationProgress",
    "MigrationStarted",
    "ResourceCoverage",
    "RootKeyStatus",
    "Unreadable",
    "UnreadableObject",
    "error_from_response",
]

#: A Kubernetes object (or any JSON object the API answers) as decoded JSON.
KubeObject = dict[str, object]

DEFAULT_TIMEOUT: Final = httpclient.DEFAULT_TIMEOUT
#: Page size :meth:`ClusterClient.list_all` asks for (kubectl's ``--chunk-size`` default).
DEFAULT_PAGE_SIZE: Final = 500
#: kinko's header with the number of objects a list left out as unreadable.
UNREADABLE_HEADER: Final = "X-Kinko-Unreadable"
#: Kubernetes' DeleteOptions flag (KEP-3926) for deleting an object that cannot be decrypted.
FORCE_DELETE_OPTION: Final = "ignoreStoreReadErrorWithClusterBreakingPotential"
MEDIA_JSON: Final = "application/json"
MEDIA_MERGE_PATCH: Final = "application/merge-patch+json"
#: A resource name in a path: lowercase plural, as Kubernetes spells them.
_RESOURCE: Final = re.compile(r"[a-z][a-z0-9]*")
#: The path of kinko's own API group.
ADMIN_API: Final = "/apis/kinko.io/v1"
#: The cluster's phase once nothing is being enabled or migrated.
PHASE_READY: Final = "Ready"
#: Key Protect's numeric key states, for a server that sends the number.
_KEY_STATES: Final = {
    0: "Pre-activation",
    1: "Active",
    2: "Suspended",
    3: "Deactivated",
    5: "Destroyed",
}

# --- the one error table -------------------------------------------------------------------

#: Kubernetes ``Status.reason`` → the kinko error raised for it.
REASON_ERRORS: Final[Mapping[str, type[errors.KinkoError]]] = {
    "BadRequest": errors.InvalidArgument,
    "RequestEntityTooLarge": errors.InvalidArgument,
    "Invalid": errors.Invalid,
    "Unauthorized": errors.Unauthorized,
    "Forbidden": errors.Forbidden,
    "NotFound": errors.NotFound,
    "AlreadyExists": errors.AlreadyExists,
    "Conflict": errors.Conflict,
    "Expired": errors.Gone,
    # Kubernetes' reason (KEP-3926) for an object that cannot be decrypted or decoded.
    "StorageReadError": errors.DecryptionError,
    "ServiceUnavailable": errors.UnavailableError,
    "InternalError": errors.UnavailableError,
    "Timeout": errors.UnavailableError,
    "ServerTimeout": errors.UnavailableError,
    "TooManyRequests": errors.UnavailableError,
}

#: HTTP status → kinko error, for a reason not in :data:`REASON_ERRORS` (or no Status body).
STATUS_ERRORS: Final[Mapping[int, type[errors.KinkoError]]] = {
    400: errors.InvalidArgument,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    410: errors.Gone,
    413: errors.InvalidArgument,
    422: errors.Invalid,
    429: errors.UnavailableError,
}

#: Kubernetes kinds by resource, to name the object of an ``Invalid`` whose details give
#: the resource (kinko) rather than the kind (kube-apiserver).
_KINDS: Final = {"secrets": "Secret", "configmaps": "ConfigMap"}


# --- values --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnreadableObject:
    """An object a list left out because it cannot be decrypted; ``reason`` says why."""

    namespace: str
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class Unreadable:
    """kinko's report of unreadable objects in a list answer.

    ``count`` may exceed ``len(items)``: the server may name only the first few.
    """

    count: int = 0
    items: tuple[UnreadableObject, ...] = ()

    def __bool__(self) -> bool:
        return self.count > 0


@dataclass(frozen=True, slots=True)
class ListPage:
    """One list answer: its ``items`` as sent, the ``continue`` token of the next page (None
    on the last), the list's ``resourceVersion``, and what kinko left out as unreadable."""

    items: tuple[KubeObject, ...] = field(repr=False)  # a Secret's data among them
    continue_token: str | None = None
    resource_version: str = ""
    unreadable: Unreadable = Unreadable()


# --- kinko.io/v1 values --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RootKeyStatus:
    """The root key the cluster's KMS v2 plugin wraps with (``status.rootKey``).

    ``version``: how many versions the key has (the latest wraps); ``version_id`` the
    latest's id; ``state`` a Key Protect state name (``Active``, ``Suspended``,
    ``Deactivated`` …); ``expires_in_seconds`` is counted by the server's clock (negative
    once expired); ``key_id`` the KMS v2 key_id the plugin reports for it.
    """

    id: str
    alias: str | None = None
    version: int | None = None
    state: str = ""
    expiration_date: datetime | None = None
    expires_in_seconds: int | None = None
    version_id: str | None = None
    key_id: str | None = None


@dataclass(frozen=True, slots=True)
class MigrationProgress:
    """One resource's migration, as the state record says (``status.migrations[resource]``).

    ``state`` is ``running``, ``paused``, ``done``, ``pending`` (a pass under the current
    target is due but has not started) or None (never ran); ``done`` counts the objects
    handled in this pass (of ``total``, None while uncounted), split into ``rewritten`` and
    the rest; ``reason`` says why a run paused.
    """

    resource: str
    state: str | None = None
    done: int = 0
    total: int | None = None
    rewritten: int = 0
    unreadable: int = 0
    conflicts: int = 0
    reason: str | None = None
    target: str | None = None
    updated: datetime | None = None

    @property
    def active(self) -> bool:
        """Whether a run is under way or due (running, paused until its cause is back, or
        pending)."""
        return self.state in ("running", "paused", "pending")


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """``GET /apis/kinko.io/v1/status``: the cluster's encryption in the seed's words.

    ``master_status``: ``Key Protect feature enablement in progress.``, ``Ready`` … as the
    server words it; ``phase``: ``Ready``, ``Enabling``, ``Migrating`` or ``Paused``;
    ``ready_since``: when it last became Ready; ``enabling``: what an enable in progress
    sets up, in words. ``migrations`` are sorted by resource.
    """

    master_status: str
    phase: str
    ready_since: datetime | None = None
    root_key: RootKeyStatus | None = None
    warnings: tuple[str, ...] = ()
    migrations: tuple[MigrationProgress, ...] = ()
    enabling: str | None = None
    doc: KubeObject = field(default_factory=dict, repr=False, compare=False)

    @property
    def ready(self) -> bool:
        return self.phase == PHASE_READY

    def migration(self, resource: str) -> MigrationProgress | None:
        """The migration of ``resource``, or None when the status names none."""
        for progress in self.migrations:
            if progress.resource == resource:
                return progress
        return None


@dataclass(frozen=True, slots=True)
class KeyIdCoverage:
    """How many objects of a resource are sealed under one KMS key_id, and which root key
    and version (an id, or a number) that key_id stands for, when the server knows;
    ``current``: the key_id the first provider writes with now."""

    key_id: str
    count: int
    provider: str = ""
    root_key: str | None = None
    version: str | None = None
    current: bool = False


@dataclass(frozen=True, slots=True)
class ResourceCoverage:
    """The coverage report of one resource (``encryption.resources[resource]``).

    ``providers``: (value prefix, objects) pairs, largest first; ``plaintext``: objects
    stored unencrypted; ``stale``: objects a migration would rewrite; ``undecryptable``:
    objects no provider opens, of which ``undecryptable_names`` names some (``ns/name``);
    ``unavailable``: objects not classified because a plugin or key service did not answer
    (``unavailable_reason`` says which).
    """

    resource: str
    total: int = 0
    providers: tuple[tuple[str, int], ...] = ()
    key_ids: tuple[KeyIdCoverage, ...] = ()
    plaintext: int = 0
    stale: int = 0
    undecryptable: int = 0
    undecryptable_names: tuple[str, ...] = ()
    migration: MigrationProgress | None = None
    unavailable: int = 0
    unavailable_reason: str | None = None


@dataclass(frozen=True, slots=True)
class EncryptionReport:
    """``GET /apis/kinko.io/v1/encryption``: coverage per resource, sorted by resource, and
    the server's notes on it."""

    config_hash: str
    resources: tuple[ResourceCoverage, ...] = ()
    notes: tuple[str, ...] = ()
    doc: KubeObject = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class KmsEnabled:
    """The answer to ``POST /apis/kinko.io/v1/kms/enable``: the KMS v2 provider's name, the
    root key it wraps with, the plugin's socket and the status right after; ``changed``
    is False when KMS v2 on that key was already in force."""

    provider: str
    key: str
    socket: str
    status: ClusterStatus
    changed: bool = True
    doc: KubeObject = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class MigrationStarted:
    """The answer to ``POST /apis/kinko.io/v1/migrations``: the status right after."""

    status: ClusterStatus
    doc: KubeObject = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class MigrationPlanEntry:
    """What a migration of one resource would do: of ``total`` objects, ``current`` are
    already current (None when not said), ``stale`` are not (the server's count, or
    ``would_rewrite`` when it sends none: a stale object is one a migration rewrites),
    ``would_rewrite`` would be rewritten and ``unreadable`` (some named) left alone."""

    resource: str
    total: int = 0
    stale: int = 0
    would_rewrite: int = 0
    unreadable: int = 0
    current: int | None = None
    unreadable_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MigrationPlan:
    """The answer to a dry-run ``POST /apis/kinko.io/v1/migrations``, sorted by resource."""

    resources: tuple[MigrationPlanEntry, ...] = ()
    doc: KubeObject = field(default_factory=dict, repr=False, compare=False)


# --- the client ----------------------------------------------------------------------------


class ClusterClient(HttpClient):
    """A client of the Kubernetes REST API at ``url`` (``https://host:port``).

    ``token``: the bearer token (without the ``Bearer`` prefix). ``ca``: the PEM CA bundle
    that signed the server's certificate (default: the system trust store). ``timeout``:
    seconds per request. ``http``: an ``httpx.Client`` to send through instead of one made
    here (tests pass a Starlette ``TestClient``); the caller keeps it, and ``ca`` and
    ``timeout`` do not apply.

    Use as a context manager, or call :meth:`close`. Raises InvalidArgument (an empty token,
    a URL that is not http(s), plain http to a host that is not loopback, an unreadable CA).
    """

    _service = "cluster API"
    _cargo = "secrets"

    def __init__(
        self,
        url: str,
        *,
        token: str,
        ca: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.Client | None = None,
    ) -> None:
        token = token.strip()
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        if not token:
            raise errors.InvalidArgument("expected a bearer token, got none")
        if not token.isascii() or not token.isprintable() or " " in token:
            raise errors.InvalidArgument(
                "the bearer token must be printable ASCII without spaces or line breaks"
            )
        super().__init__(url, ca=ca, timeout=timeout, http=http)
        self._headers = {
            "authorization": f"Bearer {token}",
            "accept": MEDIA_JSON,
            "user-agent": f"kinko/{__version__}",
        }

    def __repr__(self) -> str:
        return f"ClusterClient(url={self._base!r})"

    # --- reads -----------------------------------------------------------------------------

    def get(self, resource: str, namespace: str, name: str) -> KubeObject:
        """``GET /api/v1/namespaces/{ns}/{resource}/{name}``: the object as the server sent it.

        Raises NotFound, Unauthorized, Forbidden, InvalidArgument, UnavailableError.
        """
        return _object(self._send("GET", _path(resource, namespace, name)))

    def list(
        self,
        resource: str,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        limit: int | None = None,
        continue_: str | None = None,
    ) -> ListPage:
        """One page of ``resource`` in ``namespace`` (every namespace when None).

        Raises InvalidArgument (a bad selector, limit or continue token), Unauthorized,
        Forbidden, UnavailableError.
        """
        params: dict[str, str] = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if limit is not None:
            if limit <= 0:
                raise errors.InvalidArgument(f"expected a positive list limit, got {limit}")
            params["limit"] = str(limit)
        if continue_:
            params["continue"] = continue_
        return _list_page(self._send("GET", _path(resource, namespace), params=params))

    def iter_pages(
        self,
        resource: str,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> Iterator[ListPage]:
        """Every page of the list, following ``continue`` until the server sends none.

        Raises what :meth:`list` raises, and UnavailableError if the server repeats a
        continue token (it would loop forever).
        """
        token: str | None = None
        seen: set[str] = set()
        while True:
            page = self.list(
                resource,
                namespace,
                label_selector=label_selector,
                limit=page_size,
                continue_=token,
            )
            yield page
            token = page.continue_token
            if not token:
                return
            if token in seen:
                raise errors.UnavailableError(
                    f"the cluster API at {self._base} repeated a continue token while listing "
                    f"{resource}"
                )
            seen.add(token)

    def list_all(
        self,
        resource: str,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> ListPage:
        """The whole list in one :class:`ListPage` (pages joined, unreadable reports summed;
        ``resource_version`` is the first page's, the one Kubernetes keeps across pages).

        Raises what :meth:`iter_pages` raises.
        """
        items: list[KubeObject] = []
        unreadable: list[UnreadableObject] = []
        count = 0
        version: str | None = None
        for page in self.iter_pages(
            resource, namespace, label_selector=label_selector, page_size=page_size
        ):
            items.extend(page.items)
            unreadable.extend(page.unreadable.items)
            count += page.unreadable.count
            if version is None:
                version = page.resource_version
        return ListPage(
            items=tuple(items),
            continue_token=None,
            resource_version=version or "",
            unreadable=Unreadable(count=count, items=tuple(unreadable)),
        )

    def version(self) -> KubeObject:
        """``GET /version``: the server's version info (``gitVersion``, ``platform``, …).

        Raises Unauthorized, Forbidden, UnavailableError.
        """
        return _object(self._send("GET", "/version"))

    # --- writes ----------------------------------------------------------------------------

    def create(self, resource: str, namespace: str, body: Mapping[str, object]) -> KubeObject:
        """``POST /api/v1/namespaces/{ns}/{resource}``: the created object.

        Raises AlreadyExists, Invalid, InvalidArgument (e.g. too large), Unauthorized,
        Forbidden, NotFound, UnavailableError.
        """
        return _object(self._send("POST", _path(resource, namespace), body=body))

    def replace(
        self, resource: str, namespace: str, name: str, body: Mapping[str, object]
    ) -> KubeObject:
        """``PUT …/{name}``: the replaced object. With ``metadata.resourceVersion`` in the body
        the write succeeds only if the object is still at that version.

        Raises Conflict (the object changed), NotFound, Invalid, InvalidArgument,
        Unauthorized, Forbidden, UnavailableError.
        """
        return _object(self._send("PUT", _path(resource, namespace, name), body=body))

    def patch(
        self, resource: str, namespace: str, name: str, merge_patch: Mapping[str, object]
    ) -> KubeObject:
        """``PATCH …/{name}`` with a JSON merge patch (RFC 7386): the patched object.

        Raises what :meth:`replace` raises.
        """
        return _object(
            self._send(
                "PATCH",
                _path(resource, namespace, name),
                body=merge_patch,
                content_type=MEDIA_MERGE_PATCH,
            )
        )

    def delete(
        self, resource: str, namespace: str, name: str, *, force_unreadable: bool = False
    ) -> KubeObject:
        """``DELETE …/{name}``: the deleted object, or a ``Status`` (whatever the server sent).

        ``force_unreadable`` sends ``ignoreStoreReadErrorWithClusterBreakingPotential=true``
        (Kubernetes' DeleteOptions flag): deletes an object
        that can no longer be decrypted (Administrator only).

        Raises NotFound, Forbidden, Unauthorized, Conflict, UnavailableError.
        """
        params = {FORCE_DELETE_OPTION: "true"} if force_unreadable else None
        return _object(self._send("DELETE", _path(resource, namespace, name), params=params))

    # --- kinko.io/v1: the cluster's encryption ---------------------------------------------

    def cluster_status(self) -> ClusterStatus:
        """``GET /apis/kinko.io/v1/status`` (any role): phase, master status, root key,
        warnings and migrations.

        Raises Unauthorized, Forbidden, NotFound (not a kinko cluster API), UnavailableError.
        """
        response = self._send("GET", f"{ADMIN_API}/status")
        return _cluster_status(_Fields(response, _object(response), "status"))

    def encryption_report(self) -> EncryptionReport:
        """``GET /apis/kinko.io/v1/encryption`` (Administrator): the coverage report.

        Raises Unauthorized, Forbidden, NotFound, UnavailableError.
        """
        response = self._send("GET", f"{ADMIN_API}/encryption")
        doc = _Fields(response, _object(response), "encryption")
        resources = doc.mapping("resources")
        return EncryptionReport(
            config_hash=doc.text("configHash"),
            resources=tuple(
                _coverage(name, resources.child(name)) for name in sorted(resources.names())
            ),
            notes=doc.texts("notes"),
            doc=doc.doc,
        )

    def kms_enable(self, key: str) -> KmsEnabled:
        """``POST /apis/kinko.io/v1/kms/enable`` (Administrator): writes KMS v2 on the root key
        ``key`` (id or alias) first and starts migrating every stored object to it.

        Raises InvalidArgument (an empty key), NotFound (no such root key), Conflict (the key's
        state forbids it, or an enable or migration already runs: the message says which),
        Unauthorized, Forbidden, UnavailableError (the key service or plugin is unavailable).
        """
        if not key.strip():
            raise errors.InvalidArgument("expected a root key id or alias, got an empty one")
        response = self._send("POST", f"{ADMIN_API}/kms/enable", body={"key": key.strip()})
        doc = _Fields(response, _object(response), "enable")
        return KmsEnabled(
            provider=doc.text("provider"),
            key=doc.text("key"),
            socket=doc.text("socket"),
            status=_cluster_status(doc.child("status")),
            changed=doc.flag("changed", default=True),
            doc=doc.doc,
        )

    @overload
    def start_migration(
        self, resources: Sequence[str] | None = None, *, dry_run: Literal[False] = False
    ) -> MigrationStarted: ...

    @overload
    def start_migration(
        self, resources: Sequence[str] | None = None, *, dry_run: Literal[True]
    ) -> MigrationPlan: ...

    @overload
    def start_migration(
        self, resources: Sequence[str] | None = None, *, dry_run: bool
    ) -> MigrationStarted | MigrationPlan: ...

    def start_migration(
        self, resources: Sequence[str] | None = None, *, dry_run: bool = False
    ) -> MigrationStarted | MigrationPlan:
        """``POST /apis/kinko.io/v1/migrations`` (Administrator): rewrites every stale object
        of ``resources`` (default: every resource the configuration covers) under the
        current encryption. With ``dry_run`` nothing is written and the answer counts what
        would be.

        Raises InvalidArgument (a malformed resource name; the server's 400), Conflict (a
        migration or enable already runs), Unauthorized, Forbidden, UnavailableError.
        """
        body: dict[str, object] = {"dryRun": dry_run}
        if resources:
            for resource in resources:
                if not _RESOURCE.fullmatch(resource):
                    raise errors.InvalidArgument(
                        f"expected a resource such as secrets or configmaps, got {resource!r}"
                    )
            body["resources"] = list(dict.fromkeys(resources))
        response = self._send("POST", f"{ADMIN_API}/migrations", body=body)
        doc = _Fields(response, _object(response), "migrations")
        if dry_run:
            plan = doc.mapping("resources")
            return MigrationPlan(
                resources=tuple(
                    _plan_entry(name, plan.child(name)) for name in sorted(plan.names())
                ),
                doc=doc.doc,
            )
        return MigrationStarted(status=_cluster_status(doc.child("status")), doc=doc.doc)

    # --- the wire --------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, object] | None = None,
        content_type: str = MEDIA_JSON,
    ) -> httpx.Response:
        headers = dict(self._headers)
        if body is not None:
            headers["content-type"] = content_type
        response = self._request(method, path, params=params, json=body, headers=headers)
        if not 200 <= response.status_code < 300:
            raise error_from_response(response)
        return response


# --- errors --------------------------------------------------------------------------------


def error_from_response(response: httpx.Response) -> errors.KinkoError:
    """The kinko error for a non-2xx answer: by the ``Status`` reason (:data:`REASON_ERRORS`),
    else by HTTP status (:data:`STATUS_ERRORS`), else UnavailableError for 5xx and anything
    not 4xx, InvalidArgument for any other 4xx.

    The message is the server's (control characters removed, at most 300 characters) with
    the status and reason; an ``Invalid`` carries the server's field causes.
    """
    status = response.status_code
    doc = _status_doc(response)
    reason = clean(doc.get("reason"), 64)
    message = clean(doc.get("message"), MAX_MESSAGE)
    cls = REASON_ERRORS.get(reason) if reason else None
    if cls is None:
        cls = STATUS_ERRORS.get(status)
    if cls is None:
        cls = errors.UnavailableError if status >= 500 or status < 400 else errors.InvalidArgument
    if issubclass(cls, errors.Invalid):
        return _invalid(doc, message)
    if issubclass(cls, errors.DecryptionError):
        # The server's message names the object and why; it never carries data.
        return errors.DecryptionError(message or errors.DecryptionError.NOT_AUTHENTIC)
    where = f"{response.request.method} {response.request.url.path}"
    detail = f"HTTP {status}" + (f" {reason}" if reason else "")
    if status < 400:
        # A redirect or another odd success code: the URL is not a Kubernetes API.
        return _malformed(response, "unexpected status")
    if issubclass(cls, errors.UnavailableError):
        return cls(f"the cluster API failed: {message or 'no reason given'} ({where}, {detail})")
    return cls(f"{message or f'the cluster API refused {where}'} ({detail})")


def _status_doc(response: httpx.Response) -> Mapping[str, object]:
    """The answer's body if it is a JSON object (a ``Status``, normally), else empty."""
    try:
        doc = response.json()
    except ValueError:
        return {}
    return cast(dict[str, object], doc) if isinstance(doc, dict) else {}


def _invalid(doc: Mapping[str, object], message: str) -> errors.Invalid:
    details = doc.get("details")
    details = cast(dict[str, object], details) if isinstance(details, dict) else {}
    causes: list[errors.FieldCause] = []
    raw = details.get("causes")
    if isinstance(raw, list):
        for item in raw:
            if isinstance(item, dict):
                causes.append(
                    errors.FieldCause(
                        field=clean(item.get("field"), 200),
                        reason=clean(item.get("reason"), 64),
                        message=clean(item.get("message"), MAX_MESSAGE),
                    )
                )
    if not causes:
        causes.append(
            errors.FieldCause("", "FieldValueInvalid", message or "the object is invalid")
        )
    kind = clean(details.get("kind"), 64)
    return errors.Invalid(causes, kind=_KINDS.get(kind, kind), name=clean(details.get("name"), 253))


def _malformed(response: httpx.Response, what: str) -> errors.UnavailableError:
    where = f"{response.request.method} {response.request.url.path}"
    return errors.UnavailableError(
        f"the answer to {where} is not the Kubernetes API: {what} (HTTP {response.status_code})"
    )


# --- answers -------------------------------------------------------------------------------


def _object(response: httpx.Response) -> KubeObject:
    try:
        doc = response.json()
    except ValueError:
        raise _malformed(response, "the body is not JSON") from None
    if not isinstance(doc, dict):
        raise _malformed(response, "expected a JSON object")
    return cast(KubeObject, doc)


def _list_page(response: httpx.Response) -> ListPage:
    doc = _object(response)
    raw_items = doc.get("items")
    if raw_items is None:
        raw_items = []
    if not isinstance(raw_items, list) or not all(isinstance(i, dict) for i in raw_items):
        raise _malformed(response, "expected items as a list of objects")
    meta = doc.get("metadata")
    meta = cast(dict[str, object], meta) if isinstance(meta, dict) else {}
    token = meta.get("continue")
    version = meta.get("resourceVersion")
    return ListPage(
        items=tuple(cast(list[KubeObject], raw_items)),
        continue_token=token if isinstance(token, str) and token else None,
        resource_version=version if isinstance(version, str) else "",
        unreadable=_unreadable(response, doc.get("unreadable")),
    )


def _unreadable(response: httpx.Response, raw: object) -> Unreadable:
    """kinko's unreadable report from the body and the header; the larger count wins, so a
    header alone still reports how many were left out."""
    items: list[UnreadableObject] = []
    count = 0
    if raw is not None:
        if not isinstance(raw, dict):
            raise _malformed(response, "expected unreadable as an object")
        report = cast(dict[str, object], raw)
        raw_count = report.get("count", 0)
        raw_list = report.get("items") or []
        if not isinstance(raw_count, int) or raw_count < 0 or not isinstance(raw_list, list):
            raise _malformed(response, "expected unreadable.count and unreadable.items")
        count = raw_count
        for entry in raw_list:
            if not isinstance(entry, dict):
                raise _malformed(response, "expected unreadable.items as objects")
            items.append(
                UnreadableObject(
                    namespace=clean(entry.get("namespace"), 253),
                    name=clean(entry.get("name"), 253),
                    reason=clean(entry.get("reason"), MAX_MESSAGE),
                )
            )
    header = response.headers.get(UNREADABLE_HEADER, "").strip()
    if header:
        if not header.isdigit():
            raise _malformed(response, f"expected a number in {UNREADABLE_HEADER}")
        count = max(count, int(header))
    return Unreadable(count=max(count, len(items)), items=tuple(items))


# --- kinko.io/v1 answers ------------------------------------------------------------------


class _Fields:
    """Typed reads of one JSON object of an answer; ``where`` names it in errors
    (``status.rootKey``). A missing field gives the default, a mistyped one raises the
    UnavailableError of an answer that is not the API."""

    __slots__ = ("doc", "response", "where")

    def __init__(self, response: httpx.Response, doc: KubeObject, where: str) -> None:
        self.response = response
        self.doc = doc
        self.where = where

    def _bad(self, name: str, expected: str) -> errors.UnavailableError:
        return _malformed(self.response, f"expected {self.where}.{name} as {expected}")

    def names(self) -> list[str]:
        return list(self.doc)

    def text(self, name: str) -> str:
        """A required string (server text: control characters removed)."""
        value = self.doc.get(name)
        if not isinstance(value, str):
            raise self._bad(name, "a string")
        return clean(value, MAX_MESSAGE)

    def optional_text(self, name: str) -> str | None:
        value = self.doc.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._bad(name, "a string or null")
        return clean(value, MAX_MESSAGE)

    def count(self, name: str) -> int:
        """A count that is not negative; 0 when missing."""
        return self.optional_count(name) or 0

    def optional_count(self, name: str) -> int | None:
        """A count that is not negative, or None when missing or null."""
        value = self.optional_int(name)
        if value is not None and value < 0:
            raise self._bad(name, "a count (0 or more)")
        return value

    def optional_int(self, name: str) -> int | None:
        """An integer or null; a float is cut to its integer part (seconds)."""
        value = self.doc.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(name, "a number or null")
        return int(value)

    def version(self, name: str) -> int | None:
        """A key version number: a number, its decimal string, or null."""
        value = self.doc.get(name)
        if isinstance(value, str) and value.isdigit():
            return int(value)
        return self.optional_int(name)

    def label(self, name: str) -> str | None:
        """An id or a number, as text; None when null."""
        value = self.doc.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return self.optional_text(name)

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.doc.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._bad(name, "true or false")
        return value

    def time(self, name: str) -> datetime | None:
        """An RFC 3339 time (or Unix seconds), as an aware datetime; None when null."""
        value = self.doc.get(name)
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return datetime.fromtimestamp(value, UTC)
            except (OverflowError, OSError, ValueError):
                raise self._bad(name, "a time") from None
        if isinstance(value, str):
            parsed = _rfc3339(value)
            if parsed is not None:
                return parsed
        raise self._bad(name, "an RFC 3339 time or null")

    def texts(self, name: str) -> tuple[str, ...]:
        value = self.doc.get(name)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad(name, "a list of strings")
        return tuple(clean(v, MAX_MESSAGE) for v in value)

    def child(self, name: str) -> _Fields:
        """A required nested object."""
        found = self.optional_child(name)
        if found is None:
            raise self._bad(name, "an object")
        return found

    def optional_child(self, name: str) -> _Fields | None:
        value = self.doc.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._bad(name, "an object or null")
        return _Fields(self.response, cast(KubeObject, value), f"{self.where}.{name}")

    def mapping(self, name: str) -> _Fields:
        """A nested object keyed by names (resources, prefixes, key_ids); empty if missing."""
        return self.optional_child(name) or _Fields(self.response, {}, f"{self.where}.{name}")

    def counts(self, name: str) -> tuple[tuple[str, int], ...]:
        """An object of name → count, largest count first, then by name."""
        table = self.mapping(name)
        pairs = [(clean(key, MAX_MESSAGE), table.count(key)) for key in table.names()]
        return tuple(sorted(pairs, key=lambda pair: (-pair[1], pair[0])))


def _rfc3339(text: str) -> datetime | None:
    """An RFC 3339 time as an aware datetime (UTC when no offset), or None if it is not one.
    Go writes up to nine fractional digits; Python reads six, so the rest is cut."""
    match = re.fullmatch(
        r"(\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})?", text.strip()
    )
    if match is None:
        return None
    head, fraction, zone = match.groups()
    stamp = head + (fraction[:7] if fraction else "")
    if zone and zone not in ("Z", "z"):
        stamp += zone
    try:
        parsed = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _root_key(doc: _Fields) -> RootKeyStatus:
    raw_state = doc.doc.get("state")
    if isinstance(raw_state, int) and not isinstance(raw_state, bool):
        state = _KEY_STATES.get(raw_state, str(raw_state))
    else:
        state = doc.optional_text("state") or ""
    return RootKeyStatus(
        id=doc.text("id"),
        alias=doc.optional_text("alias"),
        version=doc.version("version"),
        state=state,
        expiration_date=doc.time("expirationDate"),
        expires_in_seconds=doc.optional_int(
            "expiresInSeconds" if "expiresInSeconds" in doc.doc else "secondsToExpiry"
        ),
        version_id=doc.optional_text("versionId"),
        key_id=doc.optional_text("keyId"),
    )


def _migration(resource: str, doc: _Fields) -> MigrationProgress:
    return MigrationProgress(
        resource=resource,
        state=doc.optional_text("state"),
        done=doc.count("done"),
        total=doc.optional_int("total"),
        rewritten=doc.count("rewritten"),
        unreadable=doc.count("unreadable"),
        conflicts=doc.count("conflicts"),
        reason=doc.optional_text("reason"),
        target=doc.optional_text("target"),
        updated=doc.time("updated"),
    )


def _cluster_status(doc: _Fields) -> ClusterStatus:
    root = doc.optional_child("rootKey")
    migrations = doc.mapping("migrations")
    return ClusterStatus(
        master_status=doc.text("masterStatus"),
        phase=doc.text("phase"),
        ready_since=doc.time("readySince"),
        root_key=None if root is None else _root_key(root),
        warnings=doc.texts("warnings"),
        migrations=tuple(
            _migration(clean(name, 253), migrations.child(name))
            for name in sorted(migrations.names())
        ),
        enabling=doc.optional_text("enabling"),
        doc=doc.doc,
    )


def _coverage(resource: str, doc: _Fields) -> ResourceCoverage:
    key_ids = doc.mapping("keyIds")
    entries = []
    for key_id in key_ids.names():
        entry = key_ids.child(key_id)
        entries.append(
            KeyIdCoverage(
                key_id=clean(key_id, MAX_MESSAGE),
                count=entry.count("count"),
                provider=entry.optional_text("provider") or "",
                root_key=entry.optional_text("rootKey"),
                version=entry.label("version"),
                current=entry.flag("current"),
            )
        )
    migration = doc.optional_child("migration")
    return ResourceCoverage(
        resource=clean(resource, 253),
        total=doc.count("total"),
        providers=doc.counts("providers"),
        key_ids=tuple(sorted(entries, key=lambda e: (-e.count, e.key_id))),
        plaintext=doc.count("plaintext"),
        stale=doc.count("stale"),
        undecryptable=doc.count("undecryptable"),
        undecryptable_names=doc.texts("undecryptableNames"),
        migration=None if migration is None else _migration(resource, migration),
        unavailable=doc.count("unavailable"),
        unavailable_reason=doc.optional_text("unavailableReason"),
    )


def _plan_entry(resource: str, doc: _Fields) -> MigrationPlanEntry:
    would_rewrite = doc.count("wouldRewrite")
    current = doc.optional_count("current")
    return MigrationPlanEntry(
        resource=clean(resource, 253),
        total=doc.count("total"),
        stale=doc.count("stale") if "stale" in doc.doc else would_rewrite,
        would_rewrite=would_rewrite,
        unreadable=doc.count("unreadable"),
        current=current,
        unreadable_names=doc.texts("unreadableNames"),
    )


# --- request helpers -----------------------------------------------------------------------


def _segment(what: str, text: str) -> str:
    if not text:
        raise errors.InvalidArgument(f"expected a {what}, got an empty one")
    if text in (".", "..") or "/" in text:
        raise errors.InvalidArgument(f"expected a {what} without '/', got {text!r}")
    return quote(text, safe="")


def _path(resource: str, namespace: str | None, name: str | None = None) -> str:
    if not _RESOURCE.fullmatch(resource):
        raise errors.InvalidArgument(
            f"expected a resource such as secrets or configmaps, got {resource!r}"
        )
    path = "/api/v1"
    if namespace is not None:
        path += f"/namespaces/{_segment('namespace', namespace)}"
    path += f"/{resource}"
    if name is not None:
        path += f"/{_segment('name', name)}"
    return path
