"""Webhook delivery against a real HTTP server on 127.0.0.1 (pytest-httpserver): signatures that
the `standardwebhooks` package verifies, the outcome of each kind of response or failure, and the
retry schedule."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from pytest_httpserver import HTTPServer
from standardwebhooks import Webhook, WebhookVerificationError
from werkzeug import Request, Response

from gateway.webhooks import (
    RETRY_AFTER_CEILING_S,
    USER_AGENT,
    DeliveryOutcome,
    DeliveryPolicy,
    deliver,
    headers,
    next_attempt,
    parse_retry_after,
    sign,
)

pytestmark = pytest.mark.timeout(30)

SECRET = "whsec_" + base64.b64encode(b"a 32-byte test secret, not real!").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another 32-byte secret, not ours").decode()
WEBHOOK_ID = "evt_01J9Z3Q4R5S6T7U8V9W0X1Y2Z3"
# Non-ASCII on purpose: the body must be exactly the UTF-8 bytes that were signed.
PAYLOAD = json.dumps({"type": "job.succeeded", "timestamp": "2025-01-02T03:04:05Z",
                      "data": {"job_id": "job_123", "note": "naïve ☃"}}, ensure_ascii=False)
TIMEOUT_S = 5.0
T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
NO_JITTER = DeliveryPolicy(jitter=0.0)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def received(httpserver: HTTPServer) -> list[Request]:
    return [request for request, _ in httpserver.log]


async def until_handled(httpserver: HTTPServer, count: int) -> None:
    """A handler still running when its test ends would log its request into the next test."""
    deadline = time.monotonic() + 5
    while len(httpserver.log) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


# --- signing ----------------------------------------------------------------------------------


def test_sign_matches_the_standard_webhooks_test_vector() -> None:
    signature = sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek",
                     1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_sign_is_hmac_sha256_over_id_timestamp_and_body() -> None:
    body = PAYLOAD.encode()
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    digest = hmac.new(key, f"{WEBHOOK_ID}.1700000000.".encode() + body, hashlib.sha256).digest()
    assert sign(SECRET, WEBHOOK_ID, 1700000000, body) == "v1," + base64.b64encode(digest).decode()


def test_sign_refuses_an_id_with_a_full_stop() -> None:
    with pytest.raises(ValueError, match="must not contain"):
        sign(SECRET, "evt.1", 1700000000, b"{}")


def test_headers_carry_the_standard_webhooks_metadata() -> None:
    body = PAYLOAD.encode()
    assert headers(SECRET, WEBHOOK_ID, 1700000000, body) == {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": WEBHOOK_ID,
        "webhook-timestamp": "1700000000",
        "webhook-signature": sign(SECRET, WEBHOOK_ID, 1700000000, body),
    }
    assert "codellama-fleet" in USER_AGENT


# --- delivery against a real server -------------------------------------------------------------


def verifying_receiver(request: Request) -> Response:
    try:
        Webhook(SECRET).verify(request.get_data(), dict(request.headers))
    except WebhookVerificationError as exc:
        return Response(str(exc), status=400)
    return Response(status=204)


async def test_a_verifying_receiver_accepts_the_delivered_event(
        httpserver: HTTPServer, client: httpx.AsyncClient) -> None:
    httpserver.expect_request("/hook", method="POST").respond_with_handler(verifying_receiver)

    outcome = await deliver(client, httpserver.url_for("/hook"), SECRET, WEBHOOK_ID, PAYLOAD,
                            timeout_s=TIMEOUT_S)

    assert outcome == DeliveryOutcome(delivered=True, status=204, error="", retry_after_s=None,
                                      disable_endpoint=False)
    [request] = received(httpserver)
    assert request.get_data() == PAYLOAD.encode("utf-8")
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == USER_AGENT
    assert Webhook(SECRET).verify(request.get_data(), dict(request.headers)) == json.loads(PAYLOAD)


async def test_a_tampered_body_or_a_wrong_secret_fails_verification(
        httpserver: HTTPServer, client: httpx.AsyncClient) -> None:
    httpserver.expect_request("/hook").respond_with_data(status=200)
    await deliver(client, httpserver.url_for("/hook"), SECRET, WEBHOOK_ID, PAYLOAD,
                  timeout_s=TIMEOUT_S)
    [request] = received(httpserver)
    sent_headers = dict(request.headers)
    tampered = request.get_data().replace(b"job_123", b"job_124")

    with pytest.raises(WebhookVerificationError, match="No matching signature found"):
        Webhook(SECRET).verify(tampered, sent_headers)
    with pytest.raises(WebhookVerificationError, match="No matching signature found"):
        Webhook(OTHER_SECRET).verify(request.get_data(), sent_headers)


async def test_200_is_delivered(httpserver: HTTPServer, client: httpx.AsyncClient) -> None:
    httpserver.expect_request("/hook").respond_with_data("ok", status=200)
    outcome = await deliver(client, httpserver.url_for("/hook"), SECRET, WEBHOOK_ID, PAYLOAD,
                            timestamp=1700000000, timeout_s=TIMEOUT_S)
    assert outcome == DeliveryOutcome(delivered=True, status=200, error="", retry_after_s=None,
                                      disable_endpoint=False)
    assert not outcome.should_retry
    [request] = received(httpserver)
    assert request.headers["webhook-timestamp"] == "1700000000"
    assert request.headers["webhook-signature"] == sign(SECRET, WEBHOOK_ID, 1700000000,
                                                        PAYLOAD.encode())


async def test_410_disables_the_endpoint(httpserver: HTTPServer,
                                         client: httpx.AsyncClient) -> None:
    httpserver.expect_request("/hook").respond_with_data(status=410)
    outcome = await deliver(client, httpserver.url_for("/hook"), SECRET, WEBHOOK_ID, PAYLOAD,
                            timeout_s=TIMEOUT_S)
    assert outcome == DeliveryOutcome(
        delivered=False, status=410, retry_after_s=None, disable_endpoint=True,
        error="HTTP 410 Gone: the receiver asks for no more events at this URL")
    assert not outcome.should_retry


async def test_503_with_retry_after_seconds_is_retried_after_them(
        httpserver: HTTPServer, client: httpx.AsyncClient) -> None:
    httpserver.expect_request("/hook").respond_with_data(status=503, headers={"Retry-After": "7"})
    outcome = await deliver(client, httpserver.url_for("/hook"), SECRET, WEBHOOK_ID, PAYLOAD,
                            timeout_s=TIMEOUT_S)
    assert outcome == DeliveryOutcome(delivered=False, status=503, retry_after_s=7.0,
                                      disable_endpoint=False,
                                      error="HTTP 503 Service Unavailable")
    assert outcome.should_retry


async def test_429_with_an_http_date_retry_after(httpserver: HTTPServer,
                                                 client: httpx.AsyncClient) -> None:
    retry_at = datetime.now(UTC) + timedelta(seconds=120)
    httpserver.expect_request("/hook").respond_with_data(
        status=429, headers={"Retry-After": format_datetime(retry_at, usegmt=True)})
    outcome = await deliver(client, httpserver.url_for("/hook"), SECRET, WEBHOOK_ID, PAYLOAD,
                            timeout_s=TIMEOUT_S)
    assert (outcome.delivered, outcome.status, outcome.error) == (
        False, 429, "HTTP 429 Too Many Requests")
    assert outcome.retry_after_s is not None
    assert 115 <= outcome.retry_after_s <= 120  # the date has whole seconds; the test takes time
    assert outcome.should_retry


async def test_other_4xx_are_retried(httpserver: HTTPServer, client: httpx.AsyncClient) -> None:
    httpserver.expect_request("/hook").respond_with_data(status=404)
    outcome = await deliver(client, httpserver.url_for("/hook"), SECRET, WEBHOOK_ID, PAYLOAD,
                            timeout_s=TIMEOUT_S)
    assert outcome == DeliveryOutcome(delivered=False, status=404, error="HTTP 404 Not Found",
                                      retry_after_s=None, disable_endpoint=False)
    assert outcome.should_retry


async def test_a_redirect_is_not_followed(httpserver: HTTPServer,
                                          client: httpx.AsyncClient) -> None:
    elsewhere = httpserver.url_for("/elsewhere")
    httpserver.expect_request("/hook").respond_with_data(status=302,
                                                         headers={"Location": elsewhere})
    httpserver.expect_request("/elsewhere").respond_with_data(status=200)
    outcome = await deliver(client, httpserver.url_for("/hook"), SECRET, WEBHOOK_ID, PAYLOAD,
                            timeout_s=TIMEOUT_S)
    assert outcome == DeliveryOutcome(
        delivered=False, status=302, retry_after_s=None, disable_endpoint=False,
        error=f"HTTP 302 Found: redirect to {elsewhere!r} not followed (update the webhook URL)")
    assert [request.path for request in received(httpserver)] == ["/hook"]


async def test_a_refused_connection_is_an_outcome(client: httpx.AsyncClient) -> None:
    outcome = await deliver(client, closed_port_url(), SECRET, WEBHOOK_ID, PAYLOAD,
                            timeout_s=TIMEOUT_S)
    assert (outcome.delivered, outcome.status, outcome.retry_after_s,
            outcome.disable_endpoint) == (False, None, None, False)
    assert outcome.error.startswith("connection failed: ConnectError: ")
    assert outcome.should_retry


async def test_a_server_slower_than_the_timeout_is_an_outcome(
        httpserver: HTTPServer, client: httpx.AsyncClient) -> None:
    def slow(request: Request) -> Response:
        time.sleep(0.6)
        return Response(status=200)

    httpserver.expect_request("/hook").respond_with_handler(slow)
    started = time.monotonic()
    outcome = await deliver(client, httpserver.url_for("/hook"), SECRET, WEBHOOK_ID, PAYLOAD,
                            timeout_s=0.2)
    assert time.monotonic() - started < 0.5
    assert outcome == DeliveryOutcome(delivered=False, status=None, retry_after_s=None,
                                      disable_endpoint=False,
                                      error="timeout: no response within 0.2 s")
    await until_handled(httpserver, 1)


async def test_the_timeout_bounds_the_whole_attempt_not_each_read(
        client: httpx.AsyncClient) -> None:
    """A receiver that drips its headers, each byte well within the timeout, is still cut off."""
    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\n")
            for _ in range(40):
                writer.write(b"X-Drip: 1\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(drip, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        outcome = await deliver(client, f"http://127.0.0.1:{port}/hook", SECRET, WEBHOOK_ID,
                                PAYLOAD, timeout_s=0.3)
        elapsed_s = time.monotonic() - started
    finally:
        server.close()
    assert outcome.error == "timeout: no response within 0.3 s"
    assert outcome.status is None
    assert elapsed_s < 1.0  # the drip would take 2 s


async def test_every_attempt_carries_the_same_webhook_id(httpserver: HTTPServer,
                                                         client: httpx.AsyncClient) -> None:
    httpserver.expect_ordered_request("/hook").respond_with_data(status=503)
    httpserver.expect_ordered_request("/hook").respond_with_data(status=200)
    url = httpserver.url_for("/hook")
    now = int(time.time())

    first = await deliver(client, url, SECRET, WEBHOOK_ID, PAYLOAD, timestamp=now,
                          timeout_s=TIMEOUT_S)
    second = await deliver(client, url, SECRET, WEBHOOK_ID, PAYLOAD, timestamp=now + 1,
                           timeout_s=TIMEOUT_S)

    assert (first.delivered, first.status, second.delivered, second.status) == (
        False, 503, True, 200)
    attempts = received(httpserver)
    assert [r.headers["webhook-id"] for r in attempts] == [WEBHOOK_ID, WEBHOOK_ID]
    assert [r.headers["webhook-timestamp"] for r in attempts] == [str(now), str(now + 1)]
    assert attempts[0].headers["webhook-signature"] != attempts[1].headers["webhook-signature"]
    for request in attempts:
        assert request.get_data() == PAYLOAD.encode()
        Webhook(SECRET).verify(request.get_data(), dict(request.headers))


# --- Retry-After parsing --------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [
    ("7", 7.0),
    (" 120 ", 120.0),
    ("0", 0.0),
    ("Thu, 02 Jan 2025 03:05:05 GMT", 60.0),
    ("Thu, 02 Jan 2025 03:00:00 GMT", 0.0),  # in the past
    ("9" * 400, RETRY_AFTER_CEILING_S),
    ("-5", None),
    ("1.5", None),
    ("soon", None),
    ("", None),
])
def test_parse_retry_after(value: str, seconds: float | None) -> None:
    assert parse_retry_after(value, now=T0) == seconds


# --- the retry schedule ---------------------------------------------------------------------------


def delay_s(policy: DeliveryPolicy, attempts: int, *, retry_after_s: float | None = None,
            seed: int = 0, since_first_s: float = 0.0) -> float | None:
    now = T0 + timedelta(seconds=since_first_s)
    at = next_attempt(policy, attempts=attempts, first_attempt_at=T0, now=now,
                      retry_after_s=retry_after_s, rng=random.Random(seed))
    return None if at is None else (at - now).total_seconds()


def test_backoff_doubles_up_to_its_cap() -> None:
    delays = [delay_s(NO_JITTER, attempts) for attempts in range(1, 13)]
    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0, 2560.0,
                      3600.0, 3600.0]


def test_a_huge_attempt_count_stays_at_the_cap() -> None:
    assert delay_s(NO_JITTER, 100_000) == 3600.0


def test_jitter_spreads_each_delay_within_its_bounds() -> None:
    policy = DeliveryPolicy()  # ±20 %
    for attempts, base_s in [(1, 5.0), (4, 40.0), (11, 3600.0), (30, 3600.0)]:
        delays = [delay_s(policy, attempts, seed=seed) for seed in range(200)]
        assert all(d is not None and 0.8 * base_s <= d <= 1.2 * base_s for d in delays)
        assert len(set(delays)) == 200  # every seed lands somewhere else


def test_jitter_is_drawn_from_the_given_rng() -> None:
    assert delay_s(DeliveryPolicy(), 1, seed=7) == pytest.approx(4.647665529666325, abs=1e-6)


def test_retry_after_is_a_floor_on_the_delay() -> None:
    assert delay_s(DeliveryPolicy(), 1, retry_after_s=600.0) == 600.0
    assert delay_s(NO_JITTER, 5, retry_after_s=10.0) == 80.0  # the backoff asks for longer


def test_gives_up_once_the_window_has_passed() -> None:
    day_s = 24 * 3600.0
    assert delay_s(NO_JITTER, 20, since_first_s=day_s - 3601) == 3600.0  # the last one fits
    assert delay_s(NO_JITTER, 20, since_first_s=day_s - 1800) is None
    assert delay_s(NO_JITTER, 20, since_first_s=day_s + 1) is None
    assert delay_s(NO_JITTER, 2, retry_after_s=day_s, since_first_s=60) is None


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        delay_s(NO_JITTER, 0)


@pytest.mark.parametrize("bad", [
    {"jitter": 1.0}, {"jitter": -0.1}, {"first_retry_s": 0.0}, {"backoff_factor": 0.5},
    {"max_backoff_s": 1.0}, {"give_up_after_s": 0.0}, {"timeout_s": 0.0},
])
def test_policy_refuses_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DeliveryPolicy(**bad)


async def test_a_pinned_delivery_connects_to_the_checked_address(
        httpserver: HTTPServer, client: httpx.AsyncClient) -> None:
    """The URL's name never resolves (.invalid): only the pinned address can have been used,
    with the URL's host still in the Host header."""
    seen: list[str] = []

    def receive(request: Request) -> Response:
        seen.append(request.headers["host"])
        return Response("", status=204)

    httpserver.expect_request("/hook", method="POST").respond_with_handler(receive)
    url = f"http://receiver.invalid:{httpserver.port}/hook"
    outcome = await deliver(client, url, SECRET, "msg_pin", '{"type": "job.succeeded"}',
                            timeout_s=5, connect_to="127.0.0.1")
    assert outcome.delivered, outcome
    assert seen == [f"receiver.invalid:{httpserver.port}"]
    unpinned = await deliver(client, url, SECRET, "msg_pin", "{}", timeout_s=5)
    assert not unpinned.delivered and unpinned.status is None, unpinned
