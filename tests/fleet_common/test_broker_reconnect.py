"""A worker's broker connection comes back within about a second of Redis, however long Redis
was gone, and never gives up (kombu's default waits 2, 4, 6 ... 30 s between tries; Celery's
gives up after 100 tries and the worker exits)."""

from __future__ import annotations

import threading
import time

import pytest

from fleet_cli.processes import free_port
from fleet_common.celery_app import make_celery_app
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)
REDIS_AWAY_S = 2.5  # past kombu's first default retry (2 s), before its second (6 s)


def test_the_consumer_connection_retries_every_second_at_most_and_for_ever(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis-logs"))
    app = make_celery_app(server.url, visibility_timeout_s=60)
    assert app.conf.broker_connection_max_retries is None
    intervals: list[float] = []
    started_at: list[float] = []

    def start_redis_later() -> None:
        time.sleep(REDIS_AWAY_S)
        server.start()
        started_at.append(time.monotonic())

    starter = threading.Thread(target=start_redis_later)
    starter.start()
    connection = app.connection_for_read()
    try:
        # As Celery's consumer calls it (celery.worker.consumer.Consumer.ensure_connected).
        connection.ensure_connection(lambda exc, interval: intervals.append(interval),
                                     app.conf.broker_connection_max_retries)
        connected_at = time.monotonic()
        starter.join()
        assert intervals and max(intervals) <= 1.0, intervals
        assert connected_at - started_at[0] < 1.5
    finally:
        starter.join()
        connection.release()
        server.stop()
