"""A client's per-task requests answered by the master's HTTP protocol itself.

uvicorn's protocol with the master's subclass, the master's real app and engine (on
a memory journal), on a transport that records writes, fed from loop callbacks as a
socket feeds it: the direct answer is the app's answer, byte for byte but the date,
and anything the direct path does not take still reaches the app.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from mawex.journal.memory import MemoryJournal
from mawex.master.engine import Engine, EngineSettings
from mawex.server.app import MasterApp, create_app
from mawex.server.http_protocol import guarded_http_protocol
from mawex.server.limits import NetLimits

from .recording_transport import RecordingTransport

TOKEN = "client-t0ken"
WORKER_TOKEN = "worker-t0ken"


class Counting:
    """The master's ASGI app, counting the requests that reach it."""

    def __init__(self, app: MasterApp) -> None:
        self.app = app
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await self.app(scope, receive, send)


class Master:
    """One engine, its app, and connections to it with the direct path or without."""

    def __init__(self, engine: Engine, app: MasterApp) -> None:
        self.engine = engine
        self.app = Counting(app)

    def protocol(
        self,
        *,
        direct: bool = True,
        limit_concurrency: int | None = None,
        timeout_keep_alive: float = 5,
    ) -> Any:
        http = guarded_http_protocol(NetLimits(), self.app.app.direct if direct else None)
        config = uvicorn.Config(
            self.app,
            http=http,
            lifespan="off",
            access_log=False,
            limit_concurrency=limit_concurrency,
            timeout_keep_alive=timeout_keep_alive,  # type: ignore[arg-type]
        )
        config.load()
        return config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=ServerState(), app_state={}
        )

    async def serve(self, *requests: bytes, direct: bool = True) -> RecordingTransport:
        """Feed ``requests`` to one new connection, one read each; wait for the answers."""
        protocol = self.protocol(direct=direct)
        transport = RecordingTransport()
        protocol.connection_made(transport)
        for request in requests:
            await feed(protocol, request)
            await asyncio.sleep(0)
        await settle(protocol)
        protocol.connection_lost(None)
        return transport


async def feed(protocol: Any, data: bytes) -> None:
    """Hand ``data`` to ``protocol`` from a loop callback, outside any task, as a
    server's socket does."""
    asyncio.get_running_loop().call_soon(protocol.data_received, data)
    await asyncio.sleep(0)


async def settle(protocol: Any) -> None:
    while protocol.tasks:
        await asyncio.gather(*protocol.tasks)


MasterFactory = Callable[..., Awaitable[Master]]


@pytest.fixture
async def masters() -> AsyncIterator[MasterFactory]:
    engines: list[Engine] = []

    async def start(**tokens: str) -> Master:
        engine = Engine(MemoryJournal(), EngineSettings(lease_ttl=5.0, tick_s=0.05))
        engines.append(engine)
        await engine.start()
        await engine.wait_leader(10)
        return Master(engine, create_app(engine, **tokens))

    yield start
    for engine in engines:
        await engine.stop()


def request(method: str, target: str, body: bytes = b"", *headers: str) -> bytes:
    head = [f"{method} {target} HTTP/1.1", "host: master", *headers]
    if body or method == "POST":
        head.append(f"content-length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def submit(id: str, *headers: str, query: str = "", payload: Any = 1) -> bytes:
    body = json.dumps({"id": id, "group": "g", "payload": payload}).encode()
    return request("POST", "/v1/tasks" + query, body, *headers)


def responses(writes: list[bytes]) -> list[tuple[int, dict[bytes, bytes], Any]]:
    """Each response written: status, headers but the date, JSON body without times."""
    data = b"".join(writes)
    parsed = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        headers = dict(line.split(b": ", 1) for line in lines)
        headers.pop(b"date", None)
        length = int(headers[b"content-length"])
        body, data = json.loads(rest[:length]), rest[length:]
        parsed.append((int(status_line.split()[1]), headers, _timeless(body)))
    return parsed


def _timeless(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: _timeless(v) for k, v in body.items() if not k.endswith("_at")}
    return body


AUTH = f"authorization: Bearer {TOKEN}"
#: Requests the direct path answers, in order on one connection, with a token.
TAKEN = [
    submit("a", AUTH),
    submit("a", AUTH),  # a duplicate
    submit("b", AUTH, query="?wait=0.01"),  # submit and wait: still pending after it
    request("GET", "/v1/tasks/g/a", b"", AUTH),
    request("GET", "/v1/tasks/g/a?wait=0.01", b"", AUTH),
    request("GET", "/v1/tasks/g/nope", b"", AUTH),  # 404
    request("GET", "/v1/tasks/g/a%20b", b"", AUTH),  # a bad id
    request("GET", "/v1/tasks/g/a?wait=soon", b"", AUTH),  # a bad wait
    request("GET", "/v1/tasks/g/a?color=red", b"", AUTH),  # an unknown query parameter
    request("GET", "/v1/tasks/g/a?wait=1&wait=2", b"", AUTH),  # a repeated one
    request("POST", "/v1/tasks", b"{not json", AUTH),
    request("POST", "/v1/tasks", b'{"id": "c", "group": "g", "colour": 1}', AUTH),
    submit("d"),  # no token
    submit("d", "authorization: Bearer wrong"),
    submit("d", f"authorization: Bearer {WORKER_TOKEN}"),  # the worker's token
    request("GET", "/v1/tasks/g/a", b"", f"authorization: Bearer {WORKER_TOKEN}"),
]


async def test_direct_answers_are_the_apps_answers(masters: MasterFactory) -> None:
    direct = await masters(token=TOKEN, worker_token=WORKER_TOKEN)
    through_app = await masters(token=TOKEN, worker_token=WORKER_TOKEN)
    answered = responses((await direct.serve(*TAKEN)).writes)
    expected = responses((await through_app.serve(*TAKEN, direct=False)).writes)
    assert direct.app.calls == 0 and through_app.app.calls == len(TAKEN)
    assert [status for status, _, _ in answered] == [
        202, 202, 202, 200, 200, 404, 400, 400, 400, 400, 400, 400, 401, 401, 401, 401
    ]  # fmt: skip
    assert answered == expected
    assert answered[1][2]["duplicate"] is True and answered[2][2]["task"]["status"] == "pending"
    assert direct.engine.get("g", "a")["status"] == "pending"
    assert direct.engine.state.tasks.keys() == through_app.engine.state.tasks.keys()


async def test_a_standby_answers_not_leader_directly_as_through_the_app(
    masters: MasterFactory,
) -> None:
    master = await masters()
    await master.engine.stop()  # no longer the leader
    answered = responses((await master.serve(submit("a"))).writes)
    expected = responses((await master.serve(submit("a"), direct=False)).writes)
    assert answered == expected and answered[0][0] == 503
    assert master.app.calls == 1  # only the request sent through the app


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            request("POST", "/v1/tasks", b"", "transfer-encoding: chunked")[:-2].replace(
                b"content-length: 0\r\n", b""
            )
            + b"\r\n"
            + b"5\r\n12345\r\n0\r\n\r\n",
            id="chunked",
        ),
        pytest.param(submit("a", payload="x" * 70_000), id="over-uvicorn-read-buffer"),
        pytest.param(request("DELETE", "/v1/tasks/g/a"), id="delete"),
        pytest.param(request("HEAD", "/v1/tasks/g/a"), id="head"),
        pytest.param(request("POST", "/v1/tasks/g/a", b"{}"), id="post-to-a-task"),
        pytest.param(request("GET", "/v1/tasks"), id="get-the-submit-path"),
        pytest.param(request("POST", "/v1/tasks/batch", b'{"tasks": []}'), id="batch"),
        pytest.param(request("GET", "/v1/state"), id="state"),
    ],
)
async def test_other_requests_go_to_the_app(masters: MasterFactory, raw: bytes) -> None:
    master = await masters()
    transport = await master.serve(raw)
    assert master.app.calls == 1
    assert transport.writes and transport.writes[0].startswith(b"HTTP/1.1 ")


async def test_a_server_over_its_connection_limit_refuses_before_answering(
    masters: MasterFactory,
) -> None:
    master = await masters()
    protocol = master.protocol(limit_concurrency=1)  # this connection is the one allowed
    transport = RecordingTransport()
    protocol.connection_made(transport)
    await feed(protocol, submit("a"))
    await settle(protocol)
    assert transport.writes[0].startswith(b"HTTP/1.1 503 ")
    assert ("g", "a") not in master.engine.state.tasks


async def test_expect_100_continue_goes_to_the_app_which_invites_the_body(
    masters: MasterFactory,
) -> None:
    master = await masters()
    whole = submit("a")
    head, _, body = whole.partition(b"\r\n\r\n")
    protocol = master.protocol()
    transport = RecordingTransport()
    protocol.connection_made(transport)
    await feed(protocol, head + b"\r\nexpect: 100-continue\r\n\r\n")
    for _ in range(10):
        await asyncio.sleep(0)
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    await feed(protocol, body)
    await settle(protocol)
    assert master.app.calls == 1 and responses(transport.writes[1:])[0][0] == 202


async def test_a_body_in_a_later_read_is_answered_once_it_is_in(masters: MasterFactory) -> None:
    master = await masters()
    head, _, body = submit("a").partition(b"\r\n\r\n")
    protocol = master.protocol()
    transport = RecordingTransport()
    protocol.connection_made(transport)
    await feed(protocol, head + b"\r\n\r\n" + body[:5])
    for _ in range(10):
        await asyncio.sleep(0)
    assert transport.writes == [] and "a" not in {id for _, id in master.engine.state.tasks}
    await feed(protocol, body[5:])
    await settle(protocol)
    assert master.app.calls == 0
    assert [status for status, _, _ in responses(transport.writes)] == [202]


async def test_pipelined_requests_are_answered_in_order(masters: MasterFactory) -> None:
    master = await masters()
    # a direct request held by its wait, then one for the app, then a direct one again
    pipelined = (
        submit("a", query="?wait=0.05")
        + request("GET", "/v1/state")
        + request("GET", "/v1/tasks/g/a")
    )
    transport = await master.serve(pipelined)
    answered = responses(transport.writes)
    assert [status for status, _, _ in answered] == [202, 200, 200]
    assert answered[0][2]["task"]["status"] == "pending"
    assert "leader" in answered[1][2] and answered[2][2]["id"] == "a"
    assert master.app.calls == 1


@pytest.mark.parametrize(
    ("extra", "version"),
    [("connection: close", "HTTP/1.1"), ("", "HTTP/1.0")],
)
async def test_a_connection_not_kept_alive_is_closed_after_the_answer(
    masters: MasterFactory, extra: str, version: str
) -> None:
    master = await masters()
    raw = request("GET", "/v1/tasks/g/nope", b"", *([extra] if extra else []))
    raw = raw.replace(b"HTTP/1.1\r\n", version.encode() + b"\r\n", 1)
    protocol = master.protocol()
    transport = RecordingTransport()
    protocol.connection_made(transport)
    await feed(protocol, raw)
    await settle(protocol)
    assert master.app.calls == 0 and transport.closed
    [(status, headers, _)] = responses(transport.writes)
    assert status == 404 and headers[b"connection"] == b"close"


@pytest.mark.parametrize("behind", [b"", request("GET", "/v1/tasks/g/a")])
async def test_nothing_is_written_to_a_client_gone_while_it_waited(
    masters: MasterFactory, behind: bytes
) -> None:
    """Also with a request pipelined behind the one waiting (the parser's current one)."""
    master = await masters()
    protocol = master.protocol()
    transport = RecordingTransport()
    protocol.connection_made(transport)
    await feed(protocol, submit("a", query="?wait=30") + behind)
    for _ in range(10):
        await asyncio.sleep(0)
    assert master.engine.get("g", "a")["status"] == "pending"
    transport.closed = True
    protocol.connection_lost(None)
    await master.engine.cancel("g", "a")  # the wait ends
    await settle(protocol)
    assert transport.writes == []


async def test_an_answer_waits_while_the_socket_is_full(masters: MasterFactory) -> None:
    master = await masters()
    protocol = master.protocol()
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.pause_writing()
    await feed(protocol, request("GET", "/v1/tasks/g/nope"))
    for _ in range(10):
        await asyncio.sleep(0)
    assert transport.writes == []
    protocol.resume_writing()
    await settle(protocol)
    assert [status for status, _, _ in responses(transport.writes)] == [404]


async def test_a_failing_handler_gets_a_500_and_the_connection_closed(
    masters: MasterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    master = await masters()

    def broken(group: str, id: str) -> dict[str, Any]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(master.engine, "get", broken)
    transport = await master.serve(request("GET", "/v1/tasks/g/a"))
    assert master.app.calls == 0 and transport.closed
    assert transport.writes[0].startswith(b"HTTP/1.1 500 ")
    assert b"".join(transport.writes).endswith(b"Internal Server Error")


async def test_a_thousand_requests_in_one_read_are_answered_in_order(
    masters: MasterFactory,
) -> None:
    master = await masters()
    many = b"".join(request("GET", f"/v1/tasks/g/t{i}") for i in range(1000))
    answered = responses((await master.serve(many)).writes)
    assert [body["detail"] for _, _, body in answered] == [f"no task g/t{i}" for i in range(1000)]


async def test_keep_alive_closes_a_connection_only_once_it_is_idle(
    masters: MasterFactory,
) -> None:
    """Not while a request read with an answered one still waits; after its answer."""
    master = await masters()
    protocol = master.protocol(timeout_keep_alive=0.05)
    transport = RecordingTransport()
    protocol.connection_made(transport)
    await feed(protocol, request("GET", "/v1/tasks/g/nope") + submit("a", query="?wait=0.3"))
    await settle(protocol)
    assert [status for status, _, _ in responses(transport.writes)] == [404, 202]
    assert not transport.closed
    await asyncio.sleep(0.2)  # idle now: the keep-alive timeout closes the connection
    assert transport.closed


async def test_a_cancelled_answer_writes_nothing(masters: MasterFactory) -> None:
    master = await masters()
    protocol = master.protocol()
    transport = RecordingTransport()
    protocol.connection_made(transport)
    await feed(protocol, submit("a", query="?wait=30"))
    [task] = protocol.tasks
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert transport.writes == []
    await master.engine.cancel("g", "a")  # nobody waits on it any more: no answer is given
    assert transport.writes == [] and master.engine.get("g", "a")["status"] == "cancelled"


async def test_a_long_poll_waits_for_the_task(masters: MasterFactory) -> None:
    """For its time (the task still pending), or until the task ends."""
    master = await masters()
    protocol = master.protocol()
    transport = RecordingTransport()
    protocol.connection_made(transport)
    await feed(protocol, submit("a"))
    await settle(protocol)
    await feed(protocol, request("GET", "/v1/tasks/g/a?wait=0.05"))
    await settle(protocol)
    await feed(protocol, request("GET", "/v1/tasks/g/a?wait=30"))
    assert len(protocol.tasks) == 1  # waiting
    await master.engine.cancel("g", "a")
    await settle(protocol)
    answered = responses(transport.writes)
    assert [(status, body.get("status")) for status, _, body in answered] == [
        (202, "accepted"),
        (200, "pending"),
        (200, "cancelled"),
    ]
