"""The one place that builds a Celery app, for the gateway (publishing) and workers (consuming)."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.app.amqp import AMQP
from kombu import Connection
from kombu.serialization import disable_insecure_serializers

ACCEPTED_CONTENT = ["json"]
#: A consumer that lost Redis tries again after 0.25 s, then 0.5, 0.75 and every second, for
#: ever: kombu's default (2, 4, 6 ... 30 s) would leave a worker idle for up to 30 s after
#: Redis is back, while its heartbeat (another client) already tells gateways it is live.
RECONNECT_INTERVALS_S = {"interval_start": 0.25, "interval_step": 0.25, "interval_max": 1.0}
#: kombu's Redis transport, for a Redis that vanishes without closing the TCP connection
#: (failover, NAT, partition): a blocking command fails after `socket_timeout` instead of
#: waiting for ever, and a BRPOP left without a reply is dropped within about
#: brpop_timeout (1 s) + 2 x `health_check_interval` (kombu's half-open connection check).
REDIS_TRANSPORT_OPTIONS: dict[str, Any] = {
    "socket_timeout": 10.0,
    "socket_connect_timeout": 5.0,
    "socket_keepalive": True,
    "health_check_interval": 5,
}


class PromptlyReconnecting(Connection):
    """kombu's Connection with the fleet's reconnect intervals wherever the caller names none
    (Celery's consumer names none)."""

    def ensure_connection(self, *args: Any, **kwargs: Any) -> Connection:
        for name, value in RECONNECT_INTERVALS_S.items():
            kwargs.setdefault(name, value)
        return super().ensure_connection(*args, **kwargs)


class FleetAMQP(AMQP):
    Connection = PromptlyReconnecting


def make_celery_app(broker_url: str, *, visibility_timeout_s: int) -> Celery:
    """A Celery app with the delivery guarantees the fleet relies on.

    Late acks and reject-on-worker-lost return a task to its queue when the worker dies, and
    prefetch 1 keeps one worker from hoarding messages another could run. The Redis visibility
    timeout must exceed the longest request deadline, or a slow request would be delivered twice.
    Results travel through per-request Redis Streams, not Celery's result backend.

    A worker outlives any Redis outage: it reconnects for ever (`broker_connection_max_retries`
    None; Celery's default gives up after 100 tries, about 45 minutes, and the worker exits),
    every second at most (`PromptlyReconnecting`).

    JSON only, twice over: the app accepts nothing else, and kombu's decoder registry is locked
    to JSON for the whole process, so even a decode that names no accept list (kombu only
    refuses pickle there while nothing has re-enabled it) never unpickles a message.
    """
    disable_insecure_serializers(ACCEPTED_CONTENT)
    app = Celery("codellama_fleet", broker=broker_url, set_as_current=False, amqp=FleetAMQP)
    app.conf.update(
        task_serializer="json",
        accept_content=ACCEPTED_CONTENT,
        result_accept_content=ACCEPTED_CONTENT,
        event_serializer="json",
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="fleet.unrouted",
        broker_transport_options={"visibility_timeout": visibility_timeout_s,
                                  **REDIS_TRANSPORT_OPTIONS},
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_enable_remote_control=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app
