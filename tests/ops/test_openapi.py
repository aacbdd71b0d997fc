"""``/openapi.json`` is a valid OpenAPI 3.1 document that matches the routes and the
wire schemas; ``/docs`` and ``/`` are self-contained pages that ask for the token."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.routing import BaseRoute, Route, WebSocketRoute

from mawex.journal.memory import MemoryJournal
from mawex.master.engine import Engine, EngineSettings
from mawex.server.app import create_app
from mawex.server.openapi import spec
from mawex.server.tasks import TaskEndpoints
from mawex.wire import api
from tests.ops.conftest import missing

TOKEN = "t0ken"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    engine = Engine(MemoryJournal(), EngineSettings(lease_ttl=1.0, tick_s=0.05))
    await engine.start()
    await engine.wait_leader(10)
    app = create_app(engine, token=TOKEN)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://master") as client:
        yield client
    await engine.stop()


def test_the_document_is_valid_openapi_3_1() -> None:
    try:
        from openapi_spec_validator import validate
    except ImportError:
        missing("openapi-spec-validator is not installed: pip install -e '.[dev]'")
    validate(spec())  # raises on an invalid document


def test_request_schemas_match_the_wire_structs() -> None:
    schemas = spec()["components"]["schemas"]
    assert set(schemas["TaskIn"]["properties"]) == set(api.TaskIn.__struct_fields__)
    assert set(schemas["BatchIn"]["properties"]) == set(api.BatchIn.__struct_fields__)
    assert schemas["TaskIn"]["additionalProperties"] is False


def _route_paths(routes: list[BaseRoute]) -> set[tuple[str, str]]:
    found = set()
    for route in routes:
        if isinstance(route, Route):
            for method in route.methods or ():
                if method != "HEAD":
                    found.add((route.path, method.lower()))
        elif isinstance(route, WebSocketRoute):
            found.add((route.path, "get"))
    return found


async def test_every_route_is_documented() -> None:
    engine = Engine(MemoryJournal())
    app: Any = create_app(engine)
    routes = set()
    while not hasattr(app, "routes"):  # unwrap ASGI middleware (auth, limits) to the router
        if isinstance(app, TaskEndpoints):  # answered in front of the router
            routes |= {(path, method.lower()) for path, method in app.ROUTES}
        app = app.app
    routes |= _route_paths(app.routes)
    documented = {(path, method) for path, item in spec()["paths"].items() for method in item}
    assert routes == documented


async def test_pages_ask_for_the_token_and_are_self_contained(http: httpx.AsyncClient) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/", "/docs"):
        assert (await http.get(path, headers=headers)).status_code == 200, path
        # without the token: 401, with the page itself, which asks for the token
        page = await http.get(path)
        assert page.status_code == 401, path
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store"
        # no CDN, no external script, style or font: the page works offline
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text), path
        assert "@import" not in page.text
    # the data behind them still needs the token
    assert (await http.get("/openapi.json")).status_code == 401
    assert (await http.get("/v1/state")).status_code == 401
    assert (await http.get("/metrics")).status_code == 401
    assert (await http.get("/healthz")).status_code == 200
    document = (await http.get("/openapi.json", headers=headers)).json()
    assert document == spec()
    # the page embeds the very same document, intact up to its closing tag
    docs = (await http.get("/docs")).text
    embedded = docs.split('<script type="application/json" id="spec">', 1)[1]
    assert json.loads(embedded.split("</script>", 1)[0]) == spec()
