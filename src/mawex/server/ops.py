"""``/healthz``, ``/readyz``, ``/metrics`` and the dashboard."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from mawex.master.engine import Engine
from mawex.server.responses import json_response


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    if engine.is_leader:
        return json_response({"status": "leader", "epoch": engine.epoch})
    return json_response(
        {"error": "not_leader", "detail": "this master is a standby", "leader": engine.leader_url},
        503,
    )


async def metrics(request: Request) -> Response:
    from mawex.server.metrics import render

    engine: Engine = request.app.state.engine
    body, content_type = render(engine)
    return Response(body, media_type=content_type)


async def dashboard(request: Request) -> Response:
    page = resources.files("mawex.server").joinpath("static/dashboard.html").read_text("utf-8")
    return HTMLResponse(page)
