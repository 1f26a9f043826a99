"""The registry's consumer of the gateways' usage stream (`keys.USAGE_STREAM`).

Every registry replica joins one Redis consumer group, so each entry goes to one of them. An
entry is acknowledged (and deleted: the stream is the registry's alone) only after its batch is
committed to the database. A replica that dies in between leaves the entry pending; any
replica claims entries pending longer than `claim_idle_s` (XAUTOCLAIM) and applies them, and the
database applies a batch id only once (`UsageStore.apply`), so the entry counts exactly once
whether the dead replica committed it or not.

Redis down, or the database: the consumer logs once, retries every few seconds, and takes up
where it stopped; nothing is acknowledged unapplied.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from sqlalchemy.exc import SQLAlchemyError

from fleet_common.keys import USAGE_STREAM
from fleet_common.usage_events import MalformedBatch, UsageBatch, batch_from_fields
from model_registry.usage import UsageStore

log = logging.getLogger(__name__)
GROUP = "registry"
MAINTENANCE_INTERVAL_S = 3600.0
#: A consumer (a registry process that ended) with nothing pending and idle this long is removed.
DEAD_CONSUMER_IDLE_MS = 3_600_000
Entry = tuple[bytes, dict[bytes, bytes]]


class UsageConsumer:
    def __init__(self, redis_url: str, store: UsageStore, *, claim_idle_s: float = 30.0,
                 block_ms: int = 1000, count: int = 200, name: str | None = None,
                 stream: str = USAGE_STREAM, group: str = GROUP) -> None:
        self._redis = Redis.from_url(redis_url, socket_timeout=block_ms / 1000 + 5,
                                     socket_connect_timeout=2.0)
        self._store = store
        self._claim_idle_ms = int(claim_idle_s * 1000)
        self._block_ms = block_ms
        self._count = count
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._stream = stream
        self._group = group
        self._group_ready = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run_forever(), name="usage-consumer")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # redis-py can swallow a cancel that lands inside a blocking read; do not wait long.
            await asyncio.wait({self._task}, timeout=self._block_ms / 1000 + 1)
        await self._redis.aclose()

    async def run_forever(self) -> None:
        failing = False
        next_claim = next_maintenance = 0.0
        while True:
            try:
                now = time.monotonic()
                if now >= next_claim:
                    next_claim = now + self._claim_idle_ms / 4000
                    await self.process(await self.claim_stale())
                if now >= next_maintenance:
                    next_maintenance = now + MAINTENANCE_INTERVAL_S
                    await self.maintain()
                await self.process(await self.read_new())
                if failing:
                    log.info("usage: consuming %s again", self._stream)
                    failing = False
            except (RedisError, OSError, SQLAlchemyError) as exc:
                if not failing:
                    log.warning("usage: cannot consume %s (%s: %s); retrying every few seconds",
                                self._stream, type(exc).__name__, exc)
                failing = True
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    self._group_ready = False  # Redis lost the group (a restart without AOF)
                await asyncio.sleep(3.0)
            except Exception:  # a defect must not end accounting for the process's lifetime
                log.exception("usage: consuming %s failed; retrying", self._stream)
                await asyncio.sleep(3.0)

    async def ensure_group(self) -> None:
        """Creates the group (and the stream) if missing, reading from the stream's start so
        entries written before any registry ran are counted too."""
        if self._group_ready:
            return
        try:
            await self._redis.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def read_new(self) -> list[Entry]:
        """Entries never delivered to the group, waiting up to `block_ms` for some."""
        await self.ensure_group()
        reply = await self._redis.xreadgroup(self._group, self.name, {self._stream: ">"},
                                             count=self._count, block=self._block_ms)
        return [entry for _, entries in reply or () for entry in entries]

    async def claim_stale(self) -> list[Entry]:
        """Takes over entries another consumer (or this one) took and has not acknowledged for
        `claim_idle_s`; acknowledges those deleted meanwhile."""
        await self.ensure_group()
        taken: list[Entry] = []
        start = "0-0"
        while True:
            reply: Any = await self._redis.xautoclaim(self._stream, self._group, self.name,
                                                      self._claim_idle_ms, start_id=start,
                                                      count=self._count)
            start = reply[0]
            gone = [entry_id for entry_id, fields in reply[1]
                    if fields is None and entry_id is not None]
            if len(reply) > 2:
                gone += list(reply[2])
            taken += [(entry_id, fields) for entry_id, fields in reply[1] if fields is not None]
            if gone:
                await self._redis.xack(self._stream, self._group, *gone)
            if start in (b"0-0", "0-0") or len(taken) >= self._count:
                return taken

    async def process(self, entries: list[Entry]) -> int:
        """Applies the entries' batches (once each, in one transaction), then acknowledges and
        deletes the entries; returns how many batches were new to the database."""
        if not entries:
            return 0
        batches = await asyncio.to_thread(self._parse, entries)
        applied = await asyncio.to_thread(self._store.apply, batches) if batches else 0
        await self.acknowledge([entry_id for entry_id, _ in entries])
        return applied

    async def acknowledge(self, entry_ids: list[bytes]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self._stream, self._group, *entry_ids)
            pipe.xdel(self._stream, *entry_ids)
            await pipe.execute()

    def _parse(self, entries: list[Entry]) -> list[UsageBatch]:
        batches = []
        for entry_id, fields in entries:
            try:
                batches.append(batch_from_fields(fields))
            except MalformedBatch as exc:  # acknowledged with the rest: it can never apply
                log.error("usage: dropping stream entry %s: %s", entry_id.decode(), exc)
        return batches

    async def maintain(self) -> None:
        """Forgets old batch ids and removes consumers of registry processes that ended."""
        forgotten = await asyncio.to_thread(self._store.forget_batches)
        if forgotten:
            log.info("usage: forgot %d applied batch ids older than the retention", forgotten)
        await self.ensure_group()
        for consumer in await self._redis.xinfo_consumers(self._stream, self._group):
            name = consumer["name"]
            name = name.decode() if isinstance(name, bytes) else name
            if (name != self.name and not consumer["pending"]
                    and consumer["idle"] > DEAD_CONSUMER_IDLE_MS):
                await self._redis.xgroup_delconsumer(self._stream, self._group, name)
