"""Delivery of job webhooks per the Standard Webhooks spec (https://www.standardwebhooks.com/).

When a batch job ends, the fleet POSTs one event (`job.succeeded`, `job.failed`, `job.cancelled`,
`job.expired`) to the URL the job named. This module is the delivery part, with no database and
no global state: `deliver` makes one attempt and says what happened (`DeliveryOutcome`), and
`next_attempt` says when the outbox should try again, or that it should give up. Delivery is at
least once: every attempt of one event carries the same `webhook-id`, on which receivers dedupe;
each attempt carries its own `webhook-timestamp` and a signature over
`{webhook-id}.{webhook-timestamp}.{body}` (HMAC-SHA256 with the tenant's `whsec_` secret).

A receiver verifies the raw body (before any JSON parsing: re-serialised JSON no longer matches)
with the `standardwebhooks` package, which also rejects timestamps more than 5 minutes off:

    from standardwebhooks import Webhook, WebhookVerificationError

    try:
        event = Webhook("whsec_...").verify(raw_body, request_headers)
    except WebhookVerificationError:
        return 400
    if already_processed(request_headers["webhook-id"]):
        return 204  # a retry of an event already handled
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
from standardwebhooks import Webhook

USER_AGENT = "codellama-fleet-webhooks/1"
# A Retry-After longer than this is read as this: it exceeds any sane delivery window anyway.
RETRY_AFTER_CEILING_S = 366 * 24 * 3600.0
_DELAY_SECONDS = re.compile(r"[0-9]+")


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: `v1,<base64 HMAC-SHA256>` keyed by the `whsec_`
    secret's base64-decoded bytes, over `{webhook_id}.{timestamp}.{body}`."""
    if "." in webhook_id:
        raise ValueError(f"a webhook id must not contain '.': {webhook_id!r}")
    signed_at = datetime.fromtimestamp(timestamp, tz=UTC)
    # The package signs text: a strict UTF-8 decode gives back exactly these bytes when encoded
    # (and a body that is not UTF-8 could not be verified by the package's `verify` either).
    return Webhook(secret).sign(msg_id=webhook_id, timestamp=signed_at, data=body.decode("utf-8"))


def headers(secret: str, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, webhook_id, timestamp, body),
    }


@dataclass(frozen=True)
class DeliveryPolicy:
    """Retry schedule: `first_retry_s` after the first attempt, growing by `backoff_factor` up to
    `max_backoff_s`, each delay spread by ±`jitter` (a fraction); no attempt is scheduled later
    than `give_up_after_s` after the first one. `timeout_s` bounds one whole attempt (the spec
    recommends 15 to 30 s so receivers have time to acknowledge)."""

    first_retry_s: float = 5.0
    backoff_factor: float = 2.0
    max_backoff_s: float = 3600.0
    give_up_after_s: float = 24 * 3600.0
    timeout_s: float = 15.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.first_retry_s <= self.max_backoff_s:
            raise ValueError("need 0 < first_retry_s <= max_backoff_s")
        if self.backoff_factor < 1:
            raise ValueError("backoff_factor must be at least 1")
        if self.give_up_after_s <= 0 or self.timeout_s <= 0:
            raise ValueError("give_up_after_s and timeout_s must be positive")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")


def _backoff_s(policy: DeliveryPolicy, attempts: int) -> float:
    """The delay after `attempts` failed attempts, before jitter."""
    try:
        grown = policy.first_retry_s * policy.backoff_factor ** (attempts - 1)
    except OverflowError:
        return policy.max_backoff_s
    return min(grown, policy.max_backoff_s)


def next_attempt(policy: DeliveryPolicy, *, attempts: int, first_attempt_at: datetime,
                 now: datetime, retry_after_s: float | None,
                 rng: random.Random) -> datetime | None:
    """When to make the next attempt after `attempts` failed ones, or None: give up.

    Never earlier than a Retry-After asks. The give-up window caps everything: an attempt that
    would fall after it (by backoff or by Retry-After) is not scheduled, rather than made early.
    """
    if attempts < 1:
        raise ValueError("attempts counts the failed attempts so far: at least 1")
    # Jitter is applied after the cap, so endpoints that have all reached the cap stay spread.
    delay_s = _backoff_s(policy, attempts) * rng.uniform(1 - policy.jitter, 1 + policy.jitter)
    if retry_after_s is not None:
        delay_s = max(delay_s, retry_after_s)
    at = now + timedelta(seconds=delay_s)
    if at > first_attempt_at + timedelta(seconds=policy.give_up_after_s):
        return None
    return at


@dataclass(frozen=True)
class DeliveryOutcome:
    delivered: bool
    status: int | None  # None: no HTTP response (timeout, connection error)
    error: str  # empty when delivered
    retry_after_s: float | None  # the receiver's Retry-After, in seconds from now
    disable_endpoint: bool  # 410 Gone: the receiver wants no more events at this URL

    @property
    def should_retry(self) -> bool:
        return not self.delivered and not self.disable_endpoint


def parse_retry_after(value: str, *, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP-date); None if it is
    neither. A date in the past means 0."""
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        return min(float(value), RETRY_AFTER_CEILING_S)  # float() of a huge number is inf
    try:
        retry_at = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if retry_at.tzinfo is None:
        retry_at = retry_at.replace(tzinfo=UTC)
    return min(max(0.0, (retry_at - now).total_seconds()), RETRY_AFTER_CEILING_S)


def _pinned(url: str, address: str) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
    """`url` sent to `address` (an IP) instead of what its name resolves to at connect time:
    the URL to request, the Host header and the TLS server name to verify the certificate for."""
    original = httpx.URL(url)
    host = original.host
    authority = host if original.port is None else f"{host}:{original.port}"
    if ":" in host:
        authority = f"[{host}]" if original.port is None else f"[{host}]:{original.port}"
    extensions = {"sni_hostname": host} if original.scheme == "https" else {}
    return original.copy_with(host=address), {"host": authority}, extensions


async def deliver(client: httpx.AsyncClient, url: str, secret: str, webhook_id: str,
                  payload: str, *, timestamp: int | None = None, timeout_s: float,
                  connect_to: str | None = None) -> DeliveryOutcome:
    """One attempt: POST `payload` (JSON text, sent as exactly the UTF-8 bytes signed) to `url`.

    Raises for no HTTP or network failure: those are outcomes. Redirects are not followed.
    `timeout_s` bounds the whole attempt, connect to response headers; the response body is not
    read. `timestamp` (unix seconds) defaults to now: each attempt is signed afresh.
    `connect_to`: the address to connect to (the one `gateway.webhook_targets` checked), so a
    name cannot resolve elsewhere between the check and the connection (DNS rebinding); the
    certificate is still verified for the URL's host.
    """
    body = payload.encode("utf-8")
    sent_at = int(time.time()) if timestamp is None else timestamp
    request_headers = headers(secret, webhook_id, sent_at, body)
    target: httpx.URL | str = url
    extensions: dict[str, str] = {}
    try:
        if connect_to is not None:
            target, host_header, extensions = _pinned(url, connect_to)
            request_headers = {**request_headers, **host_header}
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", target, content=body, headers=request_headers,
                                     timeout=timeout_s, follow_redirects=False,
                                     extensions=extensions) as response:
                return _outcome_of_response(response)
    except (TimeoutError, httpx.TimeoutException):
        return _no_response(f"timeout: no response within {timeout_s:g} s")
    except httpx.TransportError as exc:
        return _no_response(f"connection failed: {type(exc).__name__}: {exc}")
    except httpx.InvalidURL as exc:
        return _no_response(f"invalid URL {url!r}: {exc}")


def _no_response(error: str) -> DeliveryOutcome:
    return DeliveryOutcome(delivered=False, status=None, error=error, retry_after_s=None,
                           disable_endpoint=False)


def _outcome_of_response(response: httpx.Response) -> DeliveryOutcome:
    status = response.status_code
    if 200 <= status < 300:
        return DeliveryOutcome(delivered=True, status=status, error="", retry_after_s=None,
                               disable_endpoint=False)
    retry_after = response.headers.get("retry-after")
    retry_after_s = (None if retry_after is None
                     else parse_retry_after(retry_after, now=datetime.now(UTC)))
    # Every non-2xx but 410 is retried, other 4xx included: the spec counts them as failures to
    # retry until the window ends, and a 404 or 401 is often a receiver mid-deploy or mid key
    # rotation; only 410 is the receiver's explicit "stop sending".
    return DeliveryOutcome(delivered=False, status=status, error=_describe_failure(response),
                           retry_after_s=retry_after_s, disable_endpoint=status == 410)


def _describe_failure(response: httpx.Response) -> str:
    # The standard reason phrase, not the receiver's: its text is not ours to store.
    status = f"HTTP {response.status_code} {httpx.codes.get_reason_phrase(response.status_code)}"
    status = status.rstrip()
    if response.status_code == 410:
        return f"{status}: the receiver asks for no more events at this URL"
    if response.is_redirect:
        location = response.headers.get("location", "")
        return f"{status}: redirect to {location!r} not followed (update the webhook URL)"
    return status
