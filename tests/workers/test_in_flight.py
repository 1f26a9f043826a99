"""Which generation a cancel message stops, including one that arrives before it starts."""

from __future__ import annotations

import asyncio

from workers.generation import InFlight


async def test_cancel_before_the_generation_starts_is_remembered() -> None:
    in_flight = InFlight()
    in_flight.begin("r1")
    assert in_flight.cancel("r1")
    assert in_flight.was_cancelled("r1")
    generation = asyncio.ensure_future(asyncio.sleep(60))
    in_flight.attach("r1", generation)
    await asyncio.sleep(0)
    assert generation.cancelled()
    in_flight.end("r1")
    assert not in_flight.was_cancelled("r1") and not in_flight.cancel("r1")


async def test_cancel_stops_only_the_named_generation() -> None:
    in_flight = InFlight()
    running = {rid: asyncio.ensure_future(asyncio.sleep(60)) for rid in ("a", "b")}
    for rid, generation in running.items():
        in_flight.begin(rid)
        in_flight.attach(rid, generation)
    assert not in_flight.cancel("unknown")
    assert in_flight.cancel("a")
    await asyncio.sleep(0)
    assert running["a"].cancelled() and not running["b"].done()
    running["b"].cancel()
