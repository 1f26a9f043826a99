"""One request's client-side timings, measured the same way for every backend.

As in vLLM's benchmarks/serve.py: the clock starts just before the request is issued; TTFT is
the arrival of the first chunk that carries tokens; each later token-bearing chunk adds one
inter-token latency (the gap since the previous one, whatever the number of tokens in it);
the end-to-end latency ends at the last token-bearing chunk. Token counts are the token ids
actually received, so they can be checked against the requested length.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RequestRecord:
    index: int
    #: Seconds since the start of the phase when the request was issued (set by the loop).
    start: float = 0.0
    success: bool = False
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    #: Tokens carried by each token-bearing chunk (len == len(itl) + 1 on success).
    chunk_tokens: list[int] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    finish_reason: str = ""
    error: str = ""
    #: Backend-specific figures in ms (fleet: queue_wait_ms, gateway_ttft_ms, ...).
    extra: dict[str, float] = field(default_factory=dict)

    def to_json(self, *, with_itl: bool = True) -> dict[str, Any]:
        data = asdict(self)
        data["itl"] = [round(v, 6) for v in self.itl] if with_itl else None
        if not with_itl:
            data.pop("chunk_tokens")
        for key in ("start", "ttft", "latency"):
            data[key] = round(data[key], 6)
        return data

    @staticmethod
    def from_json(data: dict[str, Any]) -> RequestRecord:
        fields = dict(data)
        fields["itl"] = fields.get("itl") or []
        fields.setdefault("chunk_tokens", [])
        return RequestRecord(**fields)


class ChunkClock:
    """Stamps token-bearing chunks of one request (perf_counter) and fills a record."""

    def __init__(self, index: int, prompt_tokens: int) -> None:
        self.record = RequestRecord(index=index, prompt_tokens=prompt_tokens)
        self.started = time.perf_counter()
        self._last = self.started

    def chunk(self, tokens: int) -> None:
        """A chunk arrived; chunks without tokens (acks, usage-only) do not count."""
        if tokens <= 0:
            return
        now = time.perf_counter()
        record = self.record
        if not record.chunk_tokens:
            record.ttft = now - self.started
        else:
            record.itl.append(now - self._last)
        self._last = now
        record.chunk_tokens.append(tokens)
        record.output_tokens += tokens

    def since_start_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def finish(self, *, finish_reason: str = "", error: str = "") -> RequestRecord:
        record = self.record
        record.latency = self._last - self.started
        record.finish_reason = finish_reason
        record.error = error
        record.success = not error and bool(record.chunk_tokens)
        if not error and not record.chunk_tokens:
            record.error = "no token-bearing chunk received"
        return record
