"""The registry's read of which queues have a live worker: the heartbeats workers record in Redis
(`fleet_common.keys.live_workers`), judged by the same liveness window as the gateways'."""

from __future__ import annotations

import time

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from fleet_common.errors import Unavailable
from fleet_common.keys import live_workers

DEFAULT_TIMEOUT_S = 2.0


class WorkerLiveness:
    """Counts a queue's workers whose last heartbeat is at most `liveness_s` old."""

    def __init__(self, redis_url: str, liveness_s: float, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        # An operator waits on this read: one quick retry, not redis-py's backoff schedule.
        self._redis = Redis.from_url(redis_url, socket_timeout=timeout_s,
                                     socket_connect_timeout=timeout_s,
                                     retry=Retry(NoBackoff(), 1))
        self.liveness_s = liveness_s
        kwargs = self._redis.connection_pool.connection_kwargs
        # Where, for messages, without the URL's credentials.
        self._where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"

    def live_count(self, queue: str) -> int:
        """Live workers of `queue`; Unavailable when Redis does not answer."""
        try:
            return int(self._redis.zcount(live_workers(queue),
                                          time.time() - self.liveness_s, "+inf"))
        except (RedisError, OSError) as exc:
            raise Unavailable(f"Redis at {self._where} did not answer ({type(exc).__name__}: "
                              f"{exc})") from exc

    def close(self) -> None:
        self._redis.close()
