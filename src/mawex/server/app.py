"""``create_app(engine)``: the master's ASGI application."""

from __future__ import annotations

import hmac

from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from mawex.errors import MawexError, Unauthorized
from mawex.master.engine import Engine
from mawex.server import ops, results, tasks, worker_ws
from mawex.server.responses import error_response, mawex_error_handler
from mawex.wire.api import ApiLimits

#: No token needed: liveness, and the page shells that ask for the token (they hold no data).
OPEN_PATHS = frozenset({"/healthz"}) | ops.PAGE_PATHS


class BearerAuth:
    """Requires ``Authorization: Bearer <token>`` on every path but :data:`OPEN_PATHS`."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                if scope["type"] == "http":
                    await error_response(Unauthorized())(scope, receive, send)
                else:
                    await send({"type": "websocket.close", "code": 1008, "reason": "unauthorized"})
                return
        await self.app(scope, receive, send)


def create_app(
    engine: Engine, *, token: str | None = None, api_limits: ApiLimits | None = None
) -> ASGIApp:
    """The HTTP API, result topic, worker channel and ops endpoints of one master."""
    routes = [
        Route("/v1/tasks", tasks.submit, methods=["POST"]),
        Route("/v1/tasks/batch", tasks.submit_batch, methods=["POST"]),
        Route("/v1/tasks/{group}/{id}", tasks.get_task, methods=["GET"]),
        Route("/v1/tasks/{group}/{id}", tasks.cancel_task, methods=["DELETE"]),
        Route("/v1/state", tasks.state, methods=["GET"]),
        Route("/v1/results", results.results, methods=["GET"]),
        WebSocketRoute("/v1/results/stream", results.stream),
        WebSocketRoute("/v1/worker", worker_ws.worker_channel),
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
    app.state.api_limits = api_limits or ApiLimits()
    if token:
        return BearerAuth(app, token)
    return app
