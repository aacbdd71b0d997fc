"""schemathesis against the master's own OpenAPI document, on a real master.

Every operation of ``/openapi.json`` gets generated requests, valid and invalid
(a bounded number each, so the run stays well under a minute): no 5xx, every
response conforms to the document (status, content type, schema), a missing
token gets 401, and a rejected (4xx) request changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from mawex.server.openapi import spec
from mawex.wire.api import ApiLimits

from .conftest import CLIENT_TOKEN, ThreadMaster, counts

pytestmark = pytest.mark.timeout(180)

#: The WebSocket endpoints are fuzzed over real WebSockets (test_fuzz_worker_channel.py);
#: over plain HTTP they only answer 426.
schema = schemathesis.openapi.from_dict(spec()).exclude(path=["/v1/worker", "/v1/results/stream"])
AUTH = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
#: Long polls are bounded to this (the document allows up to 60 s).
MAX_WAIT = 0.05


@pytest.fixture(scope="module")
def fuzz_master() -> Iterator[ThreadMaster]:
    limits = ApiLimits(max_payload_bytes=4096, max_batch_tasks=50)
    with ThreadMaster(token=CLIENT_TOKEN, api_limits=limits) as running:
        # something to find: a few tasks (pending, no worker) and a cancelled one
        with httpx.Client(base_url=running.url, headers=AUTH) as http:
            for i in range(3):
                http.post("/v1/tasks", json={"id": f"seed-{i}", "group": "g", "payload": i})
            http.delete("/v1/tasks/g/seed-2")
        yield running


def _bound_waits(case: Any) -> None:
    query = case.query or {}
    value = query.get("wait")
    try:
        if value is not None and float(value) > MAX_WAIT:
            query["wait"] = str(MAX_WAIT)
    except (TypeError, ValueError):
        pass


@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    derandomize=True,
)
def test_openapi_operations(case: Any, fuzz_master: ThreadMaster) -> None:
    _bound_waits(case)
    before = _fingerprint(fuzz_master.url)
    response = case.call(base_url=fuzz_master.url, headers=AUTH, timeout=10)
    assert response.status_code < 500, (response.status_code, response.text[:500])
    case.validate_response(response, headers=AUTH)
    if 400 <= response.status_code < 500:
        assert _fingerprint(fuzz_master.url) == before, "a rejected request changed state"


def _fingerprint(url: str) -> dict[str, Any]:
    """State a rejected request must leave alone; tasks that an earlier (valid) request
    gave a short pending timeout expire on their own, so expiries are left out."""
    state = counts(url, CLIENT_TOKEN)
    events = httpx.get(
        f"{url}/v1/results", params={"from": 0, "limit": 10000}, headers=AUTH, timeout=10
    ).json()["events"]
    return {
        "accepted": state["counts"].get("accepted"),
        "cancelled": state["counts"].get("cancelled"),
        "workers": state["workers"],
        "topic": [(e["type"], e["group"], e["id"]) for e in events if e["type"] != "expired"],
    }
