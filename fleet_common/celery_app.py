"""The one place that builds a Celery app, for the gateway (publishing) and workers (consuming)."""

from __future__ import annotations

from celery import Celery
from kombu.serialization import disable_insecure_serializers

ACCEPTED_CONTENT = ["json"]


def make_celery_app(broker_url: str, *, visibility_timeout_s: int) -> Celery:
    """A Celery app with the delivery guarantees the fleet relies on.

    Late acks and reject-on-worker-lost return a task to its queue when the worker dies, and
    prefetch 1 keeps one worker from hoarding messages another could run. The Redis visibility
    timeout must exceed the longest request deadline, or a slow request would be delivered twice.
    Results travel through per-request Redis Streams, not Celery's result backend.

    JSON only, twice over: the app accepts nothing else, and kombu's decoder registry is locked
    to JSON for the whole process, so even a decode that names no accept list (kombu only
    refuses pickle there while nothing has re-enabled it) never unpickles a message.
    """
    disable_insecure_serializers(ACCEPTED_CONTENT)
    app = Celery("codellama_fleet", broker=broker_url, set_as_current=False)
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
        broker_transport_options={"visibility_timeout": visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_enable_remote_control=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app
