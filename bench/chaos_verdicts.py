"""Judging each chaos call: an OK answer must be the fault-free greedy answer exactly; a failure
must carry a status a client may retry on and a message that is true of what happened.

"True" is checked against the run's own record of its faults: a message blaming Redis must
come from a call that overlapped the Redis outage; one blaming a lost worker from a call that
overlapped a worker fault; "lost after N tokens" must name exactly the N tokens the stream had
delivered; a fleet DEADLINE_EXCEEDED must come at the call's deadline. A failed stream must
still have delivered only a prefix of the reference (nothing spliced before it failed).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.chaos_calls import Outcome, Spec
from bench.chaos_faults import FaultKind, FaultRecord

RETRYABLE = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "ABORTED")
# How long after recovery a fault's effects may still surface in a call's status.
SLACK_S = 3.0


@dataclass(frozen=True)
class Reference:
    token_ids: tuple[int, ...]
    text: str


class Verdict(enum.StrEnum):
    OK = "ok"
    WRONG = "ok-but-wrong-tokens"  # spliced, duplicated or missing tokens in an OK answer
    SPLICED = "failed-after-a-spliced-prefix"
    RETRYABLE = "retryable-true-message"
    UNTRUE = "retryable-untrue-message"
    NOT_RETRYABLE = "not-retryable"
    LOST = "lost"


GOOD = (Verdict.OK, Verdict.RETRYABLE)


@dataclass(frozen=True)
class Judged:
    outcome: Outcome
    verdict: Verdict
    reason: str
    faults: tuple[int, ...]  # indexes of the faults whose window the call overlapped


def _overlaps(outcome: Outcome, fault: FaultRecord) -> bool:
    end = (fault.recovered_unix or fault.at_unix) + SLACK_S
    return outcome.started_unix <= end and fault.at_unix <= outcome.ended_unix


def _first_difference(got: Sequence[int], want: Sequence[int]) -> str:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"token {i} is {a}, the reference has {b}"
    return f"{len(got)} tokens, the reference has {len(want)}"


def judge(outcome: Outcome, reference: Reference, faults: Sequence[FaultRecord],
          timeout_s: float) -> Judged:
    hit = tuple(i for i, f in enumerate(faults) if _overlaps(outcome, f))

    def verdict(v: Verdict, reason: str) -> Judged:
        return Judged(outcome, v, reason, hit)

    if outcome.lost or outcome.local_deadline:
        return verdict(Verdict.LOST, "no answer from the fleet before the client's deadline")
    if outcome.code == "OK":
        return _judge_ok(outcome, reference, verdict)
    delivered = outcome.token_ids
    if delivered and tuple(delivered) != reference.token_ids[:len(delivered)]:
        return verdict(Verdict.SPLICED, "before failing it delivered "
                       + _first_difference(delivered, reference.token_ids))
    if outcome.code not in RETRYABLE:
        return verdict(Verdict.NOT_RETRYABLE, outcome.code)
    problem = _untrue(outcome, [faults[i] for i in hit], timeout_s)
    if problem:
        return verdict(Verdict.UNTRUE, problem)
    return verdict(Verdict.RETRYABLE, "")


def _judge_ok(outcome: Outcome, reference: Reference,
              verdict: Callable[[Verdict, str], Judged]) -> Judged:
    spec: Spec = outcome.call.spec
    if tuple(outcome.token_ids) != reference.token_ids:
        return verdict(Verdict.WRONG, _first_difference(outcome.token_ids, reference.token_ids))
    if outcome.text != reference.text:
        return verdict(Verdict.WRONG, "the tokens match but the text does not")
    if outcome.completion_tokens != spec.max_tokens:
        return verdict(Verdict.WRONG, f"usage says {outcome.completion_tokens} completion "
                       f"tokens, {spec.max_tokens} were generated")
    return verdict(Verdict.OK, "")


_LOST_AFTER = re.compile(r"lost after (\d+) tokens")


def _untrue(outcome: Outcome, faults: list[FaultRecord], timeout_s: float) -> str:
    """Why the failure's message is not true of what happened ("" when it is)."""
    message, code = outcome.details, outcome.code
    redis_down = any(f.kind is FaultKind.REDIS for f in faults)
    if code == "UNAVAILABLE":
        if "unreachable" in message:
            return "" if redis_down else "blames Redis, which was up for the whole call"
        if "no live worker" in message:
            return "" if redis_down else "says no worker was live; one was for the whole call"
        if match := _LOST_AFTER.search(message):
            said, had = int(match.group(1)), len(outcome.token_ids)
            if not outcome.call.streaming:
                return "a unary call failed for not reproducing streamed tokens"
            if said != had:
                return f"says {said} tokens were delivered; the stream had {had}"
            return "" if faults else "says its worker was lost; no fault overlapped the call"
        if any(s in message for s in ("stopped sending heartbeats", "no worker started it",
                                      "gave up after")):
            return "" if faults else "says its worker was lost; no fault overlapped the call"
        return f"unrecognised message {message!r}"
    if code == "DEADLINE_EXCEEDED":
        took = outcome.ended_unix - outcome.started_unix
        return "" if took >= 0.8 * timeout_s else (
            f"DEADLINE_EXCEEDED after {took:.1f} s of a {timeout_s:g} s deadline")
    if code == "RESOURCE_EXHAUSTED":
        return "" if "retry in" in message else f"no retry advice in {message!r}"
    return "" if message else "empty message"
