"""kinko's REST transport: IBM Key Protect API v2 over FastAPI, on the key service.

Job: :func:`create_keyprotect_app` builds the app that ``kinko keys serve`` runs. Every route
is thin: parse the request (headers, query, body) → call one
:class:`~kinko.keys.service.KeyService` method → render Key Protect JSON. Errors go through
the one table of :mod:`kinko.api.kp_http`; wire formats live in :mod:`kinko.api.kp_wire`,
request bodies in :mod:`kinko.api.kp_models`, response bodies in :mod:`kinko.api.kp_render`.

Routes (all under ``/api/v2``; ``{id}`` is a key id or alias):

- keys: ``POST /keys``, ``POST /keys_with_policy_overrides``, ``GET|HEAD /keys``,
  ``GET|PATCH|DELETE /keys/{id}``, ``GET /keys/{id}/metadata``, ``GET /keys/{id}/versions``,
  ``POST /keys/{id}/restore``, ``DELETE /keys/{id}/purge``;
- actions: ``POST /keys/{id}/actions/{wrap|unwrap|rewrap|rotate|disable|enable|
  setKeyForDeletion|unsetKeyForDeletion|sync}``, and the deprecated
  ``POST /keys/{id}?action=…`` that IBM's SDK still offers (``action_on_key``);
- policies: ``GET|PUT /keys/{id}/policies``, ``GET|PUT /instance/policies``;
- ``POST|GET /import_token``;
- registrations: ``GET /keys/registrations``, ``GET /keys/{id}/registrations``,
  ``POST|PUT|PATCH|DELETE /keys/{id}/registrations/{resource CRN}`` (service identities);
- ``POST|DELETE /keys/{id}/aliases/{alias}``; ``GET /key_rings``, ``POST|DELETE
  /key_rings/{id}``;
- ``GET /healthz`` (no auth), ``/openapi.json``; with ``echo=True`` also ``POST
  /api/v2/_echo``, ``_echo_async`` and ``_echo_plain`` (the benchmark's baselines: a sync and
  an async FastAPI route, and a plain Starlette route like wrap's; same stack, no auth, no
  service; not in the schema).

Where handlers run: every route is a sync route (FastAPI runs it on the thread pool) except
wrap, unwrap and rewrap, the hot path, which are async and hand their key service call to a
:class:`~kinko.api.kp_http.CallRunner`: on the event loop while calls take well under a
millisecond (SQLite store, soft keystore or SoftHSM2, audit log fsynced in the background),
on the thread pool while they do not (etcd, a network HSM, ``--audit-sync always``). The
request is parsed, authenticated and checked the same way either way, in the same order.
These three are also plain Starlette routes of the app itself (not FastAPI routes, and not
of the included ``/api/v2`` router), and read their request with :func:`action_request` (one
plain function: body, then :func:`call_context`, then the pydantic body model) instead of
FastAPI's dependency solving and endpoint machinery; they fail exactly as the declared
parameters did, through the same exception handlers. The OpenAPI document describes them
through documentation twins: routes with the declared parameters, in the schema but never
served.

Headers: ``authorization: Bearer <token>`` (401 ``UNAUTHORIZED_ERR`` without a valid one),
``bluemix-instance`` (required; 400 ``INVALID_HEADER_ERR`` when missing), ``x-kms-key-ring``,
``prefer: return=minimal|return=representation``, ``correlation-id`` (echoed on every
response). Responses carry Key Protect's media types (``application/vnd.ibm.kms.key+json``,
``…key_action+json``, ``…policy+json``, …) and collection envelopes, as the real service does;
``ibm-cloud-sdk-core`` decodes only ``application/json``, so with IBM's Python SDK
``get_result()`` is the ``requests`` response and callers use ``.json()``, exactly as IBM's
own examples do against Key Protect. Request bodies may use any JSON media type.

Invariants: instances are tenants (the service enforces it; the only cache here, of
successful token checks for a second, is keyed by token and holds the token's own principal);
handlers never log, and nothing they raise carries request data; a request that
fails changes nothing (every check that the transport makes happens before the service is
called, and the service's writes are all-or-nothing).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Final, Literal, NamedTuple, TypedDict, TypeVar

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

from kinko import __version__
from kinko.api import kp_render as render
from kinko.api import kp_wire as wire
from kinko.api.kp_auth import (
    DEFAULT_TTL,
    Authenticator,
    RawHeaders,
    parse_headers,
    scan_headers,
)
from kinko.api.kp_http import FAILURES, CallRunner, WireMiddleware, install_error_handlers
from kinko.api.kp_models import (
    ErrorOut,
    ImportTokenBody,
    ImportTokenOut,
    InstancePolicyPutBody,
    KeyActionBody,
    KeyCollectionOut,
    KeyCreateBody,
    KeyCreateResource,
    KeyPatchBody,
    KeyPolicyPutBody,
    KeyWithPolicyOverridesCreateBody,
    KeyWithPolicyOverridesResource,
    RegistrationBody,
    RegistrationResource,
    ResourceCollectionOut,
    RewrapBody,
    RewrapOut,
    RotateBody,
    RotationPolicyIn,
    UnwrapBody,
    UnwrapOut,
    WrapBody,
    WrapOut,
)
from kinko.errors import Forbidden, InvalidArgument, KinkoError
from kinko.keys.auth import Principal
from kinko.keys.model import Registration, RotationPolicy
from kinko.keys.results import KeyView
from kinko.keys.service import KeyService

#: Default cap on request bodies: 1 MiB (a wrap body is at most ~10 kB).
DEFAULT_MAX_BODY: Final = 1024 * 1024

_B64_MATERIAL: Final = "a base64 encoded key material"
_B64_CIPHERTEXT: Final = "the original base64 encoded ciphertext from the wrap operation"
_B64_FIELD: Final = "base64 encoded data"
_KEY_POLICY_TYPES: Final = ("rotation", "dualAuthDelete")
_SUPPORTED_INSTANCE_POLICIES: Final = ("dualAuthDelete", "rotation")
_KNOWN_INSTANCE_POLICIES: Final = (
    "dualAuthDelete",
    "rotation",
    "allowedNetwork",
    "allowedIP",
    "keyCreateImportAccess",
    "metrics",
)


# --- response classes (they set the media type the OpenAPI document shows) -----------------


class KeyJson(Response):
    media_type = wire.MEDIA_KEY


class KeyActionJson(Response):
    media_type = wire.MEDIA_KEY_ACTION


class VersionJson(Response):
    media_type = wire.MEDIA_KEY_VERSION


class PolicyJson(Response):
    media_type = wire.MEDIA_POLICY


class RegistrationJson(Response):
    media_type = wire.MEDIA_REGISTRATION


class KeyRingJson(Response):
    media_type = wire.MEDIA_KEY_RING


class ImportTokenJson(Response):
    media_type = wire.MEDIA_IMPORT_TOKEN


_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    status: {"model": ErrorOut, "description": "Key Protect error envelope"}
    for status in (400, 401, 403, 404, 409, 410, 413, 422, 500, 503)
}


#: A route handler: sync, or async for the routes whose service call may run on the loop.
_Handler = TypeVar("_Handler", Callable[..., Response], Callable[..., Awaitable[Response]])


def _send(cls: type[Response], status: int, document: object) -> Response:
    return cls(wire.dumps(document), status_code=status)


def _no_content() -> Response:
    return Response(status_code=204)


# --- request examples (shown in the OpenAPI document; the fuzzer starts from them) ---------

_META_KEY: Final = {"collectionType": wire.MEDIA_KEY, "collectionTotal": 1}
_META_POLICY: Final = {"collectionType": wire.MEDIA_POLICY, "collectionTotal": 1}
_EX_CREATE: Final[dict[str, Any]] = {
    "root key": {
        "value": {
            "metadata": _META_KEY,
            "resources": [{"type": wire.MEDIA_KEY, "name": "root-key-1", "extractable": False}],
        }
    },
    "standard key with alias": {
        "value": {
            "metadata": _META_KEY,
            "resources": [
                {
                    "type": wire.MEDIA_KEY,
                    "name": "standard-key-1",
                    "extractable": True,
                    "aliases": ["std-alias-1"],
                    "expirationDate": "2099-01-01T00:00:00Z",
                }
            ],
        }
    },
}
_EX_OVERRIDES: Final[dict[str, Any]] = {
    "rotation and dual authorization": {
        "value": {
            "metadata": _META_KEY,
            "resources": [
                {
                    "type": wire.MEDIA_KEY,
                    "name": "root-key-policies",
                    "extractable": False,
                    "rotation": {"enabled": True, "interval_month": 3},
                    "dualAuthDelete": {"enabled": False},
                }
            ],
        }
    }
}
_EX_WRAP: Final[dict[str, Any]] = {
    "generate a DEK": {"value": {}},
    "wrap a DEK with AAD": {
        "value": {"plaintext": "cGxhaW50ZXh0LWRhdGEta2V5", "aad": ["namespace", "secret"]}
    },
}
_EX_ROTATE: Final[dict[str, Any]] = {"generated key": {"value": {}}}
_EX_PATCH: Final[dict[str, Any]] = {"move to default": {"value": {"keyRingID": "default"}}}
_EX_KEY_POLICY: Final[dict[str, Any]] = {
    "rotation": {
        "value": {
            "metadata": _META_POLICY,
            "resources": [
                {"type": wire.MEDIA_POLICY, "rotation": {"enabled": True, "interval_month": 6}}
            ],
        }
    },
    "dual authorization": {
        "value": {
            "metadata": _META_POLICY,
            "resources": [{"type": wire.MEDIA_POLICY, "dualAuthDelete": {"enabled": False}}],
        }
    },
}
_EX_INSTANCE_POLICY: Final[dict[str, Any]] = {
    "dual authorization": {
        "value": {
            "metadata": _META_POLICY,
            "resources": [{"policy_type": "dualAuthDelete", "policy_data": {"enabled": False}}],
        }
    },
    "rotation": {
        "value": {
            "metadata": _META_POLICY,
            "resources": [
                {
                    "policy_type": "rotation",
                    "policy_data": {"enabled": True, "attributes": {"interval_month": 6}},
                }
            ],
        }
    },
}
_EX_IMPORT_TOKEN: Final[dict[str, Any]] = {
    "ten minutes, one retrieval": {"value": {"expiration": 600, "maxAllowedRetrievals": 1}}
}
_EX_REGISTRATION: Final[dict[str, Any]] = {
    "a bucket": {
        "value": {
            "metadata": {
                "collectionType": "application/vnd.ibm.kms.registration_input+json",
                "collectionTotal": 1,
            },
            "resources": [{"description": "a bucket", "preventKeyDeletion": False}],
        }
    }
}


# --- the call context ----------------------------------------------------------------------


class Call(NamedTuple):
    """Who calls, on which instance and key ring, with which correlation id and preference.

    A named tuple: one is built for every request, for a third of a frozen dataclass's cost.
    """

    principal: Principal
    instance: str
    key_ring: str | None
    correlation_id: str | None
    representation: bool


async def call_context(request: Request) -> Call:
    """The :class:`Call` of a request: authenticates the bearer token, reads the headers.

    Headers are read straight from the request (they are documented in the OpenAPI
    document by :func:`_clean_openapi`), and a token seen in the last second costs no store
    read (:class:`~kinko.api.kp_auth.Authenticator`). Raises Unauthorized (no valid token),
    FieldError (``INVALID_HEADER_ERR``: no ``bluemix-instance``; a ``prefer`` other than
    minimal or representation).
    """
    return await _call(request.app.state.authenticator, scan_headers(request.scope["headers"]))


async def _call(authenticator: Authenticator, raw: RawHeaders) -> Call:
    """:func:`call_context` on headers already found (the hot routes find them first)."""
    headers = parse_headers(raw)
    principal = await authenticator.principal(headers)
    if headers.instance is None:
        raise wire.invalid_header("bluemix-instance", "the instance ID (required)")
    return Call(
        principal=principal,
        instance=headers.instance,
        key_ring=headers.key_ring,
        correlation_id=headers.correlation_id,
        representation=headers.representation,
    )


CallDep = Annotated[Call, Depends(call_context)]


class _RegistrationFields(TypedDict):
    """What a create or replace registration body gives the service (keyword arguments)."""

    description: str
    prevent_key_deletion: bool
    key_version_id: str | None
    key_ring: str | None
    correlation_id: str | None


# --- the hot routes' request, read without FastAPI's dependency solving --------------------

_Body = TypeVar("_Body")
_WRAP_BODY: Final = TypeAdapter(WrapBody | None)
_UNWRAP_BODY: Final = TypeAdapter(UnwrapBody)
_REWRAP_BODY: Final = TypeAdapter(RewrapBody)


def _is_json_content(content_type: str | None) -> bool:
    """Whether FastAPI would parse a body of ``content_type`` as JSON: ``application/json``
    or ``application/*+json`` (the rule of ``fastapi.routing``, parameters ignored)."""
    if content_type == "application/json":  # what nearly every client sends
        return True
    if not content_type:
        return False
    media = content_type.partition(";")[0].strip().lower()
    if media.count("/") != 1:
        return False
    main, _, sub = media.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


async def _read_body(request: Request) -> bytes:
    """The request body, as ``await request.body()`` reads it, without its stream machinery.

    The hot routes read their body once, here and nowhere else. Raises ClientDisconnect
    (the client went away first) and what the ASGI ``receive`` raises (the body cap's
    PayloadTooLarge).
    """
    receive = request.receive
    chunks: list[bytes] = []
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            body = message.get("body", b"")
            if body:
                chunks.append(body)
            if not message.get("more_body", False):
                break
        elif kind == "http.disconnect":
            raise ClientDisconnect()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def action_request(
    request: Request,
    authenticator: Authenticator,
    body_type: TypeAdapter[_Body],
    *,
    required: bool,
) -> tuple[Call, _Body]:
    """The :class:`Call` and the validated body of a wrap, unwrap or rewrap request.

    Does by hand, in one pass, what FastAPI's dependency solving does for a route declared
    with ``call: CallDep`` and a body of ``body_type`` (the routes' documentation twins
    declare exactly that), and fails the same way in the same order (``authenticator`` is the
    app's, handed in rather than looked up through ``request.app.state`` on every call):

    1. the body is read and, under a JSON media type, parsed: a body over the cap is 413; one
       that is not JSON is 400 ``BAD_BODY_ERR``, before the caller is authenticated (as
       FastAPI reads the body before it solves dependencies);
    2. :func:`call_context`: 401, or 400 ``INVALID_HEADER_ERR``;
    3. the body is validated by the same pydantic model, and its errors go through the same
       :class:`~fastapi.exceptions.RequestValidationError` mapping (``kp_http``): no body is
       400 ``NO_BODY_ERR`` when ``required`` (else None, which ``body_type`` must admit); a
       body of another media type, an unknown or mistyped field, 400 ``BAD_BODY_ERR``.

    Raises PayloadTooLarge, InvalidArgument, RequestValidationError, and what
    :func:`call_context` raises.
    """
    headers = scan_headers(request.scope["headers"])
    try:
        raw = await _read_body(request)
        document: object = raw
        if raw and _is_json_content(headers.content_type):
            document = json.loads(raw)
    except json.JSONDecodeError:
        raise wire.bad_body("the body is not valid JSON") from None
    except KinkoError:
        raise
    except Exception as exc:
        raise wire.bad_body("the body could not be read") from exc
    call = await _call(authenticator, headers)
    if not raw:
        if required:
            raise wire.no_body()
        # FastAPI gives an optional body that was not sent its default, None; validating
        # None here only types it (body_type admits None whenever required is False).
        return call, body_type.validate_python(None)
    try:
        return call, body_type.validate_python(document, from_attributes=True)
    except ValidationError as exc:
        problems = [
            {**problem, "loc": ("body", *problem["loc"])}
            for problem in exc.errors(include_url=False)
        ]
        raise RequestValidationError(problems) from None


# --- request decoding helpers --------------------------------------------------------------


def _one(collection_type: str, total: int, resources: Sequence[object]) -> None:
    wire.check_collection(collection_type, total, resources)
    if len(resources) != 1:
        raise wire.bad_body(f"expected exactly one resource, got {len(resources)}")


def _b64(name: str, value: str | None, expected: str = _B64_FIELD) -> bytes | None:
    return None if value is None else wire.b64decode_field(name, value, expected=expected)


def _time(name: str, value: str | None) -> datetime | None:
    return None if value is None else wire.parse_rfc3339(name, value)


def _rotation(policy: RotationPolicyIn | None) -> RotationPolicy | None:
    if policy is None:
        return None
    enabled = True if policy.enabled is None else policy.enabled
    return RotationPolicy(enabled=enabled, interval_month=policy.interval_month)


def _create_arguments(resource: KeyCreateResource) -> dict[str, Any]:
    return {
        "name": resource.name,
        "extractable": resource.extractable,
        "description": resource.description or "",
        "payload": _b64("payload", resource.payload, _B64_MATERIAL),
        "encrypted_nonce": _b64("encryptedNonce", resource.encryptedNonce),
        "iv": _b64("iv", resource.iv),
        "encryption_algorithm": resource.encryptionAlgorithm,
        "expiration_date": _time("expirationDate", resource.expirationDate),
        "aliases": tuple(resource.aliases or ()),
    }


def _key_envelope(view: KeyView, *, representation: bool = True) -> dict[str, object]:
    resource = render.key(view) if representation else render.key_minimal(view)
    return wire.envelope(wire.MEDIA_KEY, [resource])


def _bool_query(name: str, value: str | None) -> bool | None:
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise wire.invalid_query(name, "true or false")


def _refuse_query(name: str, value: str | None) -> None:
    if value is not None:
        raise wire.invalid_query(name, "omitted (kinko does not support this query parameter)")


# --- the app -------------------------------------------------------------------------------


class _HotRoute(Route):
    """A plain Starlette route that also names itself in the scope, as FastAPI's routes do
    (the error envelope's ``errorMsg`` is looked up by route name)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE:
            child["route"] = self
        return match, child


def create_keyprotect_app(
    service: KeyService,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    echo: bool = False,
    auth_cache_seconds: float = DEFAULT_TTL,
) -> FastAPI:
    """The Key Protect API v2 app on ``service``.

    ``max_body``: request bodies over this many bytes get 413. ``echo``: also serve ``POST
    /api/v2/_echo``, ``_echo_async`` and ``_echo_plain`` (the benchmark's baselines).
    ``auth_cache_seconds``: how long a successful authentication is remembered (a revoked
    token works at most this long; 0: never).
    Raises InvalidArgument (``max_body`` < 1 KiB, a negative ``auth_cache_seconds``).
    """
    if max_body < 1024:
        raise InvalidArgument(f"max_body must be at least 1024 bytes, got {max_body}")
    app = FastAPI(
        title="kinko key service (IBM Key Protect API v2)",
        version=__version__,
        description="Root and standard keys over an HSM, compatible with IBM Key Protect API v2.",
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(WireMiddleware, max_body=max_body)
    router = APIRouter(prefix="/api/v2", responses=_ERRORS)
    authenticator = app.state.authenticator = Authenticator(service, ttl=auth_cache_seconds)
    # Wrap, unwrap and rewrap are async routes whose service call runs on the event loop
    # while calls are quick (kp_http.CallRunner); every other route is a sync route.
    calls = CallRunner()
    app.state.calls = calls

    # The hot routes read their request with action_request instead of FastAPI's dependency
    # solving, and are plain Starlette routes (_HotRoute: no FastAPI endpoint machinery) of
    # the app itself rather than of the included router (whose every request first walks all
    # of its routes); each has a twin, never served, whose signature documents it as before.
    twins = APIRouter(prefix="/api/v2", responses=_ERRORS)

    def route(
        method: str,
        path: str,
        *,
        name: str,
        failure: str,
        documented_as: Callable[..., Awaitable[Response]] | None = None,
        **kwargs: Any,
    ) -> Callable[[_Handler], _Handler]:
        FAILURES[name] = failure
        if documented_as is None:
            return router.api_route(
                path, methods=[method], name=name, response_model=None, **kwargs
            )
        twins.api_route(path, methods=[method], name=name, response_model=None, **kwargs)(
            documented_as
        )

        def register(handler: _Handler) -> _Handler:
            app.router.routes.append(
                _HotRoute(f"/api/v2{path}", handler, methods=[method], name=name)
            )
            return handler

        return register

    # --- actions (first: the hot path, matched before every other route) -------------------

    def _wrap(call: Call, key_ref: str, body: WrapBody | KeyActionBody | None) -> Response:
        plaintext = aad = None
        if body is not None:
            plaintext = _b64("plaintext", body.plaintext, _B64_MATERIAL)
            aad = body.aad
        result = service.wrap(
            call.principal,
            call.instance,
            key_ref,
            plaintext=plaintext,
            aad=aad or (),
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        return KeyActionJson(render.wrap_json(result), status_code=200)

    def _ciphertext(body: UnwrapBody | RewrapBody | KeyActionBody) -> str:
        if body.ciphertext is None:
            raise wire.bad_body('json: missing field "ciphertext"')
        wire.b64decode_field("ciphertext", body.ciphertext, expected=_B64_CIPHERTEXT)
        return body.ciphertext

    def _unwrap(call: Call, key_ref: str, body: UnwrapBody | KeyActionBody) -> Response:
        result = service.unwrap(
            call.principal,
            call.instance,
            key_ref,
            ciphertext=_ciphertext(body),
            aad=body.aad or (),
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        return KeyActionJson(render.unwrap_json(result), status_code=200)

    def _rewrap(call: Call, key_ref: str, body: RewrapBody | KeyActionBody) -> Response:
        result = service.rewrap(
            call.principal,
            call.instance,
            key_ref,
            ciphertext=_ciphertext(body),
            aad=body.aad or (),
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        return KeyActionJson(render.rewrap_json(result), status_code=200)

    def _rotate(call: Call, key_ref: str, body: RotateBody | KeyActionBody | None) -> Response:
        payload = nonce = iv = algorithm = None
        if body is not None:
            payload = _b64("payload", body.payload, _B64_MATERIAL)
            nonce = _b64("encryptedNonce", body.encryptedNonce)
            iv = _b64("iv", body.iv)
            algorithm = body.encryptionAlgorithm
        service.rotate(
            call.principal,
            call.instance,
            key_ref,
            payload=payload,
            encrypted_nonce=nonce,
            iv=iv,
            encryption_algorithm=algorithm,
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        return _no_content()

    def _restore(call: Call, key_ref: str) -> Response:
        view = service.restore_key(
            call.principal,
            call.instance,
            key_ref,
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        return _send(KeyJson, 201, _key_envelope(view))

    _SIMPLE: Final[dict[str, Callable[..., object]]] = {
        "disable": service.disable,
        "enable": service.enable,
        "setKeyForDeletion": service.set_key_for_deletion,
        "unsetKeyForDeletion": service.unset_key_for_deletion,
        "sync": service.sync_key,
    }

    def _simple(call: Call, key_ref: str, action: str) -> Response:
        _SIMPLE[action](
            call.principal,
            call.instance,
            key_ref,
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        return _no_content()

    async def wrap_doc(
        call: CallDep,
        id: str,
        body: Annotated[
            WrapBody | None,
            Body(media_type=wire.MEDIA_KEY_ACTION, openapi_examples=_EX_WRAP),
        ] = None,
    ) -> Response:
        """Wrap a DEK (``plaintext``), or generate and wrap one (no ``plaintext``)."""
        raise AssertionError("documentation only")

    @route(
        "POST",
        "/keys/{id}/actions/wrap",
        name="wrap_key",
        failure="Wrap with key could not be performed",
        response_class=KeyActionJson,
        responses={200: {"model": WrapOut}},
        documented_as=wrap_doc,
    )
    async def wrap_key(request: Request) -> Response:
        call, body = await action_request(request, authenticator, _WRAP_BODY, required=False)
        return await calls.run(_wrap, call, request.scope["path_params"]["id"], body)

    async def unwrap_doc(
        call: CallDep,
        id: str,
        body: Annotated[UnwrapBody, Body(media_type=wire.MEDIA_KEY_ACTION)],
    ) -> Response:
        """Unwrap a ciphertext of any version of the key."""
        raise AssertionError("documentation only")

    @route(
        "POST",
        "/keys/{id}/actions/unwrap",
        name="unwrap_key",
        failure="Unwrap with key could not be performed",
        response_class=KeyActionJson,
        responses={200: {"model": UnwrapOut}},
        documented_as=unwrap_doc,
    )
    async def unwrap_key(request: Request) -> Response:
        call, body = await action_request(request, authenticator, _UNWRAP_BODY, required=True)
        return await calls.run(_unwrap, call, request.scope["path_params"]["id"], body)

    async def rewrap_doc(
        call: CallDep,
        id: str,
        body: Annotated[RewrapBody, Body(media_type=wire.MEDIA_KEY_ACTION)],
    ) -> Response:
        """Rewrap a ciphertext under the key's latest version."""
        raise AssertionError("documentation only")

    @route(
        "POST",
        "/keys/{id}/actions/rewrap",
        name="rewrap_key",
        failure="Rewrap with key could not be performed",
        response_class=KeyActionJson,
        responses={200: {"model": RewrapOut}},
        documented_as=rewrap_doc,
    )
    async def rewrap_key(request: Request) -> Response:
        call, body = await action_request(request, authenticator, _REWRAP_BODY, required=True)
        return await calls.run(_rewrap, call, request.scope["path_params"]["id"], body)

    @route(
        "POST",
        "/keys/{id}/actions/rotate",
        name="rotate_key",
        failure="Key could not be rotated",
        status_code=204,
        responses={204: {"description": "Rotated"}},
    )
    def rotate_key(
        call: CallDep,
        id: str,
        body: Annotated[
            RotateBody | None,
            Body(media_type=wire.MEDIA_KEY_ACTION, openapi_examples=_EX_ROTATE),
        ] = None,
    ) -> Response:
        """Add a key version (imported keys: with new ``payload``)."""
        return _rotate(call, id, body)

    def _simple_route(action: str, failure: str, doc: str) -> None:
        def handler(call: CallDep, id: str) -> Response:
            return _simple(call, id, action)

        handler.__doc__ = doc
        route(
            "POST",
            f"/keys/{{id}}/actions/{action}",
            name=f"{action}_key",
            failure=failure,
            status_code=204,
            responses={204: {"description": "Done"}},
        )(handler)

    _simple_route("disable", "Key could not be disabled", "Suspend the key (Active → Suspended).")
    _simple_route("enable", "Key could not be enabled", "Reactivate the key (Suspended → Active).")
    _simple_route(
        "setKeyForDeletion",
        "Key could not be set for deletion",
        "Authorize the deletion of a key with a dual authorization policy.",
    )
    _simple_route(
        "unsetKeyForDeletion",
        "Key could not be unset for deletion",
        "Cancel an authorization to delete.",
    )
    _simple_route(
        "sync",
        "Could not initiate sync requests to associated resources",
        "Ask the services registered with the key to resynchronise.",
    )

    @route(
        "POST",
        "/keys/{id}",
        name="action_on_key",
        failure="Action could not be performed on key",
        response_class=KeyActionJson,
        deprecated=True,
        responses={
            200: {"model": WrapOut},
            201: {"model": KeyCollectionOut},
            204: {"description": "Done"},
        },
    )
    def action_on_key(
        call: CallDep,
        id: str,
        action: Annotated[
            Literal[
                "wrap",
                "unwrap",
                "rewrap",
                "rotate",
                "disable",
                "enable",
                "restore",
                "setKeyForDeletion",
                "unsetKeyForDeletion",
            ],
            Query(),
        ],
        body: Annotated[KeyActionBody | None, Body(media_type=wire.MEDIA_KEY_ACTION)] = None,
    ) -> Response:
        """The deprecated query form of the actions (``?action=wrap`` and so on)."""
        if action == "wrap":
            _only(body, "plaintext", "aad")
            return _wrap(call, id, body)
        if action in ("unwrap", "rewrap"):
            _only(body, "ciphertext", "aad")
            if body is None:
                raise wire.no_body()
            return _unwrap(call, id, body) if action == "unwrap" else _rewrap(call, id, body)
        if action == "rotate":
            _only(body, "payload", "encryptedNonce", "iv", "encryptionAlgorithm")
            return _rotate(call, id, body)
        _only(body)
        if action == "restore":
            return _restore(call, id)
        return _simple(call, id, action)

    # --- keys ------------------------------------------------------------------------------

    @route(
        "POST",
        "/keys",
        name="create_key",
        failure="Key could not be created",
        status_code=201,
        response_class=KeyJson,
        responses={201: {"model": KeyCollectionOut}},
    )
    def create_key(
        call: CallDep,
        body: Annotated[
            KeyCreateBody, Body(media_type=wire.MEDIA_KEY, openapi_examples=_EX_CREATE)
        ],
    ) -> Response:
        """Create (or import, with ``payload``) one key."""
        _one(body.metadata.collectionType, body.metadata.collectionTotal, body.resources)
        view = service.create_key(
            call.principal,
            call.instance,
            **_create_arguments(body.resources[0]),
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        return _send(KeyJson, 201, _key_envelope(view, representation=call.representation))

    @route(
        "POST",
        "/keys_with_policy_overrides",
        name="create_key_with_policy_overrides",
        failure="Key could not be created",
        status_code=201,
        response_class=KeyJson,
        responses={201: {"model": KeyCollectionOut}},
    )
    def create_key_with_policy_overrides(
        call: CallDep,
        body: Annotated[
            KeyWithPolicyOverridesCreateBody,
            Body(media_type=wire.MEDIA_KEY, openapi_examples=_EX_OVERRIDES),
        ],
    ) -> Response:
        """Create one key with its own rotation and dual authorization policies."""
        _one(body.metadata.collectionType, body.metadata.collectionTotal, body.resources)
        resource: KeyWithPolicyOverridesResource = body.resources[0]
        dual = resource.dualAuthDelete.enabled if resource.dualAuthDelete is not None else None
        view = service.create_key_with_policies(
            call.principal,
            call.instance,
            **_create_arguments(resource),
            rotation=_rotation(resource.rotation),
            dual_auth_delete=dual,
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        return _send(KeyJson, 201, _key_envelope(view, representation=call.representation))

    @route(
        "GET",
        "/keys",
        name="list_keys",
        failure="Keys could not be listed",
        response_class=KeyJson,
        responses={200: {"model": KeyCollectionOut}},
    )
    def list_keys(
        call: CallDep,
        limit: Annotated[int, Query(ge=1, le=5000)] = 200,
        offset: Annotated[int, Query(ge=0)] = 0,
        state: Annotated[str | None, Query(description="e.g. 1,2,3,5")] = None,
        extractable: Annotated[str | None, Query(description="true or false")] = None,
        search: str | None = None,
        sort: str | None = None,
        filter: str | None = None,
    ) -> Response:
        """List the instance's keys (of one key ring with ``x-kms-key-ring``)."""
        for name, value in (("search", search), ("sort", sort), ("filter", filter)):
            _refuse_query(name, value)
        result = service.list_keys(
            call.principal,
            call.instance,
            limit=limit,
            offset=offset,
            states=wire.parse_states(state),
            extractable=_bool_query("extractable", extractable),
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        resources = [render.key(view) for view in result.keys]
        return _send(KeyJson, 200, wire.envelope(wire.MEDIA_KEY, resources))

    @route("HEAD", "/keys", name="key_total", failure="Keys could not be counted")
    def key_total(
        call: CallDep,
        state: str | None = None,
        extractable: str | None = None,
        filter: str | None = None,
    ) -> Response:
        """The number of keys in the ``Key-Total`` header, without a body."""
        _refuse_query("filter", filter)
        result = service.list_keys(
            call.principal,
            call.instance,
            limit=1,
            states=wire.parse_states(state),
            extractable=_bool_query("extractable", extractable),
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        return Response(status_code=200, headers={"Key-Total": str(result.total)})

    @route(
        "GET",
        "/keys/registrations",
        name="list_all_registrations",
        failure="Registrations could not be listed",
        response_class=RegistrationJson,
        responses={200: {"model": ResourceCollectionOut}},
    )
    def list_all_registrations(
        call: CallDep,
        limit: Annotated[int, Query(ge=1, le=5000)] = 200,
        offset: Annotated[int, Query(ge=0)] = 0,
        urlEncodedResourceCRNQuery: str | None = None,
        preventKeyDeletion: str | None = None,
        totalCount: str | None = None,
    ) -> Response:
        """Registrations of every key of the instance."""
        return _registrations(
            call,
            None,
            limit,
            offset,
            urlEncodedResourceCRNQuery,
            preventKeyDeletion,
            totalCount,
        )

    @route(
        "GET",
        "/keys/{id}",
        name="get_key",
        failure="Key could not be retrieved",
        response_class=KeyJson,
        responses={200: {"model": KeyCollectionOut}},
    )
    def get_key(call: CallDep, id: str) -> Response:
        """The key, with ``payload`` for a standard key."""
        view = service.get_key(
            call.principal,
            call.instance,
            id,
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        return _send(KeyJson, 200, _key_envelope(view))

    @route(
        "GET",
        "/keys/{id}/metadata",
        name="get_key_metadata",
        failure="Key metadata could not be retrieved",
        response_class=KeyJson,
        responses={200: {"model": KeyCollectionOut}},
    )
    def get_key_metadata(call: CallDep, id: str) -> Response:
        """The key without its material."""
        view = service.get_key_metadata(
            call.principal,
            call.instance,
            id,
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        return _send(KeyJson, 200, _key_envelope(view))

    @route(
        "PATCH",
        "/keys/{id}",
        name="patch_key",
        failure="Key could not be updated",
        response_class=KeyJson,
        responses={200: {"model": KeyCollectionOut}},
    )
    def patch_key(
        call: CallDep,
        id: str,
        body: Annotated[KeyPatchBody, Body(media_type=wire.MEDIA_KEY, openapi_examples=_EX_PATCH)],
    ) -> Response:
        """Move the key to another key ring."""
        view = service.move_key(
            call.principal,
            call.instance,
            id,
            key_ring_id=body.keyRingID,
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        return _send(KeyJson, 200, _key_envelope(view))

    @route(
        "DELETE",
        "/keys/{id}",
        name="delete_key",
        failure="Key could not be deleted",
        response_class=KeyJson,
        responses={200: {"model": KeyCollectionOut}, 204: {"description": "Deleted"}},
    )
    def delete_key(
        call: CallDep,
        id: str,
        force: Annotated[str | None, Query(description="true: delete despite registrations")] = (
            None
        ),
    ) -> Response:
        """Delete the key (Destroyed; restorable for 30 days)."""
        view = service.delete_key(
            call.principal,
            call.instance,
            id,
            force=bool(_bool_query("force", force)),
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        if not call.representation:
            return _no_content()
        return _send(KeyJson, 200, _key_envelope(view))

    @route(
        "DELETE",
        "/keys/{id}/purge",
        name="purge_key",
        failure="Key could not be purged",
        response_class=KeyJson,
        responses={200: {"model": KeyCollectionOut}, 204: {"description": "Purged"}},
    )
    def purge_key(call: CallDep, id: str) -> Response:
        """Purge a deleted key: its material is gone for good."""
        view = service.purge_key(
            call.principal,
            call.instance,
            id,
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        if not call.representation:
            return _no_content()
        return _send(KeyJson, 200, _key_envelope(view))

    @route(
        "POST",
        "/keys/{id}/restore",
        name="restore_key",
        failure="Key could not be restored",
        status_code=201,
        response_class=KeyJson,
        responses={201: {"model": KeyCollectionOut}},
    )
    def restore_key(call: CallDep, id: str) -> Response:
        """Restore a deleted key (Destroyed → Active)."""
        return _restore(call, id)

    @route(
        "GET",
        "/keys/{id}/versions",
        name="get_key_versions",
        failure="KeyVersion(s) could not be retrieved",
        response_class=VersionJson,
        responses={200: {"model": ResourceCollectionOut}},
    )
    def get_key_versions(
        call: CallDep,
        id: str,
        limit: Annotated[int, Query(ge=1, le=5000)] = 200,
        offset: Annotated[int, Query(ge=0)] = 0,
        totalCount: str | None = None,
        allKeyStates: str | None = None,
    ) -> Response:
        """The key's versions, newest first."""
        result = service.get_versions(
            call.principal,
            call.instance,
            id,
            limit=limit,
            offset=offset,
            all_key_states=bool(_bool_query("allKeyStates", allKeyStates)),
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        total = result.total if _bool_query("totalCount", totalCount) else None
        resources = [render.version(v) for v in result.versions]
        return _send(
            VersionJson, 200, wire.envelope(wire.MEDIA_KEY_VERSION, resources, total_count=total)
        )

    # --- policies --------------------------------------------------------------------------

    @route(
        "GET",
        "/keys/{id}/policies",
        name="get_key_policies",
        failure="Key policies could not be retrieved",
        response_class=PolicyJson,
        responses={200: {"model": ResourceCollectionOut}},
    )
    def get_key_policies(
        call: CallDep,
        id: str,
        policy: Annotated[Literal["rotation", "dualAuthDelete"] | None, Query()] = None,
    ) -> Response:
        """The key's rotation and dual authorization policies."""
        policies = service.get_key_policies(
            call.principal,
            call.instance,
            id,
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        return _send(
            PolicyJson, 200, wire.envelope(wire.MEDIA_POLICY, render.key_policies(policies, policy))
        )

    @route(
        "PUT",
        "/keys/{id}/policies",
        name="put_key_policies",
        failure="Key policies could not be set",
        response_class=PolicyJson,
        responses={200: {"model": ResourceCollectionOut}},
    )
    def put_key_policies(
        call: CallDep,
        id: str,
        body: Annotated[
            KeyPolicyPutBody,
            Body(media_type=wire.MEDIA_POLICY, openapi_examples=_EX_KEY_POLICY),
        ],
        policy: Annotated[Literal["rotation", "dualAuthDelete"] | None, Query()] = None,
    ) -> Response:
        """Set the key's rotation and/or dual authorization policy."""
        wire.check_collection(
            body.metadata.collectionType, body.metadata.collectionTotal, body.resources
        )
        if not body.resources:
            raise wire.bad_body("expected at least one policy resource")
        rotation: RotationPolicy | None = None
        dual: bool | None = None
        for resource in body.resources:
            if resource.rotation is None and resource.dualAuthDelete is None:
                raise wire.bad_body("expected rotation or dualAuthDelete in each resource")
            if policy == "rotation" and resource.dualAuthDelete is not None:
                raise _mismatch()
            if policy == "dualAuthDelete" and resource.rotation is not None:
                raise _mismatch()
            if resource.rotation is not None:
                rotation = _rotation(resource.rotation)
            if resource.dualAuthDelete is not None:
                dual = resource.dualAuthDelete.enabled
        policies = service.put_key_policies(
            call.principal,
            call.instance,
            id,
            rotation=rotation,
            dual_auth_delete=dual,
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        return _send(
            PolicyJson, 200, wire.envelope(wire.MEDIA_POLICY, render.key_policies(policies, policy))
        )

    @route(
        "GET",
        "/instance/policies",
        name="get_instance_policies",
        failure="Instance policies could not be retrieved",
        response_class=PolicyJson,
        responses={200: {"model": ResourceCollectionOut}},
    )
    def get_instance_policies(call: CallDep, policy: str | None = None) -> Response:
        """The instance's policies (the ones new keys inherit)."""
        if policy is not None and policy not in _KNOWN_INSTANCE_POLICIES:
            raise wire.invalid_query("policy", " or ".join(_KNOWN_INSTANCE_POLICIES))
        policies = service.get_instance_policies(
            call.principal, call.instance, correlation_id=call.correlation_id
        )
        resources = render.instance_policies(policies, policy)
        return _send(PolicyJson, 200, wire.envelope(wire.MEDIA_POLICY, resources))

    @route(
        "PUT",
        "/instance/policies",
        name="put_instance_policies",
        failure="Instance policy could not be created",
        status_code=204,
        responses={204: {"description": "Set"}},
    )
    def put_instance_policies(
        call: CallDep,
        body: Annotated[
            InstancePolicyPutBody,
            Body(media_type=wire.MEDIA_POLICY, openapi_examples=_EX_INSTANCE_POLICY),
        ],
        policy: str | None = None,
    ) -> Response:
        """Set the instance's dual authorization and/or rotation policy."""
        wire.check_collection(
            body.metadata.collectionType, body.metadata.collectionTotal, body.resources
        )
        if not body.resources:
            raise wire.bad_body("expected at least one policy resource")
        if policy is not None and len(body.resources) != 1:
            raise InvalidArgument(
                "Only a single instance policy may be created per query parameter: Please "
                "pass single resource object",
                reason_code="NUM_COLLECTION_RESOURCE_ERR",
            )
        dual: bool | None = None
        rotation: RotationPolicy | None = None
        seen: set[str] = set()
        for resource in body.resources:
            kind = resource.policy_type
            if policy is not None and kind != policy:
                raise _mismatch()
            if kind in seen:
                raise wire.bad_body(f"the policy {kind} appears twice")
            seen.add(kind)
            if kind not in _SUPPORTED_INSTANCE_POLICIES:
                raise Forbidden(
                    f"This action is not permitted on this resource: kinko does not implement "
                    f"the {kind} instance policy",
                    reason_code="FEATURE_RESTRICTED_ERR",
                )
            data = resource.policy_data
            if kind == "dualAuthDelete":
                dual = data.enabled
            else:
                interval = data.attributes.interval_month if data.attributes else None
                rotation = RotationPolicy(enabled=data.enabled, interval_month=interval)
        service.put_instance_policies(
            call.principal,
            call.instance,
            dual_auth_delete=dual,
            rotation=rotation,
            correlation_id=call.correlation_id,
        )
        return _no_content()

    # --- import token ----------------------------------------------------------------------

    @route(
        "POST",
        "/import_token",
        name="create_import_token",
        failure="Import token could not be created",
        response_class=ImportTokenJson,
        responses={200: {"model": ImportTokenOut}},
    )
    def create_import_token(
        call: CallDep,
        body: Annotated[ImportTokenBody | None, Body(openapi_examples=_EX_IMPORT_TOKEN)] = None,
    ) -> Response:
        """Create the instance's import token (replacing any other)."""
        arguments: dict[str, int] = {}
        if body is not None and body.expiration is not None:
            arguments["expiration"] = body.expiration
        if body is not None and body.maxAllowedRetrievals is not None:
            arguments["max_allowed_retrievals"] = body.maxAllowedRetrievals
        info = service.create_import_token(
            call.principal, call.instance, **arguments, correlation_id=call.correlation_id
        )
        return _send(ImportTokenJson, 200, render.import_token_info(info))

    @route(
        "GET",
        "/import_token",
        name="get_import_token",
        failure="Import token could not be retrieved",
        response_class=ImportTokenJson,
        responses={200: {"model": ImportTokenOut}},
    )
    def get_import_token(call: CallDep) -> Response:
        """The import token's public key and nonce (uses one retrieval)."""
        token = service.get_import_token(
            call.principal, call.instance, correlation_id=call.correlation_id
        )
        return _send(ImportTokenJson, 200, render.import_token_key(token))

    # --- registrations ---------------------------------------------------------------------

    def _registrations(
        call: Call,
        key_ref: str | None,
        limit: int,
        offset: int,
        crn_query: str | None,
        prevent: str | None,
        total_count: str | None,
    ) -> Response:
        result = service.list_registrations(
            call.principal,
            call.instance,
            key_ref,
            crn_query=crn_query,
            prevent_key_deletion=_bool_query("preventKeyDeletion", prevent),
            limit=limit,
            offset=offset,
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        total = result.total if _bool_query("totalCount", total_count) else None
        resources = [render.registration(r) for r in result.registrations]
        return _send(
            RegistrationJson,
            200,
            wire.envelope(wire.MEDIA_REGISTRATION, resources, total_count=total),
        )

    @route(
        "GET",
        "/keys/{id}/registrations",
        name="list_registrations",
        failure="Registrations could not be listed",
        response_class=RegistrationJson,
        responses={200: {"model": ResourceCollectionOut}},
    )
    def list_registrations(
        call: CallDep,
        id: str,
        limit: Annotated[int, Query(ge=1, le=5000)] = 200,
        offset: Annotated[int, Query(ge=0)] = 0,
        urlEncodedResourceCRNQuery: str | None = None,
        preventKeyDeletion: str | None = None,
        totalCount: str | None = None,
    ) -> Response:
        """Registrations of one key."""
        return _registrations(
            call, id, limit, offset, urlEncodedResourceCRNQuery, preventKeyDeletion, totalCount
        )

    def _registration_input(body: RegistrationBody | None) -> RegistrationResource:
        if body is None:
            return RegistrationResource()
        _one(body.metadata.collectionType, body.metadata.collectionTotal, body.resources)
        return body.resources[0]

    def _registration_fields(call: Call, body: RegistrationBody | None) -> _RegistrationFields:
        """The service arguments a create or replace body gives (PUT and POST take the same)."""
        resource = _registration_input(body)
        return _RegistrationFields(
            description=resource.description or "",
            prevent_key_deletion=bool(resource.preventKeyDeletion),
            key_version_id=resource.keyVersion.id if resource.keyVersion else None,
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )

    def _registration_response(status: int, registration: Registration) -> Response:
        document = wire.envelope(wire.MEDIA_REGISTRATION, [render.registration(registration)])
        return _send(RegistrationJson, status, document)

    @route(
        "POST",
        "/keys/{id}/registrations/{crn:path}",
        name="create_registration",
        failure="Registration could not be created",
        status_code=201,
        response_class=RegistrationJson,
        responses={201: {"model": ResourceCollectionOut}},
    )
    def create_registration(
        call: CallDep,
        id: str,
        crn: str,
        body: Annotated[
            RegistrationBody | None,
            Body(media_type=wire.MEDIA_REGISTRATION, openapi_examples=_EX_REGISTRATION),
        ] = None,
    ) -> Response:
        """Register a resource (its CRN) with a root key. Service identities only."""
        registration = service.create_registration(
            call.principal, call.instance, id, crn, **_registration_fields(call, body)
        )
        return _registration_response(201, registration)

    @route(
        "PUT",
        "/keys/{id}/registrations/{crn:path}",
        name="replace_registration",
        failure="Registration could not be replaced",
        response_class=RegistrationJson,
        responses={200: {"model": ResourceCollectionOut}},
    )
    def replace_registration(
        call: CallDep,
        id: str,
        crn: str,
        body: Annotated[
            RegistrationBody | None,
            Body(media_type=wire.MEDIA_REGISTRATION, openapi_examples=_EX_REGISTRATION),
        ] = None,
    ) -> Response:
        """Create or replace a registration. Service identities only."""
        registration = service.replace_registration(
            call.principal, call.instance, id, crn, **_registration_fields(call, body)
        )
        return _registration_response(200, registration)

    @route(
        "PATCH",
        "/keys/{id}/registrations/{crn:path}",
        name="update_registration",
        failure="Registration could not be updated",
        response_class=RegistrationJson,
        responses={200: {"model": ResourceCollectionOut}},
    )
    def update_registration(
        call: CallDep,
        id: str,
        crn: str,
        body: Annotated[RegistrationBody, Body(media_type=wire.MEDIA_REGISTRATION)],
    ) -> Response:
        """Change a registration's description or ``preventKeyDeletion``. Services only."""
        resource = _registration_input(body)
        if resource.keyVersion is not None:
            raise wire.bad_body('json: unknown field "keyVersion" (use PUT to change it)')
        registration = service.update_registration(
            call.principal,
            call.instance,
            id,
            crn,
            description=resource.description,
            prevent_key_deletion=resource.preventKeyDeletion,
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        return _registration_response(200, registration)

    @route(
        "DELETE",
        "/keys/{id}/registrations/{crn:path}",
        name="delete_registration",
        failure="Registration could not be deleted",
        status_code=204,
        responses={204: {"description": "Deleted"}},
    )
    def delete_registration(call: CallDep, id: str, crn: str) -> Response:
        """Delete a registration. Service identities only."""
        service.delete_registration(
            call.principal,
            call.instance,
            id,
            crn,
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        return _no_content()

    # --- aliases and key rings -------------------------------------------------------------

    @route(
        "POST",
        "/keys/{id}/aliases/{alias}",
        name="create_key_alias",
        failure="Key alias could not be created",
        status_code=201,
        response_class=KeyJson,
        responses={201: {"model": ResourceCollectionOut}},
    )
    def create_key_alias(call: CallDep, id: str, alias: str) -> Response:
        """Add an alias to the key (at most 5 per key, unique in the instance)."""
        entry = service.create_alias(
            call.principal,
            call.instance,
            id,
            alias,
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        return _send(KeyJson, 201, wire.envelope(wire.MEDIA_KEY, [render.alias(entry)]))

    @route(
        "DELETE",
        "/keys/{id}/aliases/{alias}",
        name="delete_key_alias",
        failure="Key alias could not be deleted",
        status_code=204,
        responses={204: {"description": "Deleted"}},
    )
    def delete_key_alias(call: CallDep, id: str, alias: str) -> Response:
        """Remove an alias from the key."""
        service.delete_alias(
            call.principal,
            call.instance,
            id,
            alias,
            key_ring=call.key_ring,
            correlation_id=call.correlation_id,
        )
        return _no_content()

    @route(
        "GET",
        "/key_rings",
        name="list_key_rings",
        failure="Key rings could not be listed",
        response_class=KeyRingJson,
        responses={200: {"model": ResourceCollectionOut}},
    )
    def list_key_rings(
        call: CallDep,
        limit: Annotated[int, Query(ge=1, le=5000)] = 200,
        offset: Annotated[int, Query(ge=0)] = 0,
        totalCount: str | None = None,
    ) -> Response:
        """The instance's key rings (``default`` first)."""
        result = service.list_key_rings(
            call.principal,
            call.instance,
            limit=limit,
            offset=offset,
            correlation_id=call.correlation_id,
        )
        total = result.total if _bool_query("totalCount", totalCount) else None
        resources = [render.key_ring(r) for r in result.key_rings]
        return _send(
            KeyRingJson, 200, wire.envelope(wire.MEDIA_KEY_RING, resources, total_count=total)
        )

    @route(
        "POST",
        "/key_rings/{key_ring_id}",
        name="create_key_ring",
        failure="Key ring could not be created",
        status_code=201,
        responses={201: {"description": "Created"}},
    )
    def create_key_ring(call: CallDep, key_ring_id: str) -> Response:
        """Create a key ring."""
        service.create_key_ring(
            call.principal, call.instance, key_ring_id, correlation_id=call.correlation_id
        )
        return Response(status_code=201)

    @route(
        "DELETE",
        "/key_rings/{key_ring_id}",
        name="delete_key_ring",
        failure="Key ring could not be deleted",
        status_code=204,
        responses={204: {"description": "Deleted"}},
    )
    def delete_key_ring(
        call: CallDep,
        key_ring_id: str,
        force: Annotated[str | None, Query(description="true: move Destroyed keys away")] = None,
    ) -> Response:
        """Delete an empty key ring (``force``: one holding only Destroyed keys)."""
        service.delete_key_ring(
            call.principal,
            call.instance,
            key_ring_id,
            force=bool(_bool_query("force", force)),
            correlation_id=call.correlation_id,
        )
        return _no_content()

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type=wire.MEDIA_JSON)

    if echo:
        # Moved to the front of the app's routes below: the benchmark's baselines are
        # matched before every other route, wrap, unwrap and rewrap included, so they never
        # pay more route matching than what they are compared with.
        @app.post("/api/v2/_echo", include_in_schema=False)
        def echo_route(body: Annotated[dict[str, Any], Body()]) -> Response:
            return Response(wire.dumps(body), media_type=wire.MEDIA_KEY_ACTION)

        # The same as an async route: the like-for-like baseline of wrap and unwrap, which
        # (unlike the sync echo) need not hop to the thread pool (kp_http.CallRunner).
        @app.post("/api/v2/_echo_async", include_in_schema=False)
        async def echo_async_route(body: Annotated[dict[str, Any], Body()]) -> Response:
            return Response(wire.dumps(body), media_type=wire.MEDIA_KEY_ACTION)

        # The same once more as a plain Starlette route of the app itself, as wrap, unwrap
        # and rewrap are (_HotRoute): the same route kind, body read and parse, no service.
        async def echo_plain_route(request: Request) -> Response:
            # The body is read as the hot routes read theirs.
            body = json.loads(await _read_body(request))
            return Response(wire.dumps(body), media_type=wire.MEDIA_KEY_ACTION)

        app.router.routes.append(
            _HotRoute("/api/v2/_echo_plain", echo_plain_route, methods=["POST"], name="echo")
        )
        routes = app.router.routes
        echoes = [r for r in routes if getattr(r, "path", "").startswith("/api/v2/_echo")]
        routes[:] = echoes + [r for r in routes if r not in echoes]

    app.include_router(router)
    _clean_openapi(app, twins.routes)
    return app


def _mismatch() -> InvalidArgument:
    return InvalidArgument(
        "Data in body does not match data required by query parameter",
        reason_code="BODY_QUERY_PARAM_MISMATCH_ERR",
    )


def _only(body: KeyActionBody | None, *allowed: str) -> None:
    """Refuses fields of the union action body that the action does not take."""
    if body is None:
        return
    for name in sorted(body.model_fields_set):
        if name not in allowed and getattr(body, name) is not None:
            raise wire.bad_body(f'json: unknown field "{name}"')


_HEADER_PARAMETERS: Final[list[dict[str, Any]]] = [
    {
        "name": "bluemix-instance",
        "in": "header",
        "required": True,
        "description": "The instance (tenant) the call is about.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 128},
    },
    {
        "name": "x-kms-key-ring",
        "in": "header",
        "required": False,
        "description": "The key ring of the key (keys created without it are in 'default').",
        "schema": {"type": "string"},
    },
    {
        "name": "prefer",
        "in": "header",
        "required": False,
        "description": "What POST and DELETE return.",
        "schema": {"type": "string", "enum": ["return=minimal", "return=representation"]},
    },
    {
        "name": "correlation-id",
        "in": "header",
        "required": False,
        "description": "Echoed on the response and recorded in the audit log.",
        "schema": {"type": "string"},
    },
]


def _clean_openapi(app: FastAPI, twins: Sequence[BaseRoute] = ()) -> None:
    """Serves an OpenAPI document with Key Protect's headers and bearer scheme on every
    ``/api/v2`` operation, and without FastAPI's 422 responses (errors here are 400).

    ``twins``: documentation-only routes, each standing in the document for the served route
    of the same path and method (which is left out of the schema): the hot routes, whose
    handlers read the request themselves, are described by twins that declare it as FastAPI
    parameters.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=[*twins, *app.routes],
        )
        for path, path_item in schema.get("paths", {}).items():
            for operation in path_item.values():
                if not isinstance(operation, dict):
                    continue
                operation.get("responses", {}).pop("422", None)
                if path.startswith("/api/v2/"):
                    operation["parameters"] = [
                        *_HEADER_PARAMETERS,
                        *operation.get("parameters", []),
                    ]
                    operation["security"] = [{"bearer": []}]
        components = schema.setdefault("components", {})
        components.get("schemas", {}).pop("HTTPValidationError", None)
        components.get("schemas", {}).pop("ValidationError", None)
        components["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A kinko bearer token (kinko_…), from kinko token create.",
            }
        }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
