"""py-spy sampling of running processes, and a summary of where their CPU time went.

`PySpy.start(pid, out)` runs `py-spy record --format raw --threads --gil` (folded stacks,
which flamegraph.pl or speedscope.app render) until `stop()`. With `--gil` only the thread
holding the GIL is sampled, so the samples are the process's Python CPU time (threads blocked
in `Future.result()` or an idle executor would otherwise look busy); native work done without
the GIL (gRPC's C core, socket I/O) is not in them. `summarize(path)` counts the samples per
thread, per function (self and inclusive), and per package of the innermost frame that belongs
to a known package.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

#: (package label, substring of a frame's file path), innermost match wins; order breaks ties
#: within one frame. Paths as py-spy prints them (relative to site-packages or the repo).
PACKAGES: tuple[tuple[str, str], ...] = (
    ("redis-py (client, protocol, connection pool)", "redis/"),
    ("celery", "celery/"),
    ("kombu (Celery transport)", "kombu/"),
    ("json", "json/"),
    ("grpc (python layer)", "grpc/"),
    ("grpc aio (cython)", "grpc/_cython"),
    ("protobuf", "google/protobuf"),
    ("vllm", "vllm/"),
    ("zmq / msgspec (engine IPC)", "zmq/"),
    ("transformers / tokenizers", "transformers/"),
    ("tokenizers", "tokenizers/"),
    ("fleet gateway", "gateway/"),
    ("fleet workers", "workers/"),
    ("fleet_common", "fleet_common/"),
    ("prompting", "prompting/"),
    ("logging", "logging/"),
    ("threading / queue", "threading.py"),
    ("threading / queue", "queue.py"),
    ("concurrent.futures", "concurrent/futures"),
    ("asyncio", "asyncio/"),
    ("uuid", "uuid.py"),
    ("socket", "socket.py"),
)


#: Packages that sit under everything (thread bootstrap, event loop): they only count for
#: samples whose innermost frame is theirs.
SCAFFOLDING = frozenset({"threading / queue", "asyncio", "concurrent.futures"})


def py_spy_binary() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


@dataclass
class PySpy:
    process: subprocess.Popen[bytes]
    out: Path
    log: Path

    @staticmethod
    def start(pid: int, out: Path, rate: int = 100) -> PySpy:
        binary = py_spy_binary()
        if binary is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        out.parent.mkdir(parents=True, exist_ok=True)
        log = out.with_suffix(".log")
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                [binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                 "--threads", "--gil", "--output", str(out)],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return PySpy(proc, out, log)

    def stop(self, timeout: float = 30.0) -> bool:
        """Ends sampling (py-spy writes its file on SIGINT); True when the file exists."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.out.exists()


def _parse(line: str) -> tuple[str, list[str], int] | None:
    line = line.rstrip("\n")
    if not line:
        return None
    stack, _, count = line.rpartition(" ")
    frames = stack.split(";")
    if len(frames) < 1 or not count.isdigit():
        return None
    thread = frames[0]
    if thread.startswith("thread (") and len(frames) > 1:
        # "thread (tid): name" then frames; keep the thread's name only
        name = thread.split(": ", 1)[1] if ": " in thread else thread
        return name, frames[1:], int(count)
    return "?", frames, int(count)


def _function(frame: str) -> tuple[str, str]:
    """(function label without line number, file) of a folded frame."""
    match = _FRAME.match(frame)
    if not match:
        return frame, ""
    return f"{match['func']} ({match['file']})", match["file"]


def _thread_group(name: str) -> str:
    """Thread names with counters folded ("ThreadPoolExecutor-0_3" -> "ThreadPoolExecutor")."""
    return re.sub(r"[-_]?\d+(_\d+)?$", "", name) or name


def package_of(file: str) -> str | None:
    """Label of the most specific known package whose path appears in `file`."""
    matches = [(len(needle), label) for label, needle in PACKAGES if needle in file]
    return max(matches)[1] if matches else None


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        parsed = _parse(line)
        if parsed is None:
            continue
        thread, frames, count = parsed
        total += count
        threads[_thread_group(thread)] += count
        functions = [_function(f) for f in frames]
        if functions:
            own[functions[-1][0]] += count
        for label in {f for f, _ in functions}:
            inclusive[label] += count
        package = "other (own code / interpreter)"
        for depth, (_, file) in enumerate(reversed(functions)):
            found = package_of(file)
            if found and (depth == 0 or found not in SCAFFOLDING):
                package = found
                break
        packages[package] += count

    def share(counter: Counter[str], n: int | None = None) -> list[dict[str, Any]]:
        return [{"name": k, "samples": v, "share": v / total if total else 0.0}
                for k, v in counter.most_common(n)]

    return {"samples": total, "threads": share(threads), "self": share(own, top),
            "inclusive": share(inclusive, top), "packages": share(packages)}
