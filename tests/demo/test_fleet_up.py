"""`fleet up`, the README's demo command, as a user runs it: from an empty state directory it
prepares the demo model, starts its own redis-server (none answers at the URL given), the
registry, a worker and a gateway; `fleet models` and `fleet chat` work against it; SIGTERM
stops it all in drain order and it exits 0, leaving no Redis behind."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from fleet_cli.processes import free_port

pytestmark = pytest.mark.timeout(900)
FLEET = str(Path(sys.executable).with_name("fleet"))
MODEL = "smollm2-135m-instruct"


class _Output:
    """The process's output, read line by line on a thread (a select() on a buffered text pipe
    misses lines already read into the buffer)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(process,), daemon=True).start()

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, marker: str, timeout_s: float) -> str:
        """What the process printed up to and including the line holding `marker`."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError("fleet up exited:\n" + "".join(self.seen))
            self.seen.append(line)
            if marker in line:
                return "".join(self.seen)
        raise AssertionError(f"no {marker!r} within {timeout_s:.0f} s:\n" + "".join(self.seen))

    def rest(self, timeout_s: float) -> str:
        """Everything else it prints until it closes its output."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            line = self.lines.get(timeout=left)
            if line is None:
                return "".join(self.seen)
            self.seen.append(line)
        raise AssertionError("fleet up did not exit:\n" + "".join(self.seen))


def test_fleet_up_serves_the_demo_model_and_stops_cleanly(tmp_path: Path) -> None:
    redis_port, port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    process = subprocess.Popen(
        [FLEET, "up", "--state-dir", str(tmp_path / "var"), "--redis-url", redis_url,
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        output = _Output(process)
        printed = output.until("gateway on", timeout_s=600)
        assert f"starting redis-server on port {redis_port}" in printed
        target = f"127.0.0.1:{port}"
        models = subprocess.run([FLEET, "models", "--target", target], capture_output=True,
                                check=False, text=True, timeout=60)
        assert models.returncode == 0 and MODEL in models.stdout, models
        chat = subprocess.run([FLEET, "chat", "--target", target, "-m", MODEL,
                               "--max-tokens", "8", "Say hi."],
                              capture_output=True, check=False, text=True, timeout=120)
        assert chat.returncode == 0, chat
        assert "smollm2-135m-instruct" in chat.stdout + chat.stderr, chat
        process.send_signal(signal.SIGTERM)
        rest = output.rest(timeout_s=180)
        assert process.wait(timeout=30) == 0, rest
        assert "stopping the fleet" in rest
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(redis_url, socket_connect_timeout=1).ping()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
