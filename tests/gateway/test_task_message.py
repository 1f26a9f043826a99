"""The gateway's hand-built task message matches what Celery itself publishes, and a real
Celery worker runs it."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import redis

from fleet_common.celery_app import make_celery_app
from fleet_common.keys import GENERATE_TASK
from fleet_common.task_message import task_message


def _decode(raw: bytes) -> tuple[dict, list]:
    message = json.loads(raw)
    return message, json.loads(base64.b64decode(message["body"]))


def test_message_has_celerys_shape(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    queue = "fleet.test.shape.v1"
    expires = time.time() + 60
    app = make_celery_app(redis_url, visibility_timeout_s=3600)
    app.send_task(GENERATE_TASK, args=({"x": [1, 2]},), queue=queue, task_id="celery-id",
                  expires=datetime.fromtimestamp(expires, tz=UTC))
    theirs, their_body = _decode(client.rpop(queue))
    ours, our_body = _decode(task_message(GENERATE_TASK, "celery-id", ({"x": [1, 2]},), queue,
                                          expires_unix=expires, now_unix=time.time()))
    assert our_body == their_body
    assert set(ours) == set(theirs)
    assert set(ours["headers"]) == set(theirs["headers"])
    assert set(ours["properties"]) == set(theirs["properties"])
    for key in ("lang", "task", "id", "root_id", "retries", "timelimit", "eta", "expires"):
        assert ours["headers"][key] == theirs["headers"][key], key
    for key in ("correlation_id", "delivery_mode", "delivery_info", "priority", "body_encoding"):
        assert ours["properties"][key] == theirs["properties"][key], key
    assert ours["content-type"] == theirs["content-type"] == "application/json"
