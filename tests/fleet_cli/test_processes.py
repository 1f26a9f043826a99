"""Stopping a managed process (SIGTERM to it alone, then SIGKILL to its group), `fleet up`
restarting a worker that exits, with its backoff, and the free ports handed to the processes
it starts."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from fleet_cli.launcher import BACKOFF_MAX_S, STABLE_RUN_S, RestartingWorker
from fleet_cli.processes import ManagedProcess, free_port, spawn

pytestmark = pytest.mark.timeout(60)

# A leader with a child in its process group, like a worker and vLLM's engine core. The child
# notes a SIGTERM; the leader, on its SIGTERM, notes whether the child is still alive and
# exits 0 (a drain), or ignores SIGTERM when told to.
FAMILY = r"""
import os, signal, subprocess, sys, time
notes = open(sys.argv[1], "a", buffering=1)
child = subprocess.Popen([sys.executable, "-c", '''
import signal, sys, time
notes = open(sys.argv[1], "a", buffering=1)
signal.signal(signal.SIGTERM, lambda *_: notes.write("child got SIGTERM\\n"))
notes.write("child ready\\n")
while True:
    time.sleep(0.05)
''', sys.argv[1]])
def on_term(*_):
    time.sleep(0.3)
    notes.write(f"leader got SIGTERM; child alive: {child.poll() is None}\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if sys.argv[2] == "ignore" else on_term)
notes.write(f"child pid {child.pid}\n")
while True:
    time.sleep(0.05)
"""


def _family(tmp_path: Path, on_term: str) -> tuple[ManagedProcess, Path]:
    notes = tmp_path / "notes.txt"
    notes.touch()
    process = spawn("family", [sys.executable, "-c", FAMILY, str(notes), on_term], tmp_path)
    deadline = time.monotonic() + 20
    while "child ready" not in notes.read_text():
        assert time.monotonic() < deadline and process.alive(), process.log_tail()
        time.sleep(0.05)
    return process, notes


def _pid_alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return status != "Z"


def test_stop_sends_sigterm_to_the_process_alone_then_kills_what_it_left(tmp_path: Path) -> None:
    process, notes = _family(tmp_path, on_term="exit")
    child = int(notes.read_text().split("child pid ")[1].split()[0])
    process.stop(timeout=20)
    text = notes.read_text()
    assert "leader got SIGTERM; child alive: True" in text, text
    assert "child got SIGTERM" not in text, "the group got SIGTERM, not the process alone"
    assert process.process.returncode == 0
    deadline = time.monotonic() + 5
    while _pid_alive(child):
        assert time.monotonic() < deadline, "the leftover child was not killed"
        time.sleep(0.05)


def test_stop_kills_the_group_when_the_process_outlives_its_timeout(tmp_path: Path) -> None:
    process, _ = _family(tmp_path, on_term="ignore")
    started = time.monotonic()
    process.stop(timeout=1)
    assert 1 <= time.monotonic() - started < 10
    assert process.process.returncode == -9


def test_a_worker_that_exits_is_restarted_with_a_bounded_backoff(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture
                                                                  ) -> None:
    spawned: list[ManagedProcess] = []

    def crash() -> ManagedProcess:
        spawned.append(spawn("worker-x", [sys.executable, "-c", "raise SystemExit(7)"],
                             tmp_path))
        spawned[-1].process.wait(timeout=20)
        return spawned[-1]

    worker = RestartingWorker(spawn=crash, process=crash(), started_at=0.0)
    now, delays = 0.0, []
    for _ in range(8):
        worker.poll(now)
        assert worker.restart_at is not None
        delays.append(worker.restart_at - now)
        worker.poll(worker.restart_at - 0.1)
        assert worker.restart_at is not None, "restarted before its backoff passed"
        now = worker.restart_at
        worker.poll(now)
        assert worker.restart_at is None and worker.started_at == now
    assert delays == [1, 2, 4, 8, 16, BACKOFF_MAX_S, BACKOFF_MAX_S, BACKOFF_MAX_S]
    assert len(spawned) == 9
    assert "exited with code 7; restarting it in 1 s" in capsys.readouterr().err

    now += STABLE_RUN_S  # a long run: the next exit is restarted after the first delay again
    worker.poll(now)
    assert worker.restart_at == now + 1


def test_a_restarted_worker_is_ready_only_after_its_own_first_heartbeat(
        tmp_path: Path, redis_url: str) -> None:
    """A killed worker's last heartbeat stays in the live set under its name: waiting for the
    restarted one must not take that stale beat for the new process being ready."""
    import redis

    from fleet_cli.processes import wait_for_heartbeat
    from fleet_common.keys import live_workers

    client = redis.Redis.from_url(redis_url)
    client.zadd(live_workers("q"), {"w": time.time() - 30})  # the dead predecessor's last beat
    proc = spawn("w", [sys.executable, "-c", "import time; time.sleep(30)"], tmp_path)
    try:
        with pytest.raises(TimeoutError):
            wait_for_heartbeat(proc, redis_url=redis_url, queue="q", worker="w", timeout=1.0)
        client.zadd(live_workers("q"), {"w": time.time()})
        wait_for_heartbeat(proc, redis_url=redis_url, queue="q", worker="w", timeout=5.0)
    finally:
        proc.stop(timeout=2)


def test_a_free_port_is_never_one_the_kernel_hands_to_a_port_zero_bind() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    handed = [free_port() for _ in range(50)]
    assert len(set(handed)) == len(handed), "a port was handed out twice"
    # What a gateway started with --port 0 binds while those ports still wait for their owners.
    kernel_chosen = []
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            kernel_chosen.append(sock.getsockname()[1])
    assert all(port < low for port in handed), (low, handed)
    assert not set(handed) & set(kernel_chosen)
    for port in handed[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # each is free for the process it is meant for
