"""API keys: their format, their scopes, and the hash that is all the registry stores of them.

A key reads `clf_<key id>_<secret>`: the key id (16 hex digits) is public and names the key in
listings, logs and errors; the secret is 256 random bits. The registry stores the sha256 of the
whole key. A fast hash is enough because the key is high-entropy: guessing a preimage of a
256-bit secret is infeasible however fast the hash is, whereas slow hashes (bcrypt, argon2)
protect low-entropy passwords. It also lets a gateway find a key by its hash in a dict, which
needs no constant-time comparison: the lookup time depends only on the hash of what the caller
sent, and knowing any stored hash does not help to forge a key.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable

from fleet_common.errors import InvalidArgument

PREFIX = "clf_"
INFERENCE = "inference"
JOBS = "jobs"
OPERATOR = "operator"
SCOPES: tuple[str, ...] = (INFERENCE, JOBS, OPERATOR)
_KEY = re.compile(r"^clf_([0-9a-f]{16})_([0-9a-f]{64})$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")


def mint_key() -> tuple[str, str]:
    """A new key: (key id, the whole key)."""
    key_id = secrets.token_hex(8)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_hex(32)}"


def key_sha256(key: str) -> str:
    """Lower-case hex sha256 of the whole key, as stored and as snapshots carry it."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(text: str) -> str:
    """The key id in `text`, which is a key id or a whole key (whose secret is not kept)."""
    match = _KEY.match(text)
    if match:
        return match.group(1)
    if _KEY_ID.match(text):
        return text
    raise InvalidArgument("key_id", "must be 16 lower-case hex digits (the part after 'clf_' "
                                    "of a key)")


def check_scopes(scopes: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`scopes` without repeats, in SCOPES order; at least one, each known."""
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise InvalidArgument("scopes", f"unknown scope {unknown[0]!r}; scopes: "
                                        f"{', '.join(SCOPES)}")
    if not scopes:
        raise InvalidArgument("scopes", f"at least one is required: {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in scopes)


def presented_key(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The key of an `authorization: Bearer <key>` metadata entry; "" when there is none."""
    presented = ""
    for name, value in metadata or ():
        if name == "authorization" and isinstance(value, str):
            presented = value.removeprefix("Bearer ").strip()
    return presented
