"""The metrics math against values computed by hand (vLLM serve.py definitions)."""

from __future__ import annotations

import pytest

from bench import records as records_module
from bench.metrics import added_latency, distribution_ms, phase_metrics, ratios, tpot
from bench.records import ChunkClock, RequestRecord
from bench.settings import Slo

approx = pytest.approx


def _record(index: int, ttft: float, gaps: list[float], chunk_tokens: list[int],
            prompt_tokens: int = 8) -> RequestRecord:
    return RequestRecord(index=index, success=True, ttft=ttft, latency=ttft + sum(gaps),
                         itl=gaps, chunk_tokens=chunk_tokens,
                         output_tokens=sum(chunk_tokens), prompt_tokens=prompt_tokens)


@pytest.fixture()
def phase() -> dict:
    fast = _record(0, 0.1, [0.1] * 9, [1] * 10)          # e2el 1.0 s, tpot 0.9 / 9 = 0.1
    slow = _record(1, 0.3, [0.5] * 4, [1] * 5)           # e2el 2.3 s, tpot 2.0 / 4 = 0.5
    failed = RequestRecord(index=2, error="boom", prompt_tokens=8)
    return phase_metrics([fast, slow, failed], 4.0, Slo(ttft_ms=200, tpot_ms=200))


def test_counts_and_throughputs(phase: dict) -> None:
    assert phase["completed"] == 2 and phase["failed"] == 1
    assert phase["total_input_tokens"] == 16          # failed requests do not count
    assert phase["total_output_tokens"] == 15
    assert phase["request_throughput"] == approx(0.5)       # 2 / 4 s
    assert phase["output_throughput"] == approx(3.75)       # 15 / 4 s
    assert phase["total_token_throughput"] == approx(7.75)  # (16 + 15) / 4 s
    assert phase["tokens_per_chunk"] == approx(1.0)


def test_ttft_percentiles_interpolate_linearly(phase: dict) -> None:
    ttft = phase["ttft_ms"]                                  # values 100, 300
    assert (ttft["mean"], ttft["median"], ttft["std"]) == (approx(200), approx(200), approx(100))
    assert ttft["p50"] == approx(200)
    assert ttft["p90"] == approx(280)                        # 100 + 0.9 * 200
    assert ttft["p99"] == approx(298)


def test_tpot_excludes_the_first_token(phase: dict) -> None:
    t = phase["tpot_ms"]                                     # values 100, 500
    assert t["p50"] == approx(300) and t["p90"] == approx(460) and t["p99"] == approx(496)


def test_itl_pools_every_gap_of_every_request(phase: dict) -> None:
    itl = phase["itl_ms"]                                    # 9 x 100 then 4 x 500
    assert itl["count"] == 13
    assert itl["mean"] == approx((9 * 100 + 4 * 500) / 13)
    assert itl["p50"] == approx(100)                         # rank 6 of 0..12
    assert itl["p90"] == approx(500)                         # rank 10.8 -> 500
    assert itl["max"] == approx(500)


def test_e2el(phase: dict) -> None:
    e2el = phase["e2el_ms"]                                  # 1000, 2300
    assert e2el["p50"] == approx(1650) and e2el["p90"] == approx(2170)
    assert e2el["p99"] == approx(2287)


def test_goodput_needs_every_limit(phase: dict) -> None:
    # fast: TTFT 100 <= 200 and TPOT 100 <= 200: good; slow: TTFT 300 > 200: not good
    assert phase["good_requests"] == 1
    assert phase["request_goodput"] == approx(0.25)


def test_single_token_request_has_no_tpot_but_can_be_good() -> None:
    one = _record(0, 0.05, [], [1])
    assert tpot(one) is None
    m = phase_metrics([one], 1.0, Slo(ttft_ms=100, tpot_ms=1))
    assert m["tpot_ms"]["count"] == 0 and m["good_requests"] == 1


def test_bundled_tokens_give_fewer_itl_gaps() -> None:
    bundled = _record(0, 0.1, [0.2, 0.2], [2, 2, 2])
    m = phase_metrics([bundled], 1.0, Slo())
    assert m["tokens_per_chunk"] == approx(2.0)
    assert m["itl_ms"]["count"] == 2
    assert m["tpot_ms"]["p50"] == approx(400 / 5)            # (0.5 - 0.1) s / (6 - 1)


def test_empty_distribution_is_zeros() -> None:
    empty = distribution_ms([])
    assert empty["count"] == 0 and empty["p99"] == 0.0


def test_ratios_and_added_latency_use_the_same_metrics() -> None:
    a = phase_metrics([_record(0, 0.2, [0.1] * 3, [1] * 4)], 2.0, Slo())
    b = phase_metrics([_record(0, 0.1, [0.05] * 3, [1] * 4)], 1.0, Slo())
    r = ratios(a, b)
    assert r["output tok/s"] == approx(0.5)                  # (4 / 2) / (4 / 1)
    assert r["TTFT p50"] == approx(2.0)
    assert r["ITL p90"] == approx(2.0)
    added = added_latency(a, b)
    assert added["p50"] == approx(100.0) and added["p99"] == approx(100.0)


def test_chunk_clock_measures_like_serve_py(monkeypatch: pytest.MonkeyPatch) -> None:
    now = iter([10.0, 10.2, 10.2, 10.5, 10.9])
    monkeypatch.setattr(records_module.time, "perf_counter", lambda: next(now))
    clock = ChunkClock(index=3, prompt_tokens=7)              # starts at 10.0
    clock.chunk(0)                                            # an ack: ignored, no clock read
    clock.chunk(1)                                            # 10.2: TTFT 0.2
    clock.since_start_ms()                                    # 10.2 (a read that is not a chunk)
    clock.chunk(2)                                            # 10.5: gap 0.3
    clock.chunk(1)                                            # 10.9: gap 0.4
    record = clock.finish(finish_reason="length")
    assert record.success and record.output_tokens == 4 and record.chunk_tokens == [1, 2, 1]
    assert record.ttft == approx(0.2) and record.itl == [approx(0.3), approx(0.4)]
    assert record.latency == approx(0.9)


def test_no_tokens_is_a_failure() -> None:
    record = ChunkClock(index=0, prompt_tokens=1).finish()
    assert not record.success and "no token" in record.error
