"""The webhook SSRF guard: https to public addresses only, unless the operator allows a host."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from gateway import webhook_targets
from gateway.webhook_targets import refusal


@pytest.mark.parametrize("url, says", [
    ("http://93.184.216.34/hook", "must be https"),
    ("https://127.0.0.1/hook", "internal address 127.0.0.1"),
    ("https://localhost:8443/hook", "internal address"),
    ("https://10.1.2.3/hook", "internal address 10.1.2.3"),
    ("https://192.168.0.7/hook", "internal address 192.168.0.7"),
    ("https://169.254.169.254/latest/meta-data", "internal address 169.254.169.254"),
    ("https://100.64.0.9/hook", "internal address 100.64.0.9"),
    ("https://0.0.0.0/hook", "internal address 0.0.0.0"),
    ("https://[::1]/hook", "internal address ::1"),
    ("https://[fd00::1]/hook", "internal address fd00::1"),
    ("https://[::ffff:10.0.0.1]/hook", "internal address ::ffff:10.0.0.1"),
    ("https:///hook", "has no host"),
])
async def test_internal_or_plain_http_targets_are_refused(url: str, says: str) -> None:
    assert says in await refusal(url, ())


async def test_public_https_targets_pass() -> None:
    assert await refusal("https://93.184.216.34/hook", ()) == ""
    assert await refusal("https://[2606:2800:220:1:248:1893:25c8:1946]/hook", ()) == ""


async def test_an_allowlisted_host_may_be_internal_and_plain_http() -> None:
    assert await refusal("http://127.0.0.1:8080/hook", ("127.0.0.1",)) == ""
    assert await refusal("https://10.1.2.3/hook", ("10.1.2.3",)) == ""
    assert "internal address" in await refusal("https://10.1.2.4/hook", ("10.1.2.3",))


async def test_hanging_lookups_time_out_without_holding_the_default_executor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A resolver that never answers: each check gives up after its timeout, and while the
    lookups still hang, work sent to the loop's default executor (the job store's calls) runs
    at once."""
    release = threading.Event()
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: str, *args: object, **kwargs: object) -> object:
        if host == "hangs.example":
            release.wait(30)
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(webhook_targets, "_RESOLVE_TIMEOUT_S", 0.3)
    try:
        hanging = [asyncio.ensure_future(refusal("https://hangs.example/hook", ()))
                   for _ in range(8)]
        await asyncio.sleep(0.05)
        async with asyncio.timeout(2):
            assert await asyncio.to_thread(lambda: "store call") == "store call"
        for reason in await asyncio.gather(*hanging):
            assert "did not resolve within 0.3 s" in reason
    finally:
        release.set()
