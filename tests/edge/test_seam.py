"""The proxy's one retry loop, driven through the upstream seam with in-memory fakes.

No sockets and no timers: :class:`MockUpstream` answers each attempt, :class:`FakeDownstream`
records what the client got, and the balancer's clock is a plain number.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from reconciler.edge.config import EdgeConfig, EjectionPolicy
from reconciler.edge.downstream import Headers
from reconciler.edge.fake import FakeDownstream, MockResponse, MockUpstream
from reconciler.edge.proxy import EdgeProxy
from reconciler.edge.routing import RouteTable
from reconciler.edge.seam import (
    UpstreamBrokenError,
    UpstreamConnectError,
    UpstreamRequest,
    UpstreamTimeoutError,
)
from reconciler.edge.stats import EdgeStats
from reconciler.records import Backend, RouteRecord

A, B = "10.0.0.1:80", "10.0.0.2:80"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_proxy(
    upstream: MockUpstream, *endpoints: str, consecutive_5xx: int = 3
) -> tuple[EdgeProxy, RouteTable, Clock]:
    policy = EjectionPolicy(consecutive_5xx=consecutive_5xx, base_s=5.0, max_s=60.0)
    table = RouteTable(policy)
    table.update([RouteRecord("app", "/app", backends=tuple(Backend(e, e) for e in endpoints))])
    clock = Clock()
    proxy = EdgeProxy(EdgeConfig(ejection=policy), table, EdgeStats(0.0), upstream, clock=clock)
    return proxy, table, clock


async def drain(request: UpstreamRequest) -> int:
    """What a real client does with the body: send all of it."""
    assert request.body is not None
    return sum([len(chunk) async for chunk in request.body])


async def test_connect_failure_is_retried_on_another_backend_and_ejects() -> None:
    def handler(endpoint: str, request: UpstreamRequest) -> MockResponse:
        if endpoint == A:
            raise UpstreamConnectError("refused")
        return MockResponse(200, b"from b")

    upstream = MockUpstream(handler)
    proxy, table, _ = make_proxy(upstream, A, B)
    down = FakeDownstream("POST", "/app/x", body=[b"payload"])  # any method: nothing was sent
    assert await proxy.serve(down) == 200
    assert (down.status, down.answer) == (200, b"from b")
    assert upstream.sent == [A, B]
    state = table.backend("app", A)
    assert state is not None
    assert state.health.times == 1


async def test_a_request_whose_body_was_sent_is_never_retried() -> None:
    outcomes: Iterator[MockResponse | Exception] = iter(
        [
            MockResponse(503),  # PUT is idempotent, but its body went upstream
            UpstreamBrokenError("reset after the body"),
            UpstreamConnectError("odd, but the body had left"),
        ]
    )

    async def handler(endpoint: str, request: UpstreamRequest) -> MockResponse:
        assert await drain(request) == 4
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    upstream = MockUpstream(handler)
    proxy, _, _ = make_proxy(upstream, A, B, consecutive_5xx=100)
    got = [await proxy.serve(FakeDownstream("PUT", "/app/x", body=[b"da", b"ta"])) for _ in "123"]
    assert got == [503, 502, 502]
    assert len(upstream.sent) == 3  # one attempt per request


async def test_502_on_an_idempotent_get_is_retried_and_the_answer_released() -> None:
    answers: dict[str, MockResponse] = {}

    def handler(endpoint: str, request: UpstreamRequest) -> MockResponse:
        answers[endpoint] = MockResponse(502 if endpoint == A else 200, endpoint.encode())
        return answers[endpoint]

    upstream = MockUpstream(handler)
    proxy, _, _ = make_proxy(upstream, A, B)
    down = FakeDownstream("GET", "/app/x?q=1")
    assert await proxy.serve(down) == 200
    assert upstream.sent == [A, B]
    assert down.answer == B.encode()
    assert answers[A].closed
    assert answers[B].closed


async def test_post_answered_502_is_passed_on_not_retried() -> None:
    upstream = MockUpstream(lambda endpoint, request: MockResponse(502))
    proxy, _, _ = make_proxy(upstream, A, B)
    assert await proxy.serve(FakeDownstream("POST", "/app/x")) == 502
    assert len(upstream.sent) == 1


async def test_ejection_is_recorded_after_n_server_errors_then_503() -> None:
    upstream = MockUpstream(lambda endpoint, request: MockResponse(500))
    proxy, table, clock = make_proxy(upstream, A, consecutive_5xx=3)
    assert [await proxy.serve(FakeDownstream("GET", "/app/x")) for _ in range(3)] == [500] * 3
    state = table.backend("app", A)
    assert state is not None
    assert state.health.times == 1
    down = FakeDownstream("GET", "/app/x")
    assert await proxy.serve(down) == 503  # ejected: no backend left
    assert len(upstream.sent) == 3
    assert down.answer_headers["Retry-After"] == "5"
    clock.now += 5.0  # the ejection is over: back in rotation
    assert await proxy.serve(FakeDownstream("GET", "/app/x")) == 500
    assert len(upstream.sent) == 4


async def test_no_backend_is_503_without_calling_the_upstream() -> None:
    upstream = MockUpstream(lambda endpoint, request: MockResponse(200))
    proxy, _, _ = make_proxy(upstream)
    down = FakeDownstream("GET", "/app/x")
    assert await proxy.serve(down) == 503
    assert json.loads(down.answer) == {
        "error": "no backend available",
        "status": 503,
        "app": "app",
    }
    assert down.answer_headers["Retry-After"] == "1"
    assert upstream.sent == []


async def test_a_timeout_is_504_and_not_retried() -> None:
    def handler(endpoint: str, request: UpstreamRequest) -> MockResponse:
        raise UpstreamTimeoutError("silent")

    upstream = MockUpstream(handler)
    proxy, _, _ = make_proxy(upstream, A, B)
    assert await proxy.serve(FakeDownstream("GET", "/app/x")) == 504
    assert len(upstream.sent) == 1


async def test_attempts_stop_at_max_attempts() -> None:
    def handler(endpoint: str, request: UpstreamRequest) -> MockResponse:
        raise UpstreamConnectError("refused")

    endpoints = [f"10.0.1.{i}:80" for i in range(5)]
    upstream = MockUpstream(handler)
    proxy, _, _ = make_proxy(upstream, *endpoints)
    down = FakeDownstream("GET", "/app/x")
    assert await proxy.serve(down) == 502
    assert json.loads(down.answer)["error"] == "backend unreachable"
    assert len(upstream.sent) == proxy.config.retry.max_attempts == 3


@pytest.mark.parametrize(
    ("method", "headers", "carry", "has_body"),
    [
        ("GET", {}, "http", False),
        ("POST", {"Expect": "100-continue"}, "http", True),
        ("GET", {"Connection": "Upgrade", "Upgrade": "websocket"}, "websocket", False),
    ],
)
async def test_the_upstream_request_carries_target_headers_and_kind(
    method: str, headers: dict[str, str], carry: str, has_body: bool
) -> None:
    seen: list[UpstreamRequest] = []

    def handler(endpoint: str, request: UpstreamRequest) -> MockResponse:
        seen.append(request)
        return MockResponse(200)

    proxy, _, _ = make_proxy(MockUpstream(handler), A)
    body = [b"x"] if has_body else []
    down = FakeDownstream(method, "/app/a/b?c=d", body=body, headers=headers)
    await proxy.serve(down)
    (request,) = seen
    assert (request.method, request.target, request.carry) == (method, "/a/b?c=d", carry)
    assert request.has_body is has_body
    assert "Expect" not in request.headers
    assert request.headers["X-Request-ID"] == request.rid


async def test_a_503_with_no_other_backend_left_is_passed_on_as_it_is() -> None:
    upstream = MockUpstream(lambda endpoint, request: MockResponse(503, b"busy"))
    proxy, _, _ = make_proxy(upstream, A, consecutive_5xx=100)
    down = FakeDownstream("GET", "/app/x")
    assert await proxy.serve(down) == 503
    assert down.answer == b"busy"  # the backend's own answer, not the edge's "no backend"
    assert len(upstream.sent) == 1


class _GoneDownstream(FakeDownstream):
    """A client that went away before its answer could be written."""

    async def respond(self, status: int, reason: str | None, headers: Headers, body: bytes) -> None:
        raise ConnectionResetError("the client went away")


# What each backend does with an attempt (A is tried first: it is the round-robin's first
# pick), the method, and the status the client gets (499: it went away).
_EXITS: dict[str, tuple[dict[str, MockResponse | Exception], str, int]] = {
    "success": ({A: MockResponse(200)}, "GET", 200),
    "5xx passed on": ({A: MockResponse(500)}, "GET", 500),
    "503 retried": ({A: MockResponse(503), B: MockResponse(200)}, "GET", 200),
    "connect failure retried": (
        {A: UpstreamConnectError("refused"), B: MockResponse(200)}, "POST", 200,
    ),
    "broken, not retried": ({A: UpstreamBrokenError("reset")}, "POST", 502),
    "broken, retried": ({A: UpstreamBrokenError("reset"), B: MockResponse(201)}, "GET", 201),
    "timeout": ({A: UpstreamTimeoutError("silent")}, "GET", 504),
    "both unreachable": (
        {A: UpstreamConnectError("refused"), B: UpstreamConnectError("refused")}, "GET", 502,
    ),
}  # fmt: skip


@pytest.mark.parametrize("gone", [False, True], ids=["client-stays", "client-gone"])
@pytest.mark.parametrize("case", list(_EXITS))
async def test_every_attempt_is_counted_in_flight_until_it_ends(case: str, gone: bool) -> None:
    """Each attempt holds its backend's ``inflight`` while it runs and gives it back on every
    way out: an answer, an error, a retry, a timeout, a client gone while answering."""
    outcomes, method, status = _EXITS[case]
    seen: list[tuple[str, int, int]] = []  # (endpoint, A's count, B's count) at each attempt

    def handler(endpoint: str, request: UpstreamRequest) -> MockResponse:
        seen.append((endpoint, *(counts(e) for e in (A, B))))
        outcome = outcomes[endpoint]
        if isinstance(outcome, Exception):
            raise outcome
        return MockResponse(outcome.status)

    proxy, table, _ = make_proxy(MockUpstream(handler), A, B, consecutive_5xx=100)

    def counts(endpoint: str) -> int:
        state = table.backend("app", endpoint)
        assert state is not None
        return state.inflight

    down = (_GoneDownstream if gone else FakeDownstream)(method, "/app/x")
    if gone:
        with pytest.raises(ConnectionResetError):
            await proxy.serve(down)
    else:
        assert await proxy.serve(down) == status
    # while an attempt ran, its backend (and only it) counted it
    assert seen == [(e, int(e == A), int(e == B)) for e, *_ in seen]
    assert [e for e, *_ in seen] == list(outcomes)
    assert (counts(A), counts(B), proxy.in_flight) == (0, 0, 0)


async def test_a_cancelled_attempt_gives_its_count_back() -> None:
    """The client's task cancelled (its connection lost, the edge stopping) mid-attempt."""
    reached = asyncio.Event()

    async def handler(endpoint: str, request: UpstreamRequest) -> MockResponse:
        reached.set()
        await asyncio.Event().wait()  # a backend that never answers
        raise AssertionError("unreachable")

    proxy, table, _ = make_proxy(MockUpstream(handler), A)
    task = asyncio.create_task(proxy.serve(FakeDownstream("GET", "/app/x")))
    await reached.wait()
    state = table.backend("app", A)
    assert state is not None
    assert state.inflight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (state.inflight, proxy.in_flight) == (0, 0)


async def test_a_busy_backend_loses_the_next_requests_to_an_idle_one() -> None:
    """A served alone and holds 2 requests; B joins. Whenever A is the round-robin's
    candidate, B (idle, busier by less than A even with the new request) wins."""
    release = asyncio.Event()
    both_held = asyncio.Event()
    held = 0

    async def handler(endpoint: str, request: UpstreamRequest) -> MockResponse:
        nonlocal held
        if request.target == "/slow":
            held += 1
            if held == 2:
                both_held.set()
            await release.wait()
        return MockResponse(200)

    upstream = MockUpstream(handler)
    proxy, table, _ = make_proxy(upstream, A)
    slow = [asyncio.create_task(proxy.serve(FakeDownstream("GET", "/app/slow"))) for _ in "12"]
    await both_held.wait()
    table.update([RouteRecord("app", "/app", backends=(Backend(A, A), Backend(B, B)))])
    state_a = table.backend("app", A)
    assert state_a is not None
    assert state_a.inflight == 2  # kept across the route change
    for _ in range(100):
        assert await proxy.serve(FakeDownstream("GET", "/app/x")) == 200
    assert upstream.sent[2:] == [B] * 100  # round robin: 50 of them to A
    release.set()
    assert [await t for t in slow] == [200, 200]
    assert [table.backend("app", e).inflight for e in (A, B)] == [0, 0]  # type: ignore[union-attr]
