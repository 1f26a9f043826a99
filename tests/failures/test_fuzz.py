"""10,000 malformed, mutated and extreme requests against a real gateway process: every one is
answered with a status a client can act on (never INTERNAL or UNKNOWN), and the gateway's
memory and open files stay flat and its health SERVING.

No engine is needed: one model has a stand-in live worker (its requests queue and meet their
short deadline), the other has none (UNAVAILABLE at once)."""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from codellama.fleet.v1 import inference_service_pb2 as api
from fleet_common.keys import live_workers
from tests.e2e.fleet_harness import Fleet, new_fleet
from tests.support.redis_server import throwaway_redis

pytestmark = pytest.mark.e2e
QUEUED, UNSERVED = "fuzz-queued", "fuzz-unserved"
REQUESTS = 10_000
CONCURRENCY = 64
SERVICE = "/codellama.fleet.v1.InferenceService/"
METHODS = {"Complete": api.CompleteRequest, "StreamComplete": api.StreamCompleteRequest,
           "Infill": api.InfillRequest, "Chat": api.ChatRequest,
           "StreamChat": api.StreamChatRequest, "PreviewPrompt": api.PreviewPromptRequest}
STREAMING = {"StreamComplete", "StreamChat"}
NASTY_TEXT = ["", "\x00", "\ud7ff\ue000", "💥" * 300, "<s>[INST]", "<PRE> <SUF> <MID>", "A" * 70_000,
              "\u202e\u200b", "</s>" * 50, "\n" * 1000]
NASTY_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 1e-45, 3.4e38, -1.0, 2.0000001]
NASTY_INTS = [0, 1, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory,
            tiny_checkpoints: dict[str, Path]) -> Iterator[Fleet]:
    with throwaway_redis(tmp_path_factory) as redis_url:
        fleet = new_fleet(tmp_path_factory.mktemp("fuzz"), redis_url)
        for model in (QUEUED, UNSERVED):
            fleet.register(model, tiny_checkpoints["infill"], variant="codellama-7b-instruct",
                           context_limit=2048)
        stop = threading.Event()
        queue = fleet.store.get_version(QUEUED).queue

        def heartbeat() -> None:
            client = redis.Redis.from_url(redis_url)
            while not stop.wait(0.5):
                client.zadd(live_workers(queue), {"stand-in": time.time()})
                client.ltrim(queue, 0, 200)  # nobody consumes: keep the queue short

        beating = threading.Thread(target=heartbeat, daemon=True)
        beating.start()
        try:
            fleet.start_gateway()
            yield fleet
        finally:
            stop.set()
            fleet.stop()


def _mutated(rng: random.Random, method: str) -> bytes:
    """A structure-aware mutation of a valid request, or raw corruption of its bytes."""
    request = METHODS[method]()
    model = rng.choice([QUEUED, UNSERVED, "", "x" * 200, rng.choice(NASTY_TEXT)[:40]])
    if hasattr(request, "model"):
        request.model = model
    if hasattr(request, "prompt") and method != "PreviewPrompt":
        request.prompt = rng.choice(NASTY_TEXT + ["def f():"])
    if hasattr(request, "prefix"):
        request.prefix, request.suffix = rng.choice(NASTY_TEXT), rng.choice(NASTY_TEXT)
        request.order = rng.choice([0, 1, 2, 7, -3])
    if hasattr(request, "messages"):
        for _ in range(rng.choice([0, 1, 2, 300])):
            request.messages.add(role=rng.choice([0, 1, 2, 3, 99]),
                                 content=rng.choice(NASTY_TEXT)[:500])
    if method == "PreviewPrompt":
        request.model = model
        request.prompt = rng.choice(NASTY_TEXT)
    if hasattr(request, "sampling"):
        s = request.sampling
        for name in ("temperature", "top_p", "repetition_penalty"):
            if rng.random() < 0.3:
                setattr(s, name, rng.choice(NASTY_FLOATS))
        for name in ("max_tokens", "top_k", "n", "logprobs"):
            if rng.random() < 0.3:
                setattr(s, name, rng.choice(NASTY_INTS[:4]))
        if rng.random() < 0.2:
            s.seed = rng.choice(NASTY_INTS)
        if rng.random() < 0.2:
            s.stop_sequences.extend(rng.choice(NASTY_TEXT)[:80] for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.1:
            s.ignore_eos = True
    if hasattr(request, "options"):
        request.options.request_id = rng.choice(["", "ok-id", "has space", "x" * 200, "é"])
        request.options.routing_key = rng.choice(["", "k", "r" * 300])
        request.options.priority = rng.choice([0, 1, 2, 3, 4, -1])
    data = bytearray(request.SerializeToString())
    roll = rng.random()
    if roll < 0.25 and data:  # flip bytes
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif roll < 0.35:  # truncate
        data = data[:rng.randrange(len(data) + 1)]
    elif roll < 0.45:  # random garbage
        data = bytearray(rng.randbytes(rng.randint(0, 64)))
    elif roll < 0.5:  # a valid-looking field with invalid UTF-8
        data += b"\x12\x02\xff\xfe"
    return bytes(data)


async def _fire(target: str, count: int, seed: int) -> Counter[str]:
    rng = random.Random(seed)
    statuses: Counter[str] = Counter()
    identity = lambda data: data
    async with grpc.aio.insecure_channel(target) as channel:
        calls = {name: (channel.unary_stream if name in STREAMING else channel.unary_unary)(
            SERVICE + name, request_serializer=identity, response_deserializer=identity)
            for name in METHODS}
        plan = [(name, _mutated(rng, name)) for name in rng.choices(list(METHODS), k=count)]
        cursor = iter(plan)

        async def client() -> None:
            for name, data in cursor:
                try:
                    call = calls[name](data, timeout=0.5)
                    if name in STREAMING:
                        async for _ in call:
                            pass
                    else:
                        await call
                    statuses["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    statuses[exc.code().name] += 1
                    if exc.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                        statuses[f"{exc.code().name}: {name}: {exc.details()[:120]}"] += 1

        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return statuses


def _usage(pid: int) -> tuple[int, int]:
    """(resident memory in KiB, open file descriptors) of a process."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
               .splitlines() if line.startswith("VmRSS:"))
    return rss, len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_fuzzed_requests_get_actionable_statuses_and_leave_the_gateway_healthy(
        gateway: Fleet) -> None:
    assert gateway.gateway is not None
    pid = gateway.gateway.process.pid
    asyncio.run(_fire(gateway.target, 1000, seed=1))  # warm-up: caches, tokenizers, pools
    rss_before, fds_before = _usage(pid)
    statuses = asyncio.run(_fire(gateway.target, REQUESTS, seed=2))
    time.sleep(1.0)
    rss_after, fds_after = _usage(pid)
    bad = {k: v for k, v in statuses.items() if k.startswith(("INTERNAL", "UNKNOWN"))}
    assert not bad, bad
    assert sum(v for k, v in statuses.items() if ":" not in k) == REQUESTS
    assert statuses["INVALID_ARGUMENT"] > REQUESTS // 4, statuses
    assert rss_after - rss_before < 64 * 1024, (rss_before, rss_after, statuses)
    assert fds_after - fds_before < 16, (fds_before, fds_after)
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(gateway.target)).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    print("fuzz statuses:", dict(statuses), "rss KiB", rss_before, "->", rss_after,
          "fds", fds_before, "->", fds_after)
