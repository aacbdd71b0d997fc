"""Operations: ``/healthz``, ``/readyz``, ``/metrics``, the dashboard, ``/docs`` and
``/openapi.json``, plus :func:`instrument`, which hooks metrics and per-task log
lines onto an engine's commits.
"""

from __future__ import annotations

import logging
from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from mawex.core import events as ev
from mawex.master.engine import Engine
from mawex.server import metrics as metrics_module
from mawex.server.responses import json_response

log = logging.getLogger("mawex.tasks")

#: Paths that serve only static page shells (no data). With ``--token`` and no valid
#: token they still come, with status 401, so the browser shows the page that asks
#: for the token.
PAGE_PATHS = frozenset({"/", "/docs"})


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
    engine: Engine = request.app.state.engine
    body, content_type = metrics_module.render(engine)
    return Response(body, media_type=content_type)


@cache
def _static(name: str) -> str:
    return resources.files("mawex.server").joinpath("static", name).read_text("utf-8")


_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def dashboard(request: Request) -> Response:
    return HTMLResponse(_static("dashboard.html"), headers=_PAGE_HEADERS)


async def docs(request: Request) -> Response:
    from mawex.server.openapi import docs_page

    return HTMLResponse(docs_page(), headers=_PAGE_HEADERS)


async def openapi_json(request: Request) -> Response:
    from mawex.server.openapi import spec

    return json_response(spec())


# -- instrumentation -------------------------------------------------------------------


def instrument(engine: Engine) -> None:
    """Metrics histograms and per-task log lines, fed by the engine's commit observers."""
    metrics_module.install(engine)
    if log_task_events not in engine.observers:
        engine.observers.append(log_task_events)


def log_task_events(events: list[ev.Event], now: float, append_seconds: float) -> None:
    """One log line per task lifecycle event of a commit.

    ``task_accepted``, ``task_dispatched`` and ``task_finished`` (completed) are at
    DEBUG level (one line per task is a lot at thousands of tasks per second);
    retries, requeues and the other endings are at INFO.
    """
    if not log.isEnabledFor(logging.INFO):
        return
    try:
        _log_events(events, log.isEnabledFor(logging.DEBUG))
    except Exception:  # an observer runs on the master's event loop: never let it raise
        log.exception("task event logging failed", extra={"action": "log_error"})


def _log_events(events: list[ev.Event], debug: bool) -> None:
    for event in events:
        if isinstance(event, ev.Accepted):
            if debug:
                log.debug(
                    "task accepted",
                    extra={
                        "action": "task_accepted",
                        "group": event.group,
                        "id": event.id,
                        "max_attempts": event.max_attempts,
                    },
                )
        elif isinstance(event, ev.Scheduled):
            if debug:
                log.debug(
                    "task dispatched",
                    extra={
                        "action": "task_dispatched",
                        "group": event.group,
                        "id": event.id,
                        "attempt": event.attempt,
                        "worker": event.worker,
                        "pod": event.pod,
                    },
                )
        elif isinstance(event, ev.Completed):
            if debug:
                _finished(logging.DEBUG, event, "completed", None)
        elif isinstance(event, ev.Failed):
            _finished(logging.INFO, event, "failed", event.error)
        elif isinstance(event, ev.Cancelled | ev.Expired):
            _finished(logging.INFO, event, ev.type_of(event), None)
        elif isinstance(event, ev.Retrying):
            log.info(
                "task attempt failed, retrying",
                extra={
                    "action": "task_retrying",
                    "group": event.group,
                    "id": event.id,
                    "attempt": event.attempt,
                    "error": _short(event.error),
                },
            )
        elif isinstance(event, ev.Requeued):
            log.info(
                "task requeued",
                extra={
                    "action": "task_requeued",
                    "group": event.group,
                    "id": event.id,
                    "attempt": event.attempt,
                    "reason": event.reason,
                },
            )


def _finished(
    level: int,
    event: ev.Completed | ev.Failed | ev.Cancelled | ev.Expired,
    status: str,
    error: str | None,
) -> None:
    extra: dict[str, object] = {
        "action": "task_finished",
        "status": status,
        "group": event.group,
        "id": event.id,
        "attempt": event.attempt,
    }
    if error is not None:
        extra["error"] = _short(error)
    log.log(level, "task %s", status, extra=extra)


def _short(text: str, limit: int = 500) -> str:
    first = text.strip().splitlines()[0] if text.strip() else text
    return first if len(first) <= limit else first[: limit - 1] + "…"
