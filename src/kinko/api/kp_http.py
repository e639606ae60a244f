"""HTTP plumbing of the Key Protect transport: the error table, error responses, middleware.

Job: everything between uvicorn and a route handler that is not Key Protect semantics:

- :data:`STATUS`, the transport's **one** error-mapping table (exception class → HTTP
  status; the most specific class of an error wins). The Key Protect reason code is the
  error's own ``reason_code``; the status never depends on it.
- :func:`install_error_handlers`: every failure leaves as the Key Protect error envelope,
  including FastAPI's own request validation errors (JSON that does not parse, a missing or
  mistyped field: 400 ``BAD_BODY_ERR`` or ``NO_BODY_ERR``; a bad query parameter: 400
  ``INVALID_QUERY_PARAM_ERR``) and unknown routes (404, 405).
- :class:`WireMiddleware`, a pure ASGI middleware: caps request bodies (413 before a byte past
  the cap is read, whether or not ``content-length`` was sent), echoes the
  ``correlation-id`` header on every response, and answers bugs (500 ``INTERNAL_ERR``).
- :class:`CallRunner`: runs the hot routes' key service calls on the event loop while they
  are quick, and on the thread pool once they are not.

Invariants: no response or log line carries a request body, a header value other than the
correlation id, key material, plaintext or ciphertext. Error messages are the errors' own
(which never carry data, see ``kinko.errors``); a bug's log line names the exception type and
the traceback's frames, not its message.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Final, ParamSpec, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kinko import errors
from kinko.api import kp_wire
from kinko.api.kp_wire import FieldError, PayloadTooLarge

log = logging.getLogger("kinko.api.keyprotect")

_P = ParamSpec("_P")
_T = TypeVar("_T")

#: The one table: exception class → HTTP status. Looked up along the error's MRO.
STATUS: Final[Mapping[type[errors.KinkoError], int]] = {
    PayloadTooLarge: 413,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Gone: 410,
    errors.Unprocessable: 422,
    errors.DecryptionError: 422,
    errors.Conflict: 409,
    errors.InvalidArgument: 400,
    errors.CallerError: 400,
    errors.CorruptMetadata: 500,
    errors.UnavailableError: 503,
    errors.KinkoError: 500,
}

#: What could not be done, per route name, for ``errorMsg`` ("Key could not be deleted").
FAILURES: Final[dict[str, str]] = {}
_DEFAULT_FAILURE: Final = "Request could not be processed"


def status_for(exc: errors.KinkoError) -> int:
    """The HTTP status of ``exc``: the table's entry for its most specific class."""
    for cls in type(exc).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return 500


def error_response(
    request: Request | Scope | None,
    status: int,
    reason: str,
    message: str,
    *,
    target: tuple[str, str] | None = None,
) -> Response:
    """The Key Protect error envelope as a response (``request``: what the route was)."""
    failure = _DEFAULT_FAILURE
    if request is not None:
        scope = request.scope if isinstance(request, Request) else request
        route = scope.get("route")
        failure = FAILURES.get(getattr(route, "name", ""), _DEFAULT_FAILURE)
    body = kp_wire.error_body(status, reason, message, failure=failure, target=target)
    headers = {"WWW-Authenticate": 'Bearer realm="kinko"'} if status == 401 else None
    return Response(
        kp_wire.dumps(body), status_code=status, media_type=kp_wire.MEDIA_ERROR, headers=headers
    )


def kinko_error_response(request: Request | Scope | None, exc: errors.KinkoError) -> Response:
    """The response for a kinko error: status from :data:`STATUS`, code from the error."""
    target = exc.target if isinstance(exc, FieldError) else None
    return error_response(request, status_for(exc), exc.reason_code, str(exc), target=target)


def install_error_handlers(app: FastAPI) -> None:
    """Routes kinko errors, validation errors and HTTP errors of ``app`` into the envelope.

    Bugs (any other exception) are :class:`WireMiddleware`'s: it answers 500 and logs them
    without their message, and does not re-raise (Starlette's own last-resort handler would
    log the message).
    """

    async def on_kinko_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, errors.KinkoError)
        return kinko_error_response(request, exc)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return kinko_error_response(request, _validation_error(request, exc))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc.__cause__, errors.KinkoError):
            # FastAPI wraps any failure while reading the body (such as the body cap's
            # PayloadTooLarge) in a 400 HTTPException; the cause says what really happened.
            return kinko_error_response(request, exc.__cause__)
        if exc.status_code == 404:
            return error_response(request, 404, "NOT_FOUND_ERR", "no such resource path")
        if exc.status_code == 405:
            return error_response(
                request, 405, "METHOD_NOT_ALLOWED_ERR", f"method {request.method} not allowed"
            )
        if exc.status_code == 400:
            return kinko_error_response(request, kp_wire.bad_body("the body could not be read"))
        return error_response(request, exc.status_code, "REQUEST_ERR", "request refused")

    app.add_exception_handler(errors.KinkoError, on_kinko_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)


def _validation_error(request: Request, exc: RequestValidationError) -> errors.KinkoError:
    """One kinko error for FastAPI's validation errors, built from names, never from input."""
    problems = list(exc.errors())
    first = problems[0] if problems else {"loc": ("body",), "type": "invalid", "msg": ""}
    loc = tuple(first.get("loc", ()))
    kind = str(first.get("type", ""))
    where = loc[0] if loc else "body"
    if where == "query":
        return kp_wire.invalid_query(str(loc[1]) if len(loc) > 1 else "?", _expected(first))
    if where == "header":
        return kp_wire.invalid_header(str(loc[1]) if len(loc) > 1 else "?", _expected(first))
    if where == "path":
        return errors.NotFound("no such resource path")
    content_type = request.headers.get("content-type")
    if kind == "json_invalid":
        return kp_wire.bad_body("the body is not valid JSON")
    if kind == "missing" and len(loc) <= 1:
        return kp_wire.no_body()
    if content_type is not None and not kp_wire.is_json_media_type(content_type):
        return kp_wire.bad_body(
            "expected a JSON media type (application/json or application/vnd.ibm.kms.*+json)"
        )
    path = _field_path(loc[1:])
    if kind == "extra_forbidden":
        return kp_wire.bad_body(f"json: unknown field {path}")
    if kind == "missing":
        return kp_wire.bad_body(f"json: missing field {path}")
    return kp_wire.bad_body(f"json: field {path}: {_expected(first)}")


def _expected(problem: Mapping[str, object]) -> str:
    # pydantic's messages describe the expectation ("Input should be a valid integer"); the
    # offending input is in another key, which is never read here.
    msg = str(problem.get("msg", "")).removeprefix("Input should be ").rstrip(".")
    return msg or "valid"


def _field_path(loc: tuple[object, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return f'"{out or "body"}"'


class WireMiddleware:
    """Caps request bodies at ``max_body`` bytes, echoes ``correlation-id``, answers bugs.

    A declared ``content-length`` over the cap is refused before the app runs; a body that
    grows past it while streaming is refused as soon as it does (the app sees
    :class:`~kinko.api.kp_wire.PayloadTooLarge`). Either way the client gets 413
    ``BAD_BODY_ERR`` in the Key Protect envelope. An exception no handler took (a bug) gets
    500 ``INTERNAL_ERR`` and one log line with its type and frames, never its message.
    """

    def __init__(self, app: ASGIApp, *, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        correlation: bytes | None = None
        declared: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"correlation-id" or (name == b"x-correlation-id" and correlation is None):
                correlation = value
            elif name == b"content-length":
                declared = value
        max_body = self.max_body

        async def send_with_correlation(message: Message) -> None:
            if message["type"] == "http.response.start" and correlation is not None:
                message["headers"] = [*message.get("headers", ()), (b"correlation-id", correlation)]
            await send(message)

        if declared is not None and declared.isdigit() and int(declared) > max_body:
            response = kinko_error_response(None, kp_wire.body_too_large(max_body))
            await response(scope, receive, send_with_correlation)
            return
        received = 0
        started = False

        async def receive_capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_body:
                    raise kp_wire.body_too_large(max_body)
            return message

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send_with_correlation(message)

        try:
            await self.app(scope, receive_capped, send_tracked)
        except Exception as exc:
            frames = "".join(traceback.format_tb(exc.__traceback__))
            route = getattr(scope.get("route"), "path", "?")
            log.error(
                "unexpected %s in %s %s\n%s", type(exc).__name__, scope["method"], route, frames
            )
            if not started:
                response = error_response(scope, 500, "INTERNAL_ERR", "internal error")
                await response(scope, receive, send_with_correlation)


#: How long a key service call may hold the event loop, on average, before calls move to
#: the thread pool (seconds).
INLINE_BUDGET: Final = 500e-6
#: Weight of the newest call in the running average of call durations.
_SMOOTHING: Final = 1 / 16


class CallRunner:
    """Runs blocking key service calls for async routes: on the event loop while the calls
    are quick, on the thread pool once they are not.

    Why: a sync route costs a hop to a worker thread and back, and on a busy 2-core host that
    hop (waking the worker, the GIL changing hands twice, waking the loop) costs more than a
    wrap with a local store and HSM does: about 100-200 µs against 30-100 µs. But a call
    that waits on a network (an etcd store, a network HSM) or on a disk flush (``--audit-sync
    always``) must not hold the event loop, which serves every other request meanwhile.

    So: the runner keeps a running average of how long calls take (weight ``smoothing`` for
    the newest), measured where they run. While the average is within ``budget`` seconds a
    call runs right on the event loop; above it, calls go to the thread pool until the
    average falls below half the budget. It starts on the event loop, so with a slow backend
    the first call or few hold the loop once each. What a call returns or raises is the same
    either way; only where it runs differs. The average is a float updated by whichever
    thread finished a call: a lost update only delays a switch.

    Raises InvalidArgument (a budget that is not positive, a smoothing outside (0, 1]).
    """

    __slots__ = ("_average", "_budget", "_clock", "_inline", "_smoothing")

    def __init__(
        self,
        *,
        budget: float = INLINE_BUDGET,
        smoothing: float = _SMOOTHING,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not budget > 0 or not 0 < smoothing <= 1:
            raise errors.InvalidArgument(
                f"expected budget > 0 and 0 < smoothing <= 1, got {budget} and {smoothing}"
            )
        self._budget = budget
        self._smoothing = smoothing
        self._clock = clock
        self._average = 0.0
        self._inline = True

    @property
    def inline(self) -> bool:
        """Whether the next call runs on the event loop."""
        return self._inline

    def observe(self, seconds: float) -> None:
        """Takes one call's duration into the average and decides where the next one runs."""
        average = self._average + self._smoothing * (seconds - self._average)
        self._average = average
        if self._inline:
            self._inline = average <= self._budget
        else:
            self._inline = average < self._budget / 2

    async def run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``fn(*args, **kwargs)``, on the event loop or the thread pool (class docstring)."""
        if self._inline:
            start = self._clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.observe(self._clock() - start)

        def timed() -> _T:
            start = self._clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.observe(self._clock() - start)

        return await run_in_threadpool(timed)
