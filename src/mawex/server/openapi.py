"""The master's HTTP API as OpenAPI 3.1 (``GET /openapi.json``) and a self-contained
``GET /docs`` page rendering it (no CDN: the page and its script are served inline).

Request bodies mirror the strict wire schemas of :mod:`mawex.wire.api` (a test
checks that their fields agree); responses are described here.
"""

from __future__ import annotations

import html
import json
from functools import cache
from importlib import resources
from typing import Any

from mawex import __version__
from mawex.model import ID_PATTERN, MAX_ATTEMPTS_LIMIT, NAME_PATTERN
from mawex.wire import api

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_ERRORS = {
    "400": _error(
        "Invalid input (`invalid`): malformed JSON, wrong types, unknown fields, bad ids"
    ),
    "401": _error("Missing or wrong bearer token (`unauthorized`)"),
}
_NOT_LEADER = {"503": _json(_ref("NotLeader"), "This master is a standby; retry on `leader`")}


def _path_params() -> list[dict[str, Any]]:
    return [
        {
            "name": "group",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": NAME_PATTERN},
        },
        {
            "name": "id",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": ID_PATTERN},
        },
    ]


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _components() -> dict[str, Any]:
    seconds = {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 10_000_000}
    wire = {
        "TaskIn": {
            "type": "object",
            "description": api.TaskIn.__doc__,
            "additionalProperties": False,
            "required": ["id", "group"],
            "properties": {
                "id": {"type": "string", "pattern": ID_PATTERN},
                "group": {"type": "string", "pattern": NAME_PATTERN},
                "payload": {"description": "Any JSON value (default null)"},
                "max_attempts": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_ATTEMPTS_LIMIT,
                    "default": 1,
                },
                "timeout_s": {**seconds, "description": "Per-attempt timeout"},
                "pending_timeout_s": {**seconds, "description": "Expire if pending longer"},
            },
        },
        "BatchIn": {
            "type": "object",
            "description": api.BatchIn.__doc__,
            "additionalProperties": False,
            "required": ["tasks"],
            "properties": {"tasks": {"type": "array", "items": _ref("TaskIn")}},
        },
    }
    status = {
        "type": "string",
        "enum": ["pending", "running", "completed", "failed", "cancelled", "expired"],
    }
    task_ref = {
        "type": ["object", "null"],
        "properties": {
            "group": {"type": "string"},
            "id": {"type": "string"},
            "attempt": {"type": "integer"},
        },
    }
    return {
        **wire,
        "Error": {
            "type": "object",
            "required": ["error", "detail"],
            "properties": {
                "error": {
                    "type": "string",
                    "description": "Stable code: invalid, unauthorized, not_found, too_large, "
                    "queue_full, method_not_allowed, not_leader, journal_error, …",
                },
                "detail": {"type": "string", "description": "What went wrong, for people"},
            },
        },
        "NotLeader": {
            "type": "object",
            "required": ["error", "detail", "leader"],
            "properties": {
                "error": {"const": "not_leader"},
                "detail": {"type": "string"},
                "leader": {
                    "type": ["string", "null"],
                    "description": "URL of the current leader, if known",
                },
            },
        },
        "Accepted": {
            "type": "object",
            "required": ["id", "group", "status", "duplicate"],
            "properties": {
                "id": {"type": "string"},
                "group": {"type": "string"},
                "status": {"const": "accepted"},
                "duplicate": {
                    "type": "boolean",
                    "description": "The identity was already known: nothing new was queued",
                },
                "task": {
                    "allOf": [_ref("Task")],
                    "description": "With `?wait=S`: the task once terminal, or as it is "
                    "after S seconds",
                },
            },
        },
        "BatchAccepted": {
            "type": "object",
            "required": ["accepted", "duplicates"],
            "properties": {
                "accepted": {"type": "integer"},
                "duplicates": {"type": "integer"},
                "duplicate_indexes": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0},
                    "description": "With `?duplicate_indexes=1`: the positions in `tasks` of "
                    "the tasks already known or repeated in the batch",
                },
            },
        },
        "Task": {
            "type": "object",
            "required": ["id", "group", "status", "attempt"],
            "properties": {
                "id": {"type": "string"},
                "group": {"type": "string"},
                "status": status,
                "attempt": {
                    "type": "integer",
                    "description": "Current or last attempt (0 before the first)",
                },
                "result": {"description": "The executor's return value (completed tasks)"},
                "error": {"type": "string", "description": "The last error"},
                "errors": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Every attempt's error",
                },
            },
        },
        "State": {
            "type": "object",
            "required": ["leader", "epoch", "master_id", "groups", "pods", "workers", "counts"],
            "properties": {
                "leader": {"type": "boolean"},
                "epoch": {"type": "integer"},
                "master_id": {"type": "string"},
                "role": {"type": "string", "enum": ["starting", "standby", "leader", "stopped"]},
                "url": {"type": ["string", "null"]},
                "leader_url": {"type": ["string", "null"]},
                "lease_expires_in_s": {"type": ["number", "null"]},
                "offset": {"type": "integer", "description": "Last journal offset applied"},
                "topic_next": {"type": "integer", "description": "Offset of the next topic event"},
                "groups": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {
                            "pending": {"type": "integer"},
                            "running": {"type": "integer"},
                        },
                    },
                },
                "pods": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {
                            "busy": {"type": "boolean"},
                            "workers": {"type": "integer"},
                            "task": task_ref,
                        },
                    },
                },
                "workers": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "id": {"type": "string"},
                            "group": {"type": "string"},
                            "pod": {"type": "string"},
                            "sandbox": {"type": "string"},
                            "status": {
                                "type": "string",
                                "enum": ["idle", "busy", "draining", "disconnected"],
                            },
                            "task": task_ref,
                            "busy_for_s": {"type": ["number", "null"]},
                        },
                    },
                },
                "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            },
        },
        "ResultEvent": {
            "type": "object",
            "required": ["offset", "type", "id", "group", "attempt", "at"],
            "properties": {
                "offset": {"type": "integer", "description": "Strictly increasing topic offset"},
                "type": {
                    "type": "string",
                    "enum": [
                        "scheduled",
                        "retrying",
                        "completed",
                        "failed",
                        "cancelled",
                        "expired",
                    ],
                },
                "id": {"type": "string"},
                "group": {"type": "string"},
                "attempt": {"type": "integer"},
                "at": {"type": "number", "description": "Unix time of the event"},
                "worker": {"type": "string", "description": "scheduled: the worker"},
                "pod": {"type": "string", "description": "scheduled: its pod"},
                "result": {"description": "completed: the result"},
                "error": {"type": "string", "description": "retrying, failed: the error"},
            },
        },
        "ResultPage": {
            "type": "object",
            "required": ["events", "next"],
            "properties": {
                "events": {"type": "array", "items": _ref("ResultEvent")},
                "next": {"type": "integer", "description": "The `from` of the next page"},
            },
        },
    }


def _paths() -> dict[str, Any]:
    task_params = _path_params()
    return {
        "/v1/tasks": {
            "post": {
                "summary": "Submit a task",
                "description": "Idempotent by `(group, id)`: submitting a known identity again "
                "is acknowledged with `duplicate: true` and runs nothing. Only the leader accepts.",
                "parameters": [
                    _query(
                        "wait",
                        "Submit and wait: also answer with the task once it is terminal, "
                        "waiting up to this many seconds (max 60)",
                        {"type": "number", "minimum": 0, "maximum": 60},
                    ),
                ],
                "requestBody": {"required": True, "content": {_JSON: {"schema": _ref("TaskIn")}}},
                "responses": {
                    "202": _json(_ref("Accepted"), "Accepted (durable in the journal)"),
                    **_ERRORS,
                    "413": _error("Payload over `--max-payload` (`too_large`)"),
                    "429": _error("The group's pending queue is full (`queue_full`)"),
                    **_NOT_LEADER,
                },
            }
        },
        "/v1/tasks/batch": {
            "post": {
                "summary": "Submit many tasks",
                "description": "All or nothing: one invalid task rejects the whole batch.",
                "parameters": [
                    _query(
                        "duplicate_indexes",
                        "Also list the positions in `tasks` of the duplicates",
                        {"type": "string", "enum": ["1", "true", "0", "false"]},
                    ),
                ],
                "requestBody": {"required": True, "content": {_JSON: {"schema": _ref("BatchIn")}}},
                "responses": {
                    "202": _json(_ref("BatchAccepted"), "Accepted"),
                    **_ERRORS,
                    "413": _error("A payload or the batch is over a limit"),
                    "429": _error("A group's pending queue is full"),
                    **_NOT_LEADER,
                },
            }
        },
        "/v1/tasks/{group}/{id}": {
            "get": {
                "summary": "A task's status",
                "parameters": [
                    *task_params,
                    _query(
                        "wait",
                        "Long-poll up to this many seconds (max 60) until the task is terminal",
                        {"type": "number", "minimum": 0, "maximum": 60},
                    ),
                ],
                "responses": {
                    "200": _json(_ref("Task"), "The task"),
                    **_ERRORS,
                    "404": _error("Unknown task (`not_found`)"),
                },
            },
            "delete": {
                "summary": "Cancel a task",
                "description": "A pending task is removed; a running one is stopped in its "
                "sandbox.",
                "parameters": task_params,
                "responses": {
                    "200": _json(_ref("Task"), "The task after cancellation"),
                    **_ERRORS,
                    "404": _error("Unknown task"),
                    **_NOT_LEADER,
                },
            },
        },
        "/v1/state": {
            "get": {
                "summary": "Leadership, groups, pods, workers and counts",
                "responses": {"200": _json(_ref("State"), "The master's view"), **_ERRORS},
            }
        },
        "/v1/results": {
            "get": {
                "summary": "Read the result topic",
                "description": "Events from offset `from` on, in offset order; `wait` long-polls "
                "when there is nothing yet. Every master serves it, standbys too.",
                "parameters": [
                    _query(
                        "from",
                        "First offset (default 0: the oldest retained)",
                        {"type": "integer", "minimum": 0},
                    ),
                    _query(
                        "limit",
                        "Most events per page (default 1000)",
                        {"type": "integer", "minimum": 1, "maximum": 10000},
                    ),
                    _query(
                        "wait",
                        "Seconds to wait for a first event (max 60)",
                        {"type": "number", "minimum": 0, "maximum": 60},
                    ),
                ],
                "responses": {"200": _json(_ref("ResultPage"), "A page of events"), **_ERRORS},
            }
        },
        "/v1/results/stream": {
            "get": {
                "summary": "Follow the result topic (WebSocket)",
                "description": "Upgrade to a WebSocket: every event from `from` on is sent as "
                "one JSON text message shaped like `ResultEvent`, live.",
                "parameters": [_query("from", "First offset", {"type": "integer", "minimum": 0})],
                "responses": {"101": {"description": "Switching to the WebSocket protocol"}},
            }
        },
        "/v1/worker": {
            "get": {
                "summary": "The worker channel (WebSocket)",
                "description": "Used by `mawex worker`: check-in, heartbeat, assignments, results, "
                "cancellation and check-out. Not meant for clients.",
                "responses": {"101": {"description": "Switching to the WebSocket protocol"}},
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness (never needs a token)",
                "responses": {"200": {"description": "The process is up"}},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: 200 only on the leader",
                "responses": {
                    "200": {"description": "This master leads"},
                    **_NOT_LEADER,
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/": {
            "get": {
                "summary": "The dashboard (HTML; asks for the token when one is needed)",
                "security": [],
                "responses": {"200": {"description": "HTML page", "content": {"text/html": {}}}},
            }
        },
        "/docs": {
            "get": {
                "summary": "This API reference (HTML)",
                "security": [],
                "responses": {"200": {"description": "HTML page", "content": {"text/html": {}}}},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1", "content": {_JSON: {}}}},
            }
        },
    }


@cache
def spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the master's HTTP API."""
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "mawex master",
            "version": __version__,
            "description": "Every master serves reads; only the leader serves writes, and a "
            "standby answers them with `503 not_leader` and the leader's URL. Errors are "
            '`{"error": code, "detail": text}`. With `--token`, every endpoint but '
            "`/healthz` (and the HTML pages `/` and `/docs`, which hold no data) needs "
            "`Authorization: Bearer <token>`.",
        },
        "paths": _paths(),
        "components": {
            "schemas": _components(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
    document["paths"]["/healthz"]["get"]["security"] = []
    for operations in document["paths"].values():
        for operation in operations.values():
            if operation.get("security") != []:
                operation["responses"].setdefault("401", _ERRORS["401"])
            if "101" in operation["responses"]:
                operation["responses"]["426"] = _error("A plain HTTP request: this is a WebSocket")
    return document


@cache
def docs_page() -> str:
    """The ``/docs`` HTML page with the document embedded."""
    template = resources.files("mawex.server").joinpath("static", "docs.html").read_text("utf-8")
    embedded = json.dumps(spec()).replace("</", "<\\/")
    return template.replace("{{title}}", html.escape(f"mawex {__version__} HTTP API")).replace(
        "{{spec}}", embedded
    )
