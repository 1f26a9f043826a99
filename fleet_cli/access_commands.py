"""`fleet ops tenant-* / key-*`: tenants, their policies and API keys over the RegistryService
(operator scope).

`key-create` prints the new key once, with a warning: the registry keeps only its sha256.
`tenant-create` and `tenant-update` take the policy flags (docs/tenants.md); `tenant-update`
changes only the flags given.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from codellama.fleet.v1 import registry_service_pb2 as pb
from fleet_common.errors import InvalidArgument
from model_registry.access_messages import PRIORITY_PB, SCOPE_PB, duration_pb
from model_registry.api_keys import SCOPES, key_id_of

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
SECRET_WARNING = ("warning: the \"secret\" above is the API key, shown this once: store it now. "
                  "The registry keeps only its sha256; a lost key cannot be recovered, only "
                  "revoked (fleet ops key-revoke) and replaced.")


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `3600s`, `2w`."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"expected a positive number and a unit s, m, h, d or "
                                         f"w (e.g. 30d), got {text!r}")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def key_id_argument(text: str) -> str:
    """A key id, or a whole key whose id is taken from it (its secret is never sent)."""
    try:
        return key_id_of(text.strip())
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(exc.problem) from exc


def count_argument(text: str) -> int:
    """A limit: 0 (no limit) or a positive whole number (the registry checks the upper bound)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0 or value >= 2**32:
        raise argparse.ArgumentTypeError(f"expected 0 (no limit) or a positive whole number, "
                                         f"got {text!r}")
    return value


_POLICY_FLAGS = (
    ("max_concurrent", "requests generating at once, over every gateway (0: no limit)"),
    ("requests_per_minute", "requests admitted in any 60 s (0: no limit)"),
    ("tokens_per_minute", ("prompt + completion tokens in any 60 s; a request reserves "
                           "prompt + max_tokens x n until it finishes (0: no limit)")),
    ("max_queued_job_items", "batch job items waiting at once (0: no limit)"),
    ("weight", "share when tenants compete for a queue, 1 to 1000 (default 1)"),
)


def _policy_arguments(p: argparse.ArgumentParser) -> None:
    for name, text in _POLICY_FLAGS:
        p.add_argument(f"--{name.replace('_', '-')}", type=count_argument, default=None,
                       help=text)
    p.add_argument("--max-priority", choices=tuple(PRIORITY_PB), default=None,
                   help="highest priority its requests may ask for (default high); a request "
                        "above it is refused with PERMISSION_DENIED")


def _policy(a: argparse.Namespace) -> pb.TenantPolicy:
    """The flags given; the others stay unset (default, or unchanged by tenant-update)."""
    policy = pb.TenantPolicy()
    for name, _ in _POLICY_FLAGS:
        if getattr(a, name) is not None:
            setattr(policy, name, getattr(a, name))
    if a.max_priority is not None:
        policy.max_priority = PRIORITY_PB[a.max_priority]  # type: ignore[assignment]
    return policy


def _key(a: argparse.Namespace) -> Any:
    request = pb.CreateApiKeyRequest(tenant=a.tenant, name=a.name,
                                     scopes=[SCOPE_PB[s] for s in a.scope])
    if a.expires_in is not None:
        request.expires_in.CopyFrom(duration_pb(a.expires_in))
    return request


def _key_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("tenant")
    p.add_argument("name", help="unique within the tenant for good (revoked keys keep theirs)")
    p.add_argument("--scope", action="append", required=True, choices=SCOPES,
                   help="repeat for several: inference (gateway calls), jobs, operator "
                        "(registry writes, tenants and keys)")
    p.add_argument("--expires-in", type=parse_duration, default=None,
                   help="e.g. 30d, 12h (units s, m, h, d, w); default: until revoked")


Builder = Callable[[argparse.Namespace], Any]
COMMANDS: dict[str, tuple[str, Builder, Callable[[argparse.ArgumentParser], None]]] = {
    "tenant-create": ("CreateTenant", lambda a: pb.CreateTenantRequest(
        name=a.name, display_name=a.display_name, policy=_policy(a)), lambda p: (
        p.add_argument("name"), p.add_argument("--display-name", default=""),
        _policy_arguments(p))),
    "tenant-update": ("UpdateTenantPolicy", lambda a: pb.UpdateTenantPolicyRequest(
        tenant=a.name, policy=_policy(a)), lambda p: (
        p.add_argument("name"), _policy_arguments(p))),
    "tenant-list": ("ListTenants", lambda a: pb.ListTenantsRequest(), lambda p: None),
    "key-create": ("CreateApiKey", _key, _key_arguments),
    "key-list": ("ListApiKeys", lambda a: pb.ListApiKeysRequest(tenant=a.tenant),
                 lambda p: p.add_argument("--tenant", default="")),
    "key-revoke": ("RevokeApiKey", lambda a: pb.RevokeApiKeyRequest(key_id=a.key_id),
                   lambda p: p.add_argument("key_id", type=key_id_argument,
                                            help="the key id, or the whole key")),
}
#: What to tell the operator (on stderr) after a command's output.
NOTES: dict[str, str] = {"key-create": SECRET_WARNING}
