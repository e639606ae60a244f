"""kinko's cluster API: the Kubernetes REST API for Secrets and ConfigMaps, over FastAPI.

Job: :func:`create_cluster_app` builds the app that serves a
:class:`~kinko.cluster.service.ClusterService` to ``kubectl``, the ``kubernetes`` Python
client and any other Kubernetes client. Every route is thin: authenticate the bearer token →
authorize the verb (before a byte of the body is read, so 401 and 403 come before 400) →
decode the request (:mod:`kinko.api.k8s_wire`) → call one service method on the thread pool →
render Kubernetes JSON. Errors leave as Kubernetes ``Status`` through the one table of
:mod:`kinko.api.k8s_http`.

Routes:

- ``GET /api``, ``/api/v1``, ``/apis``, ``/version``: discovery (any valid token);
- ``GET /api/v1/{secrets|configmaps}``: list across namespaces;
- ``GET|POST /api/v1/namespaces/{ns}/{secrets|configmaps}``: list, create;
- ``GET|PUT|PATCH|DELETE /api/v1/namespaces/{ns}/{secrets|configmaps}/{name}``;
- ``GET /healthz``, ``/livez``, ``/readyz``: ``ok`` (no token);
- ``GET /metrics`` (with ``metrics``): Prometheus text, Administrator tokens only.

Kubernetes behaviour kept: verbs, status codes and ``Status`` reasons of kube-apiserver;
POST and PUT take JSON (also without a ``Content-Type``) or YAML, and fill a missing
``apiVersion`` and ``kind`` from the endpoint; PATCH takes a JSON merge
patch, a strategic merge patch (equal to a merge patch for these kinds, see
:func:`~kinko.api.k8s_wire.decode_patch`) or a JSON Patch; DELETE takes DeleteOptions with
preconditions and answers the deleted object; ``limit``/``continue`` page one snapshot;
``labelSelector`` and ``fieldSelector`` (``metadata.name``, ``metadata.namespace``, ``type``)
filter. What kinko does not serve is refused, never half-done: ``watch`` (400), ``dryRun``
(400), server-side apply (415), protobuf and other media types (415).

kinko's additions: a list answer reports objects that can no longer be decrypted in
``"unreadable": {"count", "items": [{"namespace", "name", "reason"}]}`` and the headers
``X-Kinko-Unreadable`` (always) and ``X-Kinko-Unreadable-Names`` (the first 50); reading one
answers 500 ``StorageReadError``; an Administrator deletes one with Kubernetes' own
``ignoreStoreReadErrorWithClusterBreakingPotential=true`` (query parameter or DeleteOptions
field).

Invariants:

- A Viewer never receives Secret data: every answer renders with the ``include_data`` that
  :func:`~kinko.cluster.auth.authorize` returned, which also drops kubectl's
  last-applied-configuration annotation (a copy of the object, data included).
- A request that fails changes nothing: every check here happens before the service is
  called, and the service's writes are guarded compare-and-swaps.
- Nothing logs a token, a header or a body; warnings name objects (namespace and name) only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from kinko import __version__
from kinko.api import k8s_wire as wire
from kinko.api.k8s_http import (
    FORCE_OPTION,
    Target,
    cluster_app,
    json_response,
    success_doc,
)
from kinko.cluster.auth import ClusterPrincipal, ClusterTokenBook, Verb, authorize
from kinko.cluster.metrics import ClusterMetrics
from kinko.cluster.patch import json_patch_update
from kinko.cluster.service import RESOURCES, ClusterService
from kinko.errors import InvalidArgument, NotFound

log = logging.getLogger("kinko.api.cluster")

#: Default cap on request bodies: 3 MiB (kube-apiserver's limit; an object holds at most
#: 1 MiB of data, which base64 and JSON inflate).
DEFAULT_MAX_BODY: Final = 3 * 1024 * 1024


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Call:
    """An authorized request: who calls, and whether Secret data may be shown to them."""

    principal: ClusterPrincipal
    include_data: bool


def _admit(
    request: Request,
    principal: ClusterPrincipal,
    verb: Verb,
    resource: str,
    namespace: str | None,
    name: str = "",
) -> Call:
    """Checks that ``resource`` exists and that ``principal`` may apply ``verb`` to it.

    Raises NotFound (an unknown resource), Forbidden.
    """
    request.state.target = Target(resource if resource in RESOURCES else "", name)
    if resource not in RESOURCES:
        raise NotFound(f"the server could not find the requested resource ({resource[:64]!r})")
    return Call(principal, authorize(principal, verb, resource, namespace))


def _refuse_dry_run(query: Mapping[str, str]) -> None:
    if query.get("dryRun"):
        raise InvalidArgument(
            "dryRun is not supported: kinko would have to write to find out what a write does"
        )


def create_cluster_app(
    service: ClusterService,
    tokens: ClusterTokenBook,
    *,
    metrics: ClusterMetrics | None = None,
    clock: Callable[[], datetime] = _utc_now,
    max_body: int = DEFAULT_MAX_BODY,
    version: str = __version__,
) -> FastAPI:
    """The Kubernetes REST API app for ``service``, authenticated by ``tokens``.

    ``metrics``: observe every request and serve ``GET /metrics``. ``clock``: the wall clock
    token expiry is checked against. ``max_body``: request bodies over this many bytes get
    413. ``version``: kinko's version, shown in ``/version``. Raises InvalidArgument
    (``max_body`` under 1 KiB).
    """
    if max_body < 1024:
        raise InvalidArgument(f"max_body must be at least 1024 bytes, got {max_body}")
    app, caller = cluster_app(
        "kinko cluster API (Kubernetes core/v1 Secrets and ConfigMaps)",
        tokens,
        version=version,
        metrics=metrics,
        clock=clock,
    )

    # --- health and discovery ---------------------------------------------------------------

    for path in ("/healthz", "/livez", "/readyz"):

        @app.get(path, include_in_schema=False)
        def health() -> Response:
            return PlainTextResponse("ok")

    @app.get("/api")
    async def api_versions(request: Request) -> Response:
        await caller(request)
        return json_response(wire.api_versions(request.url.netloc))

    @app.get("/api/v1")
    async def api_resources(request: Request) -> Response:
        await caller(request)
        return json_response(wire.api_resources())

    @app.get("/apis")
    async def api_groups(request: Request) -> Response:
        await caller(request)
        return json_response(wire.api_groups())

    @app.get("/version")
    async def version_info(request: Request) -> Response:
        await caller(request)
        return json_response(wire.version_info(version))

    if metrics is not None:

        @app.get("/metrics")
        async def metrics_text(request: Request) -> Response:
            authorize(await caller(request), Verb.ADMIN, "", None)
            body, content_type = metrics.render()
            return Response(body, headers={"content-type": content_type})

    # --- lists -------------------------------------------------------------------------------

    async def list_objects(request: Request, resource: str, namespace: str | None) -> Response:
        call = _admit(request, await caller(request), Verb.LIST, resource, namespace)
        query = wire.ListQuery.parse(request.query_params, resource)
        page = await run_in_threadpool(
            service.list,
            resource,
            namespace,
            selector=query.labels,
            limit=query.limit,
            continue_token=query.continue_token,
        )
        doc, unreadable = wire.list_doc(
            resource, page, query.fields, include_data=call.include_data
        )
        if unreadable:
            log.warning(
                "LIST %s in %s: %d unreadable object(s): %s",
                resource,
                namespace or "all namespaces",
                len(unreadable),
                ", ".join(f"{u.namespace}/{u.name}" for u in unreadable[:50]),
            )
        return json_response(doc, headers=wire.unreadable_headers(unreadable))

    @app.get("/api/v1/{resource}")
    async def list_all(request: Request, resource: str) -> Response:
        return await list_objects(request, resource, None)

    @app.get("/api/v1/namespaces/{namespace}/{resource}")
    async def list_namespaced(request: Request, namespace: str, resource: str) -> Response:
        return await list_objects(request, resource, namespace)

    # --- writes and single objects -----------------------------------------------------------

    @app.post("/api/v1/namespaces/{namespace}/{resource}")
    async def create(request: Request, namespace: str, resource: str) -> Response:
        call = _admit(request, await caller(request), Verb.CREATE, resource, namespace)
        _refuse_dry_run(request.query_params)
        content_type = request.headers.get("content-type")
        wire.check_object_media_type(content_type)
        body = wire.with_type_meta(
            wire.decode_object(await wire.read_body(request, max_body), content_type), resource
        )
        meta = body.get("metadata") if isinstance(body, dict) else None
        if isinstance(meta, dict) and isinstance(meta.get("name"), str):
            request.state.target = Target(resource, meta["name"][:253])
        obj = await run_in_threadpool(service.create, resource, namespace, body)
        return json_response(wire.render(obj, include_data=call.include_data), 201)

    @app.get("/api/v1/namespaces/{namespace}/{resource}/{name}")
    async def get(request: Request, namespace: str, resource: str, name: str) -> Response:
        call = _admit(request, await caller(request), Verb.GET, resource, namespace, name)
        obj = await run_in_threadpool(service.get, resource, namespace, name)
        return json_response(wire.render(obj, include_data=call.include_data))

    @app.put("/api/v1/namespaces/{namespace}/{resource}/{name}")
    async def replace(request: Request, namespace: str, resource: str, name: str) -> Response:
        call = _admit(request, await caller(request), Verb.UPDATE, resource, namespace, name)
        _refuse_dry_run(request.query_params)
        content_type = request.headers.get("content-type")
        wire.check_object_media_type(content_type)
        body = wire.with_type_meta(
            wire.decode_object(await wire.read_body(request, max_body), content_type), resource
        )
        obj = await run_in_threadpool(service.replace, resource, namespace, name, body)
        return json_response(wire.render(obj, include_data=call.include_data))

    @app.patch("/api/v1/namespaces/{namespace}/{resource}/{name}")
    async def patch(request: Request, namespace: str, resource: str, name: str) -> Response:
        call = _admit(request, await caller(request), Verb.PATCH, resource, namespace, name)
        _refuse_dry_run(request.query_params)
        kind = wire.check_patch_media_type(request.headers.get("content-type"))
        document = wire.decode_patch(await wire.read_body(request, max_body), kind)
        if kind is wire.PatchKind.JSON:
            obj = await run_in_threadpool(
                json_patch_update, service, resource, namespace, name, document
            )
        else:
            obj = await run_in_threadpool(service.patch, resource, namespace, name, document)
        return json_response(wire.render(obj, include_data=call.include_data))

    @app.delete("/api/v1/namespaces/{namespace}/{resource}/{name}")
    async def delete(request: Request, namespace: str, resource: str, name: str) -> Response:
        principal = await caller(request)
        query = request.query_params
        force = wire.parse_bool(FORCE_OPTION, query.get(FORCE_OPTION))
        verb = Verb.FORCE_DELETE if force else Verb.DELETE
        call = _admit(request, principal, verb, resource, namespace, name)
        _refuse_dry_run(query)
        body = await wire.read_body(request, max_body)
        options = wire.decode_delete_options(body, request.headers.get("content-type"))
        if options.ignore_store_read_error and not force:
            call = _admit(request, principal, Verb.FORCE_DELETE, resource, namespace, name)
            force = True
        if force:
            revision = await run_in_threadpool(service.delete_unreadable, resource, namespace, name)
            log.warning(
                "deleted unreadable %s %s/%s unread at revision %d, asked by %s (token %s)",
                resource,
                namespace,
                name,
                revision,
                principal.name,
                principal.token_id or "?",
            )
            return json_response(
                success_doc(
                    f'{resource} "{name}" could not be read and was deleted without reading it',
                    target=Target(resource, name),
                )
            )
        obj = await run_in_threadpool(
            service.delete,
            resource,
            namespace,
            name,
            resource_version=options.resource_version,
            uid=options.uid,
        )
        return json_response(wire.render(obj, include_data=call.include_data))

    return app
