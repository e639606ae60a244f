"""kinko's own API group on the cluster port: ``/apis/kinko.io/v1/…``, the encryption lifecycle.

Job: :func:`create_admin_app` builds the ASGI app that ``kinko up``'s dispatcher sends
``/apis/kinko.io/`` to. Like the cluster API it is a transport only: authenticate the bearer
token (the cluster's token book, :class:`~kinko.api.k8s_auth.ClusterAuthenticator`) →
authorize (:func:`~kinko.cluster.auth.authorize` with :attr:`~kinko.cluster.auth.Verb.ADMIN`
where the route needs an Administrator) → decode the body → call one method of the
:class:`~kinko.cluster.lifecycle.EncryptionController` on the thread pool → render JSON.
Failures leave as Kubernetes ``Status`` documents through the cluster API's one error table
(:mod:`kinko.api.k8s_http`).

Routes (every one needs a valid cluster token):

- ``GET /apis/kinko.io/v1/status`` (any role): ``{"masterStatus", "phase", "readySince",
  "rootKey", "warnings", "migrations": {resource: {"state", "done", "total", "rewritten",
  "unreadable", "conflicts", "reason", "target", "updated", …}}, …}``;
- ``GET /apis/kinko.io/v1/encryption`` (Administrator): the coverage report, ``{"configHash",
  "resources": {resource: {"total", "providers", "keyIds", "plaintext", "stale",
  "undecryptable", "undecryptableNames", "migration", …}}}``;
- ``POST /apis/kinko.io/v1/kms/enable`` (Administrator), body ``{"key": "<id or alias>"}``:
  202 ``{"provider", "key", "socket", "status"}``; 404 unknown key, 409 a key in the wrong
  state or an enable still migrating, 400 a standard key or a bad body, 503 the key service;
- ``POST /apis/kinko.io/v1/migrations`` (Administrator), body ``{"resources": [...],
  "dryRun": bool}`` (both optional): a dry run answers 200 with what a pass would rewrite;
  otherwise the supervisor is asked for a pass now and the answer is 202 with the status.

Invariants: nothing logs a token, a header or a body; a refused request changes nothing (every
check here runs before the controller is called, and the controller's own refusals change
nothing); bodies are capped at :data:`MAX_BODY` bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from kinko import __version__
from kinko.api.k8s_http import cluster_app, json_response
from kinko.api.k8s_wire import read_body
from kinko.cluster.auth import ClusterPrincipal, ClusterTokenBook, Verb, authorize
from kinko.cluster.lifecycle import ClusterStatus, EnableResult
from kinko.cluster.metrics import ClusterMetrics
from kinko.cluster.migrate import MigrationReport
from kinko.errors import InvalidArgument

__all__ = ["GROUP", "MAX_BODY", "PREFIX", "EncryptionAdmin", "create_admin_app"]

GROUP: Final = "kinko.io"
VERSION: Final = "v1"
PREFIX: Final = f"/apis/{GROUP}/{VERSION}"
#: Request bodies are tiny JSON documents.
MAX_BODY: Final = 64 * 1024


class EncryptionAdmin(Protocol):
    """What the app needs: :class:`~kinko.cluster.lifecycle.EncryptionController`."""

    def status(self) -> ClusterStatus: ...

    def coverage_json(self, resources: Sequence[str] | None = None) -> dict[str, object]: ...

    def enable_kms(self, key_ref: str) -> EnableResult: ...

    def migrate(self, resources: Sequence[str] | None = None) -> ClusterStatus: ...

    def dry_run(self, resources: Sequence[str] | None = None) -> list[MigrationReport]: ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _decode(body: bytes) -> dict[str, object]:
    """A JSON object body (an empty body is ``{}``). Raises InvalidArgument."""
    if not body.strip():
        return {}

    def refuse(name: str) -> object:
        raise ValueError(f"{name} is not JSON")

    try:
        doc = json.loads(body, parse_constant=refuse)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidArgument("the request body is not a JSON object") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("the request body is not a JSON object")
    return doc


def _only(doc: dict[str, object], allowed: Sequence[str]) -> None:
    unknown = sorted(k for k in doc if k not in allowed)
    if unknown:
        fields = ", ".join(repr(k[:64]) for k in unknown[:5])
        raise InvalidArgument(f"unknown field(s) {fields}: expected {', '.join(allowed)}")


def _resources(doc: dict[str, object]) -> list[str] | None:
    value = doc.get("resources")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise InvalidArgument("resources: expected a list of resource names")
    return [str(r) for r in value]


def _report_json(report: MigrationReport) -> dict[str, object]:
    return {
        "total": report.done,
        "wouldRewrite": report.rewritten,
        "current": report.skipped,
        "unreadable": report.unreadable,
        "unreadableNames": list(report.unreadable_keys),
        "target": report.target,
    }


def create_admin_app(
    admin: EncryptionAdmin,
    tokens: ClusterTokenBook,
    *,
    metrics: ClusterMetrics | None = None,
    clock: Callable[[], datetime] = _utc_now,
    version: str = __version__,
) -> FastAPI:
    """The ``kinko.io/v1`` app over ``admin``, authenticated by ``tokens`` (module docstring).

    ``metrics``: observe every request (as the cluster API does). ``clock``: the wall clock
    token expiry is checked against.
    """
    app, caller = cluster_app(
        "kinko cluster administration (kinko.io/v1)",
        tokens,
        version=version,
        metrics=metrics,
        clock=clock,
    )

    async def administrator(request: Request) -> ClusterPrincipal:
        principal = await caller(request)
        authorize(principal, Verb.ADMIN, "", None)
        return principal

    @app.get(f"{PREFIX}/status")
    async def status(request: Request) -> Response:
        await caller(request)
        found = await run_in_threadpool(admin.status)
        return json_response(found.to_json())

    @app.get(f"{PREFIX}/encryption")
    async def encryption(request: Request) -> Response:
        await administrator(request)
        raw = request.query_params.getlist("resource")
        doc = await run_in_threadpool(admin.coverage_json, raw or None)
        return json_response(doc)

    @app.post(f"{PREFIX}/kms/enable")
    async def enable(request: Request) -> Response:
        await administrator(request)
        doc = _decode(await read_body(request, MAX_BODY))
        _only(doc, ("key",))
        key = doc.get("key")
        if not isinstance(key, str) or not key.strip():
            raise InvalidArgument("key: expected the root key's id or alias")
        result = await run_in_threadpool(admin.enable_kms, key)
        return json_response(result.to_json(), 202)

    @app.post(f"{PREFIX}/migrations")
    async def migrations(request: Request) -> Response:
        await administrator(request)
        doc = _decode(await read_body(request, MAX_BODY))
        _only(doc, ("resources", "dryRun"))
        dry_run = doc.get("dryRun", False)
        if not isinstance(dry_run, bool):
            raise InvalidArgument("dryRun: expected true or false")
        resources = _resources(doc)
        if dry_run:
            reports = await run_in_threadpool(admin.dry_run, resources)
            return json_response(
                {"dryRun": True, "resources": {r.resource: _report_json(r) for r in reports}}
            )
        found = await run_in_threadpool(admin.migrate, resources)
        return json_response({"dryRun": False, "status": found.to_json()}, 202)

    return app
