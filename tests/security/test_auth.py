"""Authentication: client and worker tokens, the open paths, the dashboard, connect-back secrets."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import msgspec
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from mawex.errors import ConfigError
from mawex.local import LocalMaster
from mawex.sandbox.connect_back import ConnectBackServer
from mawex.server.app import BearerAuth
from mawex.wire import executor as xwire
from mawex.wire import worker as wire

from .conftest import CLIENT_TOKEN, WORKER_TOKEN, ThreadMaster, ThreadWorker, counts

#: Every data endpoint: (method, path, body).
ENDPOINTS: list[tuple[str, str, bytes | None]] = [
    ("POST", "/v1/tasks", b'{"id":"a1","group":"g","payload":1}'),
    ("POST", "/v1/tasks/batch", b'{"tasks":[{"id":"a2","group":"g"}]}'),
    ("GET", "/v1/tasks/g/a1", None),
    ("DELETE", "/v1/tasks/g/a1", None),
    ("GET", "/v1/state", None),
    ("GET", "/v1/results?from=0", None),
    ("GET", "/readyz", None),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _ws_status(url: str, headers: dict[str, str]) -> int:
    """The HTTP status a WebSocket handshake got (101 when it was accepted)."""
    try:
        with connect(url, additional_headers=headers, open_timeout=10) as ws:
            ws.close()
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def _ws(url: str) -> str:
    return url.replace("http://", "ws://")


@pytest.fixture(scope="module")
def secured() -> ThreadMaster:
    with ThreadMaster(token=CLIENT_TOKEN, worker_token=WORKER_TOKEN) as running:
        yield running


@pytest.mark.parametrize(
    "headers",
    [
        {},
        _bearer("wrong"),
        _bearer(WORKER_TOKEN),
        {"Authorization": CLIENT_TOKEN},  # no "Bearer "
        {"Authorization": f"bearer  {CLIENT_TOKEN}"},
        {"Authorization": f"Bearer {CLIENT_TOKEN}x"},
        {"Authorization": f"Bearer {CLIENT_TOKEN[:-1]}"},
    ],
    ids=["none", "wrong", "worker-token", "no-scheme", "odd-scheme", "longer", "prefix"],
)
def test_client_endpoints_refuse_anything_but_the_client_token(
    secured: ThreadMaster, headers: dict[str, str]
) -> None:
    before = counts(secured.url, CLIENT_TOKEN)
    for method, path, body in ENDPOINTS:
        response = httpx.request(
            method, secured.url + path, content=body, headers=headers, timeout=10
        )
        assert response.status_code == 401, (method, path, response.text)
        assert response.json() == {
            "error": "unauthorized",
            "detail": "A valid bearer token is required.",
        }
    assert _ws_status(_ws(secured.url) + "/v1/results/stream?from=0", headers) == 401
    assert counts(secured.url, CLIENT_TOKEN) == before


def test_client_token_opens_client_endpoints_only(secured: ThreadMaster) -> None:
    for method, path, body in ENDPOINTS:
        response = httpx.request(
            method, secured.url + path, content=body, headers=_bearer(CLIENT_TOKEN), timeout=10
        )
        assert response.status_code < 400 or response.status_code == 404, (method, path)
    assert _ws_status(_ws(secured.url) + "/v1/results/stream", _bearer(CLIENT_TOKEN)) == 101
    # ... but not the worker channel
    assert _ws_status(_ws(secured.url) + "/v1/worker", _bearer(CLIENT_TOKEN)) == 401
    assert _ws_status(_ws(secured.url) + "/v1/worker", {}) == 401
    assert _ws_status(_ws(secured.url) + "/v1/worker", _bearer("wrong")) == 401


def test_only_healthz_needs_no_token(secured: ThreadMaster) -> None:
    assert httpx.get(secured.url + "/healthz").status_code == 200
    for page in ("/", "/docs"):
        # 401, with the page shell that asks for the token (and holds no secret)
        response = httpx.get(secured.url + page)
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("text/html")
        assert CLIENT_TOKEN not in response.text and WORKER_TOKEN not in response.text
        authorised = httpx.get(secured.url + page, headers=_bearer(CLIENT_TOKEN))
        assert authorised.status_code == 200


def test_refused_worker_handshake_is_a_clear_401(secured: ThreadMaster) -> None:
    with pytest.raises(InvalidStatus) as caught:
        connect(_ws(secured.url) + "/v1/worker", additional_headers=_bearer(CLIENT_TOKEN))
    response = caught.value.response
    assert response.status_code == 401
    assert msgspec.json.decode(response.body)["error"] == "unauthorized"


def test_worker_token_checks_in_and_runs_tasks(secured: ThreadMaster) -> None:
    with ThreadWorker(
        secured, "tests.security.executors:echo", group="auth", pod="pa", token=WORKER_TOKEN
    ) as worker:
        worker.wait_connected()
        with httpx.Client(base_url=secured.url, headers=_bearer(CLIENT_TOKEN)) as http:
            task = {"id": "t1", "group": "auth", "payload": 7}
            assert http.post("/v1/tasks", json=task).is_success
            done = http.get("/v1/tasks/auth/t1", params={"wait": 20}, timeout=30).json()
        assert done["status"] == "completed" and done["result"] == 7


def test_client_token_cannot_impersonate_a_worker(secured: ThreadMaster) -> None:
    with ThreadWorker(
        secured, "tests.security.executors:echo", group="imp", pod="pi", token=CLIENT_TOKEN
    ) as worker:
        with pytest.raises(TimeoutError):
            secured.run(asyncio.wait_for(worker.worker.connected.wait(), 1.5))
        state = httpx.get(secured.url + "/v1/state", headers=_bearer(CLIENT_TOKEN)).json()
        assert not [w for w in state["workers"] if w["group"] == "imp"]


def test_one_token_serves_both_without_a_worker_token() -> None:
    with ThreadMaster(token=CLIENT_TOKEN) as running:
        assert _ws_status(_ws(running.url) + "/v1/worker", _bearer(CLIENT_TOKEN)) == 101
        assert _ws_status(_ws(running.url) + "/v1/worker", _bearer("nope")) == 401
        assert httpx.get(running.url + "/v1/state").status_code == 401


def test_worker_token_alone_guards_the_worker_channel() -> None:
    with ThreadMaster(worker_token=WORKER_TOKEN) as running:
        assert _ws_status(_ws(running.url) + "/v1/worker", {}) == 401
        assert _ws_status(_ws(running.url) + "/v1/worker", _bearer(WORKER_TOKEN)) == 101
        assert httpx.get(running.url + "/v1/state").status_code == 200
        # the worker credential is refused where clients go, even on an open master
        as_worker = httpx.get(running.url + "/v1/state", headers=_bearer(WORKER_TOKEN))
        assert as_worker.status_code == 401


def test_the_two_tokens_must_differ() -> None:
    with pytest.raises(ConfigError):
        LocalMaster("sqlite:///unused.db", token="same", worker_token="same")


def test_bearer_auth_compares_in_constant_time_and_hides_tokens() -> None:
    source = Path(BearerAuth.__module__.replace(".", "/") + ".py")
    text = (Path(__file__).parents[2] / "src" / source).read_text()
    body = text[text.index("class BearerAuth") : text.index("def create_app")]
    assert "hmac.compare_digest" in body
    assert not re.search(r"given\s*==|==\s*self\.(client|worker)", body)
    auth = BearerAuth(lambda *a: None, CLIENT_TOKEN, WORKER_TOKEN)  # type: ignore[arg-type,return-value]
    assert CLIENT_TOKEN not in repr(auth) and WORKER_TOKEN not in repr(auth)


def test_dashboard_sends_the_token_it_is_given(secured: ThreadMaster) -> None:
    html = httpx.get(secured.url + "/").text
    # every data request of the page goes through fetch with the bearer header...
    assert 'Authorization: "Bearer " + token' in html
    fetches = re.findall(r"fetch\(([^;]*)", html)
    assert fetches and all("headers" in call for call in fetches), fetches
    # ... and with a token it follows results by long polling (a browser WebSocket
    # cannot carry an Authorization header)
    assert "if (token) followPolling" in html


# -- connect-back: one-time per-attempt secrets ---------------------------------------


def _task_frame() -> xwire.TaskFrame:
    return xwire.TaskFrame(
        group="g", id="secret-task", attempt=1, payload=msgspec.Raw(b'{"p":1}'), executor="m:f"
    )


async def _executor_session(url: str, secret: str, result: bool = True) -> list[object]:
    """Play an executor: register with ``secret``; what the worker sent back, in order."""
    from websockets.asyncio.client import connect as aconnect

    base, _ = xwire.split_connect_url(url)
    frames: list[object] = []
    async with aconnect(base) as ws:
        await ws.send(xwire.encode(xwire.Register(secret=secret)).decode())
        while True:
            try:
                data = await asyncio.wait_for(ws.recv(), 5)
            except Exception:
                break
            frame = xwire.decode_worker_frame(data)
            frames.append(frame)
            if isinstance(frame, xwire.TaskFrame) and result:
                await ws.send(xwire.encode(xwire.Result(ok=True, result=msgspec.Raw(b"1"))))
            if isinstance(frame, xwire.AckFrame | xwire.Reject):
                break
    return frames


async def test_connect_back_secret_is_one_time_and_per_attempt() -> None:
    async with ConnectBackServer() as server:
        secret = server.new_secret()
        other = server.new_secret()
        assert secret != other and len(secret) >= 32
        expectation = server.expect(secret, _task_frame())
        # a wrong secret gets a reject, and never the task
        wrong = await _executor_session(expectation.url, other)
        assert [type(f) for f in wrong] == [xwire.Reject]
        near = secret[:-1] + ("B" if secret.endswith("A") else "A")  # one character off
        guessed = await _executor_session(expectation.url, near)
        assert [type(f) for f in guessed] == [xwire.Reject]
        assert not expectation.done
        # the right one gets the task, once
        frames = await _executor_session(expectation.url, secret)
        assert [type(f) for f in frames] == [xwire.TaskFrame, xwire.AckFrame]
        outcome = await expectation
        assert outcome.ok and outcome.result == b"1"
        # replayed: refused, nothing sent, the outcome stands
        replay = await _executor_session(expectation.url, secret)
        assert [type(f) for f in replay] == [xwire.Reject]
        assert server.waiting == 0


async def test_connect_back_secret_of_a_cancelled_attempt_is_dead() -> None:
    async with ConnectBackServer() as server:
        secret = server.new_secret()
        expectation = server.expect(secret, _task_frame())
        expectation.cancel()
        frames = await _executor_session(expectation.url, secret)
        assert [type(f) for f in frames] == [xwire.Reject]


def test_connect_back_secret_is_not_in_the_http_request() -> None:
    """The executor sends its secret in the register frame, not in the handshake's URL."""
    url = "ws://127.0.0.1:1/v1/executor?secret=s3cr3t"
    base, secret = xwire.split_connect_url(url)
    assert secret == "s3cr3t" and "s3cr3t" not in base


def test_worker_frames_never_carry_tokens() -> None:
    fields = set()
    for cls in (wire.Hello, wire.Heartbeat, wire.Finished, wire.Free, wire.Bye):
        fields |= set(cls.__struct_fields__)
    assert not {f for f in fields if "token" in f or "secret" in f}
