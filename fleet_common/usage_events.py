"""Usage counts as the gateways hand them to the registry.

A gateway adds up, per (tenant, model, model version, UTC day), the requests that ended with a
result, their prompt and completion tokens, and the requests admission refused by reason; about
once a second it appends what it added up as one batch, one entry of the Redis stream
`keys.USAGE_STREAM`. Each batch has an id unique to its gateway and its flush, fixed before the
first attempt to write it, so a batch written twice (a retried XADD, a redelivered entry) is
applied to the database once (`model_registry.usage`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date

FORMAT = "1"


@dataclass(frozen=True, order=True)
class UsageKey:
    """What usage is counted by."""

    tenant: str
    model: str
    model_version: str
    day: date


@dataclass
class UsageCounts:
    """Requests that ended with a result and their tokens; refused requests by reason."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    refusals: dict[str, int] = field(default_factory=dict)

    def add(self, other: UsageCounts) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        for reason, count in other.refusals.items():
            self.refusals[reason] = self.refusals.get(reason, 0) + count


@dataclass(frozen=True)
class UsageBatch:
    """One flush of one gateway: the counts it added up since its previous flush."""

    batch_id: str
    counts: Mapping[UsageKey, UsageCounts]


class MalformedBatch(ValueError):
    """A stream entry that is not a usage batch of a known format."""


def batch_fields(batch: UsageBatch) -> dict[str, str]:
    """The stream entry of `batch`."""
    rows = [{"tenant": k.tenant, "model": k.model, "model_version": k.model_version,
             "day": k.day.isoformat(), "requests": c.requests, "prompt_tokens": c.prompt_tokens,
             "completion_tokens": c.completion_tokens, "refusals": c.refusals}
            for k, c in sorted(batch.counts.items())]
    return {"format": FORMAT, "batch": batch.batch_id,
            "counts": json.dumps(rows, separators=(",", ":"))}


def batch_from_fields(fields: Mapping[bytes, bytes]) -> UsageBatch:
    """The batch a stream entry holds; MalformedBatch if it holds none."""
    try:
        if fields[b"format"] != FORMAT.encode():
            raise MalformedBatch(f"unknown usage format {fields[b'format']!r}")
        batch_id = fields[b"batch"].decode()
        counts: dict[UsageKey, UsageCounts] = {}
        for row in json.loads(fields[b"counts"]):
            key = UsageKey(str(row["tenant"]), str(row["model"]), str(row["model_version"]),
                           date.fromisoformat(row["day"]))
            counts.setdefault(key, UsageCounts()).add(UsageCounts(
                _count(row["requests"]), _count(row["prompt_tokens"]),
                _count(row["completion_tokens"]),
                {str(reason): _count(n) for reason, n in row["refusals"].items()}))
    except MalformedBatch:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise MalformedBatch(f"not a usage batch: {type(exc).__name__}: {exc}") from exc
    if not batch_id:
        raise MalformedBatch("a usage batch without an id")
    return UsageBatch(batch_id, counts)


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"a count must be a non-negative integer, got {value!r}")
    return value
