"""``/v1/tasks`` handlers and ``/v1/state``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from mawex.master.engine import Engine
from mawex.model import check_id, check_name
from mawex.server.responses import json_response
from mawex.wire import api

MAX_WAIT_S = 60.0


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _limits(request: Request) -> api.ApiLimits:
    limits: api.ApiLimits = request.app.state.api_limits
    return limits


async def submit(request: Request) -> Response:
    engine = _engine(request)
    wait = api.parse_seconds(request.query_params.get("wait"), "wait", MAX_WAIT_S)
    engine._require_leader()
    task = api.parse_task(await request.body(), _limits(request))
    duplicate = await engine.submit(task)
    body: dict[str, Any] = {
        "id": task.id,
        "group": task.group,
        "status": "accepted",
        "duplicate": duplicate,
    }
    if wait > 0:  # submit and wait: the task as it is once terminal, or after ``wait``
        body["task"] = await engine.wait_terminal(task.group, task.id, wait)
    return json_response(body, 202)


async def submit_batch(request: Request) -> Response:
    engine = _engine(request)
    engine._require_leader()
    tasks = api.parse_batch(await request.body(), _limits(request))
    accepted, duplicates = await engine.submit_batch(tasks)
    body: dict[str, Any] = {"accepted": accepted, "duplicates": len(duplicates)}
    if api.parse_flag(request.query_params.get("duplicate_indexes"), "duplicate_indexes"):
        body["duplicate_indexes"] = duplicates
    return json_response(body, 202)


def _key(request: Request) -> tuple[str, str]:
    group = check_name(request.path_params["group"], "group")
    id = check_id(request.path_params["id"])
    return group, id


async def get_task(request: Request) -> Response:
    group, id = _key(request)
    wait = api.parse_seconds(request.query_params.get("wait"), "wait", MAX_WAIT_S)
    engine = _engine(request)
    if wait > 0:
        return json_response(await engine.wait_terminal(group, id, wait))
    return json_response(engine.get(group, id))


async def cancel_task(request: Request) -> Response:
    group, id = _key(request)
    return json_response(await _engine(request).cancel(group, id))


async def state(request: Request) -> Response:
    return json_response(_engine(request).state_view())
