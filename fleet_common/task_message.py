"""Celery task messages (protocol 2, JSON body) for the Redis transport, built without Celery.

`Celery.send_task` costs about 1 ms of CPU per call on these machines (kombu's producer,
connection pool and routing); the gateway instead builds the same message and LPUSHes it on
the queue's Redis list, where the workers' Celery consumers take it like any other. A test
compares this message with the one Celery builds, so a Celery upgrade cannot silently break it.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Any

_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"
FAIR_TAKE_TASK = "fleet.take"
_TICKET_TTL_S = 86400  # tickets are fungible: any one left over takes the next request


def task_message(task_name: str, task_id: str, args: tuple[Any, ...], queue: str, *,
                 expires_unix: float, now_unix: float) -> bytes:
    """The JSON a kombu Redis producer would LPUSH for `send_task(..., queue=queue)`."""
    body = json.dumps([list(args), {}, {"callbacks": None, "errbacks": None, "chain": None,
                                        "chord": None}], separators=(",", ":"))
    expires = datetime.fromtimestamp(expires_unix, tz=UTC).isoformat()
    message = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": task_name, "id": task_id, "shadow": None, "eta": None,
            "expires": expires, "group": None, "group_index": None, "retries": 0,
            "timelimit": [None, None], "root_id": task_id, "parent_id": None,
            "argsrepr": f"<{len(body)} bytes>", "kwargsrepr": "{}", "origin": _ORIGIN,
            "ignore_result": True, "replaced_task_nesting": 0, "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "expiration": str(max(0, int((expires_unix - now_unix) * 1000))),
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(message, separators=(",", ":")).encode()


def ticket_message(queue: str, ticket_id: str) -> bytes:
    """A Celery message of the take task: whichever worker runs it takes `queue`'s next request
    in priority and fair order (`fleet_common.fair_queue`)."""
    now = time.time()
    return task_message(FAIR_TAKE_TASK, ticket_id, (), queue, expires_unix=now + _TICKET_TTL_S,
                        now_unix=now)
