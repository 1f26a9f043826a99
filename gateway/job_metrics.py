"""The gateway's Prometheus metrics of batch jobs: items ended and webhook deliveries."""

from __future__ import annotations

from prometheus_client import Counter

JOB_ITEMS = Counter("fleet_job_items", "Job items this gateway ended, by the state they ended "
                    "in (succeeded, failed, cancelled).", ["state"])
WEBHOOK_DELIVERIES = Counter("fleet_webhook_deliveries", "Webhook delivery attempts, by "
                             "outcome (delivered, retry, gave_up).", ["outcome"])


def count_item_end(state: str) -> None:
    JOB_ITEMS.labels(state=state).inc()


def count_webhook_delivery(outcome: str) -> None:
    WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()
