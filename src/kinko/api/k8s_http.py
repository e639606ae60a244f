"""HTTP plumbing of the cluster API: the error table, ``Status`` answers, the middleware.

Job: everything between uvicorn and a route handler of :mod:`kinko.api.cluster` that is not
Kubernetes semantics:

- :data:`FAILURES`, the transport's **one** error-mapping table: exception class → HTTP code,
  Kubernetes ``Status.reason`` and how the message is written (looked up along the error's
  MRO, so the most specific class wins);
- :func:`install_error_handlers`: every failure leaves as a Kubernetes ``Status``
  (``{"kind":"Status","apiVersion":"v1","status":"Failure",…}``), including unknown routes
  (404 ``NotFound``) and methods (405 ``MethodNotAllowed``);
- :class:`ClusterMiddleware`, a pure ASGI middleware that answers bugs (500 ``InternalError``
  with a generic message; the log names the exception type and frames, never its message)
  and reports every request to :class:`~kinko.cluster.metrics.ClusterMetrics`.

Invariants: no ``Status`` or log line carries a request body, a header, a bearer token or a
value of ``data``/``stringData``: messages are the errors' own (which never carry data, see
:mod:`kinko.errors` and :mod:`kinko.cluster.service`) or fixed texts; metric labels come from
fixed sets (methods, resources, codes).
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kinko import errors
from kinko.api.k8s_auth import ClusterAuthenticator, bearer_token
from kinko.cluster.auth import ClusterPrincipal, ClusterTokenBook
from kinko.cluster.metrics import ClusterMetrics
from kinko.cluster.resources import status_for
from kinko.cluster.service import RESOURCES

log = logging.getLogger("kinko.api.cluster")

MEDIA_JSON: Final = "application/json"
#: Kubernetes' option to delete an object that cannot be decrypted (KEP-3926).
FORCE_OPTION: Final = "ignoreStoreReadErrorWithClusterBreakingPotential"


# --- transport errors (they join the one hierarchy as caller errors) -------------------------


class BodyTooLarge(errors.InvalidArgument):
    """The request body is over the app's cap (413); nothing past the cap was read."""


class UnsupportedMediaType(errors.InvalidArgument):
    """The body's ``Content-Type`` is not one the operation accepts (415)."""


class MethodNotAllowed(errors.InvalidArgument):
    """The path exists but not with this method (405)."""


# --- the one table ---------------------------------------------------------------------------


def _own(exc: errors.KinkoError) -> str:
    return str(exc)


def _internal(exc: errors.KinkoError) -> str:
    return f"Internal error occurred: {exc}"


def _unreadable(exc: errors.KinkoError) -> str:
    return (
        f"{exc}. An Administrator can delete it without reading it: DELETE it with "
        f"{FORCE_OPTION}=true (a query parameter or a DeleteOptions field)"
    )


def _readable(exc: errors.KinkoError) -> str:
    return (
        "the object is readable with the current encryption configuration, so it is not "
        f"deleted unread: delete it normally, without {FORCE_OPTION} ({exc})"
    )


@dataclass(frozen=True, slots=True)
class Failure:
    """How one error class is answered: HTTP code, ``Status.reason``, message."""

    code: int
    reason: str
    message: Callable[[errors.KinkoError], str] = _own


#: The one table: exception class → answer. Looked up along the error's MRO.
FAILURES: Final[Mapping[type[errors.KinkoError], Failure]] = {
    BodyTooLarge: Failure(413, "RequestEntityTooLarge"),
    UnsupportedMediaType: Failure(415, "UnsupportedMediaType"),
    MethodNotAllowed: Failure(405, "MethodNotAllowed"),
    errors.Invalid: Failure(422, "Invalid"),
    errors.Unauthorized: Failure(401, "Unauthorized"),
    errors.Forbidden: Failure(403, "Forbidden"),
    errors.NotFound: Failure(404, "NotFound"),
    errors.AlreadyExists: Failure(409, "AlreadyExists"),
    errors.DeletionRefused: Failure(409, "Conflict", _readable),
    errors.Conflict: Failure(409, "Conflict"),
    errors.Gone: Failure(410, "Expired"),
    # Kubernetes' reason for an object that cannot be decrypted or decoded (KEP-3926).
    errors.UnreadableValue: Failure(500, "StorageReadError", _unreadable),
    errors.DecryptionError: Failure(500, "StorageReadError"),
    errors.InvalidArgument: Failure(400, "BadRequest"),
    errors.CallerError: Failure(400, "BadRequest"),
    errors.CorruptMetadata: Failure(500, "InternalError", _internal),
    errors.PluginError: Failure(503, "ServiceUnavailable"),
    errors.UnavailableError: Failure(503, "ServiceUnavailable"),
    errors.KinkoError: Failure(500, "InternalError", _internal),
}

#: The answer to an exception that is not a KinkoError (a bug): nothing of it is shown.
BUG: Final = Failure(500, "InternalError")
BUG_MESSAGE: Final = "Internal error occurred: an unexpected error (the server log names its type)"


def failure_for(exc: errors.KinkoError) -> Failure:
    """The table's entry for the most specific class of ``exc``."""
    for cls in type(exc).__mro__:
        failure = FAILURES.get(cls)
        if failure is not None:
            return failure
    return BUG


# --- Status documents ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """What a request is about, for ``Status.details`` (``resource`` is the plural)."""

    resource: str = ""
    name: str = ""


def status_doc(
    code: int, reason: str, message: str, *, target: Target | None = None
) -> dict[str, object]:
    """A Kubernetes ``Status`` of failure."""
    doc: dict[str, object] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    details = _details(target)
    if details:
        doc["details"] = details
    return doc


def success_doc(message: str, *, target: Target) -> dict[str, object]:
    """A Kubernetes ``Status`` of success (what a delete without an object answers)."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "message": message,
        "details": _details(target),
    }


def _details(target: Target | None) -> dict[str, object]:
    details: dict[str, object] = {}
    if target is not None and target.name:
        details["name"] = target.name
    if target is not None and target.resource:
        details["kind"] = target.resource
    return details


def json_response(
    doc: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """``doc`` as compact JSON."""
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Response(body, status_code=status, media_type=MEDIA_JSON, headers=headers)


def error_response(exc: errors.KinkoError, target: Target | None) -> Response:
    """The ``Status`` answer to ``exc`` (about ``target`` when known)."""
    failure = failure_for(exc)
    if isinstance(exc, errors.Invalid):
        doc = status_for(exc)
        details = doc["details"]
        assert isinstance(details, dict)
        for key, value in _details(target).items():
            details.setdefault(key, value)
    else:
        doc = status_doc(failure.code, failure.reason, failure.message(exc), target=target)
    headers = {"WWW-Authenticate": 'Bearer realm="kinko"'} if failure.code == 401 else None
    return json_response(doc, failure.code, headers)


def _target(request: Request) -> Target | None:
    target = getattr(request.state, "target", None)
    return target if isinstance(target, Target) else None


def install_error_handlers(app: FastAPI) -> None:
    """Routes kinko errors, request validation errors and HTTP errors into ``Status``."""

    async def on_kinko_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, errors.KinkoError)
        return error_response(exc, _target(request))

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        # Handlers take no typed parameters but path strings, so this is a malformed path.
        return error_response(
            errors.InvalidArgument("the request does not match the route's parameters"),
            _target(request),
        )

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc.__cause__, errors.KinkoError):
            return error_response(exc.__cause__, _target(request))
        if exc.status_code == 404:
            return error_response(
                errors.NotFound("the server could not find the requested resource"), None
            )
        if exc.status_code == 405:
            return error_response(
                MethodNotAllowed(
                    f"the server does not allow method {request.method} on the requested resource"
                ),
                None,
            )
        return json_response(
            status_doc(exc.status_code, "BadRequest", "the request was refused"),
            exc.status_code,
        )

    app.add_exception_handler(errors.KinkoError, on_kinko_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)


# --- the middleware --------------------------------------------------------------------------

_METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def classify(method: str, path: str) -> tuple[str, str]:
    """A request's verb and resource in Kubernetes' terms, for metrics.

    The verb is ``LIST`` for a GET of a collection, the method otherwise (``OTHER`` for an
    unusual one); the resource is ``secrets``, ``configmaps`` or ``""``.
    """
    verb = method if method in _METHODS else "OTHER"
    parts = path.strip("/").split("/")
    if parts[:2] != ["api", "v1"]:
        return verb, ""
    rest = parts[2:]
    if len(rest) in (3, 4) and rest[0] == "namespaces":
        resource, collection = rest[2], len(rest) == 3
    elif len(rest) == 1:
        resource, collection = rest[0], True
    else:
        return verb, ""
    if resource not in RESOURCES:
        return verb, ""
    return ("LIST" if verb == "GET" and collection else verb), resource


class ClusterMiddleware:
    """Answers bugs with a generic 500 ``Status`` and reports each request to ``metrics``.

    An exception no handler took (a bug) gets 500 ``InternalError`` and one log line with its
    type and frames, never its message; it is not re-raised (Starlette's last-resort handler
    would log the message).
    """

    def __init__(self, app: ASGIApp, *, metrics: ClusterMetrics | None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        code = 500
        responded = False

        async def send_tracked(message: Message) -> None:
            nonlocal code, responded
            if message["type"] == "http.response.start":
                code = int(message["status"])
                responded = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            frames = "".join(traceback.format_tb(exc.__traceback__))
            route = getattr(scope.get("route"), "path", "?")
            log.error(
                "unexpected %s in %s %s\n%s", type(exc).__name__, scope["method"], route, frames
            )
            if not responded:
                state = scope.get("state")
                target = state.get("target") if isinstance(state, dict) else None
                doc = status_doc(
                    BUG.code,
                    BUG.reason,
                    BUG_MESSAGE,
                    target=target if isinstance(target, Target) else None,
                )
                response = json_response(doc, BUG.code)
                await response(scope, receive, send_tracked)
        finally:
            if self.metrics is not None:
                verb, resource = classify(scope["method"], scope["path"])
                self.metrics.observe_request(
                    verb=verb,
                    resource=resource,
                    code=code,
                    seconds=time.perf_counter() - started,
                )


#: The principal of a request's bearer token (raises Unauthorized).
Caller = Callable[[Request], Awaitable[ClusterPrincipal]]


def cluster_app(
    title: str,
    tokens: ClusterTokenBook,
    *,
    version: str,
    metrics: ClusterMetrics | None,
    clock: Callable[[], datetime],
) -> tuple[FastAPI, Caller]:
    """A FastAPI app of kinko's Kubernetes-style APIs and its request authenticator.

    No docs and no generated schema; every error is a ``Status`` (:func:`install_error_handlers`);
    every request goes through :class:`ClusterMiddleware`. The caller's principal comes from
    its bearer token in ``tokens``, expiry checked against ``clock``.
    """
    app = FastAPI(title=title, version=version, docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    app.add_middleware(ClusterMiddleware, metrics=metrics)
    authenticator = ClusterAuthenticator(tokens, clock=clock)

    async def caller(request: Request) -> ClusterPrincipal:
        return await authenticator.principal(bearer_token(request.headers))

    return app, caller
