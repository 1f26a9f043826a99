"""The real RegistryService (what `python -m model_registry` serves) on a thread of the test
process, so a test can stop it and start it again on the same port."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Self

from model_registry.__main__ import RegistrySettings, serve

START_TIMEOUT_S = 30.0


class InProcessRegistry:
    def __init__(self, registry_url: str, work_dir: Path, *, auth: str = "off") -> None:
        """`auth`: FLEET_REGISTRY_AUTH, "off" unless a test is about authentication."""
        self._registry_url = registry_url
        self._work_dir = work_dir
        self._auth = auth
        self._starts = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._serving: Future[None] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> Self:
        """Serves on `port` (a free one when 0) and returns once it listens."""
        self._starts += 1
        port_file = self._work_dir / f"registry-{self._starts}.port"
        settings = RegistrySettings(
            registry_url=self._registry_url, registry_host="127.0.0.1", registry_port=port,
            registry_port_file=str(port_file),
            checkpoint_root=str(self._work_dir / "checkpoints"), registry_auth=self._auth,
            # Not about usage: it must not consume the usage stream of whatever Redis answers
            # at the default URL.
            usage_accounting=False)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="in-process-registry",
                                        daemon=True)
        self._thread.start()
        self._stop = asyncio.Event()
        self._serving = asyncio.run_coroutine_threadsafe(serve(settings, self._stop), self._loop)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_file.exists():
            if self._serving.done():
                self._serving.result()  # raises why it stopped
                raise RuntimeError("in-process registry stopped before it listened")
            if time.monotonic() > deadline:
                raise TimeoutError("in-process registry did not listen in time")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        return self

    def stop(self) -> None:
        """Stops serving (the port refuses connections afterwards)."""
        if self._loop is None or self._thread is None or self._stop is None \
                or self._serving is None:
            return
        loop, thread, serving = self._loop, self._thread, self._serving
        self._loop = None
        loop.call_soon_threadsafe(self._stop.set)
        try:
            serving.result(START_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(START_TIMEOUT_S)
            loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
