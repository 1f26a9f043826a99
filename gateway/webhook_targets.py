"""Which webhook URLs the fleet will POST to (the server-side request forgery guard).

A webhook URL is https, and its host resolves only to public addresses: loopback, private,
link-local (the cloud metadata endpoint 169.254.169.254 among them), carrier-grade NAT,
reserved, multicast and unspecified addresses are refused, unless the operator's allowlist
(FLEET_WEBHOOK_ALLOWED_HOSTS) names the host; an allowlisted host may also use http. The check
runs at submission and again before every delivery, and the delivery connects to the address
that was checked (`gateway.webhooks.deliver(connect_to=...)`), so a name that resolves
elsewhere at connect time (DNS rebinding) is not followed there. Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

_CARRIER_GRADE_NAT = ipaddress.ip_network("100.64.0.0/10")
_RESOLVE_TIMEOUT_S = 5.0
# Lookups run on threads of their own. A resolver that hangs holds a thread past the timeout
# (getaddrinfo cannot be interrupted); on the loop's default executor (6 threads on 2 cores)
# a few such lookups would stall the job store's calls and the gateway's tokenization there.
_LOOKUPS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="webhook-dns")


def _internal(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved
            or ip.is_multicast or ip.is_unspecified
            or (isinstance(ip, ipaddress.IPv4Address) and ip in _CARRIER_GRADE_NAT))


@dataclass(frozen=True)
class Target:
    """Whether the fleet POSTs to a URL: `refusal` says why not ("" when it does); `address` is
    the checked address to connect to (None for an allowlisted host: connect as resolved)."""

    refusal: str
    address: str | None = None


async def resolve(url: str, allowed_hosts: Collection[str]) -> Target:
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return Target("has no host")
    allowed = host in allowed_hosts
    if parts.scheme != "https" and not (parts.scheme == "http" and allowed):
        return Target("must be https (http only to a host in FLEET_WEBHOOK_ALLOWED_HOSTS)")
    if allowed:
        return Target("")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return Target("has an invalid port")
    try:
        async with asyncio.timeout(_RESOLVE_TIMEOUT_S):
            found = await asyncio.get_running_loop().run_in_executor(
                _LOOKUPS, functools.partial(socket.getaddrinfo, host, port,
                                            type=socket.SOCK_STREAM))
    except TimeoutError:
        return Target(f"host {host!r} did not resolve within {_RESOLVE_TIMEOUT_S:g} s")
    except (socket.gaierror, UnicodeError) as exc:
        return Target(f"host {host!r} does not resolve ({exc})")
    addresses = [info[4][0] for info in found]
    internal = sorted({a for a in addresses if _internal(a)})
    if internal:
        return Target(f"host {host!r} resolves to internal address {internal[0]} (loopback, "
                      "private, link-local or reserved); an operator may allow the host with "
                      "FLEET_WEBHOOK_ALLOWED_HOSTS")
    return Target("", addresses[0])


async def refusal(url: str, allowed_hosts: Collection[str]) -> str:
    """Why the fleet will not POST to `url` ("" when it will)."""
    return (await resolve(url, allowed_hosts)).refusal
