"""Celery task adapters: decode the payload, hand it to the runtime. No logic lives here."""

from __future__ import annotations

from typing import Any

from celery import Celery

from fleet_common.fair_queue import FAIR_TAKE_TASK
from fleet_common.keys import GENERATE_TASK
from fleet_common.wire import task_from_json
from workers.runtime import WorkerRuntime


def register_tasks(app: Celery, runtime: WorkerRuntime) -> None:
    @app.task(name=GENERATE_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def generate(task: dict[str, Any]) -> None:
        """A request in the message itself, as gateways before the fair waiting lines sent."""
        runtime.serve(task_from_json(task))

    @app.task(name=FAIR_TAKE_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def take() -> None:
        runtime.take_and_serve()
