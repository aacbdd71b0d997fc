"""``create_app(engine)``: the master's ASGI application."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mawex.errors import ConfigError, MawexError, Rejected, Unauthorized
from mawex.master.engine import Engine
from mawex.server import ops, results, tasks, worker_ws
from mawex.server.limits import NetLimits, RequestGuard, refuse_websocket
from mawex.server.responses import error_response, mawex_error_handler
from mawex.wire.api import ApiLimits, query_pairs, remembered_per_query

#: No token needed: liveness only (page shells come with 401 and ask for the token).
OPEN_PATHS = frozenset({"/healthz"})
#: The worker channel: with a worker token, it takes that token and no other.
WORKER_PATH = "/v1/worker"


def _bearer(token: str | None) -> bytes | None:
    return f"Bearer {token}".encode() if token else None


def _authorization(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    for name, value in headers:
        if name == b"authorization":
            return bytes(value)
    return b""


class BearerAuth:
    """Requires ``Authorization: Bearer <token>`` on every path but :data:`OPEN_PATHS`.

    ``token`` is the client token: every endpoint but the worker channel takes it.
    ``worker_token``, when given, is the only token the worker channel
    (``WS /v1/worker``) takes, and is refused everywhere else, so neither
    credential can stand in for the other. Without ``worker_token`` the worker
    channel takes the client token. Tokens are compared in constant time and
    never echoed: the 401 says only that a valid token is required.
    """

    def __init__(self, app: ASGIApp, token: str | None, worker_token: str | None = None) -> None:
        self.app = app
        self.client = _bearer(token)
        self.worker = _bearer(worker_token)

    def __repr__(self) -> str:
        return f"BearerAuth(client={self.client is not None}, worker={self.worker is not None})"

    def allowed(self, path: str, given: bytes) -> bool:
        """Whether ``given`` (the ``Authorization`` header's value) may call ``path``."""
        if path == WORKER_PATH and self.worker is not None:
            return hmac.compare_digest(given, self.worker)
        if self.worker is not None and hmac.compare_digest(given, self.worker):
            return False  # the worker token is no client credential
        return self.client is None or hmac.compare_digest(given, self.client)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] in ("http", "websocket")
            and scope["path"] not in OPEN_PATHS
            and not self.allowed(scope["path"], _authorization(scope["headers"]))
        ):
            if scope["type"] == "http" and scope["path"] in ops.PAGE_PATHS:
                # the page shell (no data) with 401: the browser shows it and it asks
                # for the token, which it then sends on every request for data
                await self.app(scope, receive, _with_status(send, 401))
            elif scope["type"] == "http":
                await error_response(Unauthorized())(scope, receive, send)
            else:
                await refuse_websocket(scope, send, Unauthorized())
            return
        await self.app(scope, receive, send)


def _with_status(send: Send, status: int) -> Send:
    async def send_with_status(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "status": status}
        await send(message)

    return send_with_status


async def _websocket_only(request: Request) -> Response:
    """A plain HTTP request to a WebSocket endpoint: ``426`` (other methods get ``405``)."""
    error = Rejected("this endpoint is a WebSocket: send the handshake (Upgrade: websocket)")
    response = error_response(error)
    response.status_code = 426
    response.headers["upgrade"] = "websocket"
    return response


#: The query parameters each API path takes; any other is refused (400), as unknown
#: fields in bodies are.
QUERY_PARAMS: dict[str, frozenset[str]] = {
    "/v1/tasks": frozenset({"wait"}),
    "/v1/tasks/batch": frozenset({"duplicate_indexes"}),
    "/v1/state": frozenset(),
    "/v1/results": frozenset({"from", "limit", "wait"}),
    "/v1/results/stream": frozenset({"from"}),
    "/v1/worker": frozenset(),
}
_TASK_QUERY = frozenset({"wait"})


def query_error(path: str, query: bytes) -> Rejected | None:
    """Why ``query`` is refused on ``path`` (unknown or repeated names), or None."""
    if not query or not path.startswith("/v1/"):
        return None
    problem = _query_problem(QUERY_PARAMS.get(path, _TASK_QUERY), query)
    return None if problem is None else Rejected(problem)


@remembered_per_query
def _query_problem(allowed: frozenset[str], query: bytes) -> str | None:
    names = [name for name, _ in query_pairs(query)]
    unknown = sorted(set(names) - allowed)
    if unknown:
        names_text = ", ".join(map(repr, unknown))[:200]
        return f"unknown query parameter(s) {names_text}"
    if len(names) != len(set(names)):
        return "a query parameter is repeated"
    return None


class StrictQuery:
    """Refuses unknown query parameters on the ``/v1/`` API, and repeated ones."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            error = query_error(scope.get("path", ""), scope.get("query_string", b""))
            if error is not None:
                if scope["type"] == "http":
                    await error_response(error)(scope, receive, send)
                else:
                    await refuse_websocket(scope, send, error)
                return
        await self.app(scope, receive, send)


class DirectRequests:
    """What the master's HTTP protocol answers without the ASGI app: a client's
    per-task calls, ``POST /v1/tasks`` and ``GET /v1/tasks/{group}/{id}``.

    They pass the same checks in the same order as through the app: the token
    (:class:`BearerAuth`), the body's size (the protocol sends only bodies within
    :attr:`max_body`), the query (:func:`query_error`), then
    :meth:`TaskEndpoints.answer <mawex.server.tasks.TaskEndpoints.answer>`.
    """

    def __init__(
        self, endpoints: tasks.TaskEndpoints, auth: BearerAuth | None, max_body: int
    ) -> None:
        self.endpoints = endpoints
        self.auth = auth
        #: The largest body the protocol may hand to :meth:`answer`.
        self.max_body = max_body

    def takes(self, method: str, path: str) -> bool:
        """Whether a ``method`` request to ``path`` may be answered by :meth:`answer`."""
        if method == "POST":
            return path == tasks.SUBMIT_PATH
        return method == "GET" and path != tasks.SUBMIT_PATH and self.endpoints.takes(path)

    async def answer(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes,
    ) -> tasks.Answer:
        """The response to a whole request :meth:`takes` (``headers`` lowercased)."""
        auth = self.auth
        if auth is not None and not auth.allowed(path, _authorization(headers)):
            return tasks.error_answer(Unauthorized())
        error = query_error(path, query)
        if error is not None:
            return tasks.error_answer(error)
        return await self.endpoints.answer(method, path, query, body)


class MasterApp:
    """A master's ASGI application, and the requests its HTTP protocol may answer
    directly (:attr:`direct`, for :func:`mawex.server.http_protocol.guarded_http_protocol`)."""

    def __init__(self, app: ASGIApp, direct: DirectRequests) -> None:
        self.app = app
        self.direct = direct

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def create_app(
    engine: Engine,
    *,
    token: str | None = None,
    worker_token: str | None = None,
    api_limits: ApiLimits | None = None,
    net_limits: NetLimits | None = None,
) -> MasterApp:
    """The HTTP API, result topic, worker channel and ops endpoints of one master.

    ``token``/``worker_token``: see :class:`BearerAuth`. ``api_limits`` bound sizes,
    ``net_limits`` the WebSocket connections, the worker channel's hello deadline and
    rate (the deadlines on each request's head and body are the HTTP protocol's:
    :func:`mawex.server.http_protocol.guarded_http_protocol`).
    """
    if token and worker_token and token == worker_token:
        raise ConfigError("the worker token must differ from the client token")
    routes = [
        Route("/v1/tasks/batch", tasks.submit_batch, methods=["POST"]),
        Route("/v1/state", tasks.state, methods=["GET"]),
        Route("/v1/results", results.results, methods=["GET"]),
        WebSocketRoute("/v1/results/stream", results.stream),
        WebSocketRoute("/v1/worker", worker_ws.worker_channel),
        Route("/v1/results/stream", _websocket_only, methods=["GET"]),
        Route("/v1/worker", _websocket_only, methods=["GET"]),
        Route("/healthz", ops.healthz, methods=["GET"]),
        Route("/readyz", ops.readyz, methods=["GET"]),
        Route("/metrics", ops.metrics, methods=["GET"]),
        Route("/", ops.dashboard, methods=["GET"]),
        Route("/docs", ops.docs, methods=["GET"]),
        Route("/openapi.json", ops.openapi_json, methods=["GET"]),
    ]
    ops.instrument(engine)
    app = Starlette(routes=routes, exception_handlers={MawexError: mawex_error_handler})
    app.state.engine = engine
    app.state.api_limits = api_limits = api_limits or ApiLimits()
    app.state.net_limits = net_limits = net_limits or NetLimits()
    endpoints = tasks.TaskEndpoints(app, engine, api_limits)
    guarded: ASGIApp = RequestGuard(
        StrictQuery(endpoints),
        max_body=api_limits.max_body,
        max_websockets=net_limits.max_connections,
    )
    auth = BearerAuth(guarded, token, worker_token) if token or worker_token else None
    direct = DirectRequests(endpoints, auth, api_limits.max_body)
    return MasterApp(auth or guarded, direct)
