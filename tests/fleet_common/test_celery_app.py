"""The fleet's Celery app deserializes JSON and nothing else, wherever a message is decoded."""

from __future__ import annotations

import pickle

import pytest
from kombu.exceptions import ContentDisallowed
from kombu.serialization import enable_insecure_serializers, loads, prepare_accept_content

from fleet_common.celery_app import make_celery_app


def test_only_json_is_accepted_even_after_pickle_was_enabled() -> None:
    enable_insecure_serializers()  # as some other library in the process might
    app = make_celery_app("redis://127.0.0.1:1/0", visibility_timeout_s=60)
    assert app.conf.task_serializer == app.conf.result_serializer == "json"
    assert app.conf.event_serializer == "json"
    assert app.conf.accept_content == app.conf.result_accept_content == ["json"]
    payload = pickle.dumps(((), {}, {}))
    # What a worker does with a task body: decode against the app's accept list ...
    with pytest.raises(ContentDisallowed):
        loads(payload, "application/x-python-serialize", "binary",
              accept=prepare_accept_content(app.conf.accept_content))
    # ... and a decode that names no accept list is refused too.
    for content_type in ("application/x-python-serialize", "application/x-yaml",
                         "application/x-msgpack"):
        with pytest.raises(ContentDisallowed):
            loads(payload, content_type, "binary")
    assert loads(b'[[1], {}, {}]', "application/json", "utf-8") == [[1], {}, {}]
