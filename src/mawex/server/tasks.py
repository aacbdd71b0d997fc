"""The ``/v1/tasks`` endpoints and ``/v1/state``.

:class:`TaskEndpoints` answers what clients call once per task, ``POST /v1/tasks``
and ``GET``/``DELETE /v1/tasks/{group}/{id}``, as plain ASGI in front of the
router: these requests build no request, response or routing objects, which is
most of what a request costs besides the engine. The master's HTTP protocol answers
the usual ones without ASGI at all, through :meth:`TaskEndpoints.answer`
(:class:`mawex.server.app.DirectRequests`). Everything else goes on to the Starlette
app; ``POST /v1/tasks/batch`` and ``GET /v1/state`` are its handlers here.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from mawex.errors import MawexError, Rejected
from mawex.master.engine import Engine
from mawex.model import check_id, check_name
from mawex.server.responses import json_body, json_response
from mawex.wire import api

MAX_WAIT_S = 60.0
SUBMIT_PATH = "/v1/tasks"
TASK_PREFIX = "/v1/tasks/"
_JSON = (b"content-type", b"application/json")


class MethodNotAllowed(Rejected):
    """This endpoint does not take that method."""

    code = "method_not_allowed"
    status = 405

    def __init__(self, allow: str) -> None:
        super().__init__(f"this endpoint takes {allow}")
        self.allow = allow


#: A response as the per-task endpoints give it: status, headers, body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class TaskEndpoints:
    """``POST /v1/tasks``, ``GET``/``HEAD``/``DELETE /v1/tasks/{group}/{id}``; the rest: ``app``.

    The request body arrives whole (:class:`~mawex.server.limits.RequestGuard` reads
    it first) and the query's names are checked (``StrictQuery``). A
    :class:`~mawex.errors.MawexError` becomes its JSON error; any other exception
    goes to the server, which answers ``500``. :meth:`answer` is the same without
    ASGI, for requests the HTTP protocol answers itself
    (:class:`~mawex.server.app.DirectRequests`).
    """

    #: What this answers, as ``(path, method)`` (the router has no routes for them).
    ROUTES = frozenset(
        {
            (SUBMIT_PATH, "POST"),
            ("/v1/tasks/{group}/{id}", "GET"),
            ("/v1/tasks/{group}/{id}", "DELETE"),
        }
    )

    def __init__(self, app: ASGIApp, engine: Engine, limits: api.ApiLimits) -> None:
        self.app = app
        self.engine = engine
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.takes(scope["path"]):
            message = await receive()
            status, headers, content = await self.answer(
                scope["method"], scope["path"], scope["query_string"], message.get("body", b"")
            )
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content})
            return
        await self.app(scope, receive, send)

    @staticmethod
    def takes(path: str) -> bool:
        """Whether ``path`` is one of these endpoints'."""
        if path == SUBMIT_PATH:
            return True
        if not path.startswith(TASK_PREFIX):
            return False
        group, slash, id = path[len(TASK_PREFIX) :].partition("/")
        return bool(slash and group and id) and "/" not in id

    async def answer(self, method: str, path: str, query: bytes, body: bytes) -> Answer:
        """The response to one request to a path these endpoints take (:meth:`takes`)."""
        try:
            if path == SUBMIT_PATH:
                status, data = await self._submit(method, query, body)
            else:
                group, _, id = path[len(TASK_PREFIX) :].partition("/")
                status, data = await self._task(method, query, group, id)
        except MawexError as exc:
            return error_answer(exc)
        return json_answer(status, data)

    async def _submit(self, method: str, query: bytes, body: bytes) -> tuple[int, dict[str, Any]]:
        if method != "POST":
            raise MethodNotAllowed("POST")
        engine = self.engine
        wait = _wait(query)
        engine._require_leader()
        task = api.parse_task(body, self.limits)
        duplicate = await engine.submit(task)
        data: dict[str, Any] = {
            "id": task.id,
            "group": task.group,
            "status": "accepted",
            "duplicate": duplicate,
        }
        if wait > 0:  # submit and wait: the task as it is once terminal, or after ``wait``
            data["task"] = await engine.wait_terminal(task.group, task.id, wait)
        return 202, data

    async def _task(
        self, method: str, query: bytes, group: str, id: str
    ) -> tuple[int, dict[str, Any]]:
        if method not in ("GET", "HEAD", "DELETE"):
            raise MethodNotAllowed("GET, HEAD, DELETE")
        group, id = check_name(group, "group"), check_id(id)
        if method == "DELETE":
            return 200, await self.engine.cancel(group, id)
        wait = _wait(query)
        if wait > 0:
            return 200, await self.engine.wait_terminal(group, id, wait)
        return 200, self.engine.get(group, id)


def json_answer(status: int, data: Any, *headers: tuple[bytes, bytes]) -> Answer:
    """``data`` as a JSON response, with ``headers`` besides its type and length."""
    content = json_body(data)
    return status, [_JSON, *headers, (b"content-length", str(len(content)).encode())], content


def error_answer(error: MawexError) -> Answer:
    """``error`` as its JSON response (``405`` with its ``allow`` header)."""
    allow = [(b"allow", error.allow.encode())] if isinstance(error, MethodNotAllowed) else []
    return json_answer(error.status, error.to_body(), *allow)


def _wait(query: bytes) -> float:
    """The ``wait`` query parameter in seconds (0 without one)."""
    return _parse_wait(query) if query else 0.0


@api.remembered_per_query
def _parse_wait(query: bytes) -> float:
    return api.parse_seconds(dict(api.query_pairs(query)).get("wait"), "wait", MAX_WAIT_S)


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def submit_batch(request: Request) -> Response:
    engine = _engine(request)
    engine._require_leader()
    limits: api.ApiLimits = request.app.state.api_limits
    tasks = api.parse_batch(await request.body(), limits)
    accepted, duplicates = await engine.submit_batch(tasks)
    body: dict[str, Any] = {"accepted": accepted, "duplicates": len(duplicates)}
    if api.parse_flag(request.query_params.get("duplicate_indexes"), "duplicate_indexes"):
        body["duplicate_indexes"] = duplicates
    return json_response(body, 202)


async def state(request: Request) -> Response:
    return json_response(_engine(request).state_view())
