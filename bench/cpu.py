"""CPU time of the processes under test, read from /proc (Linux).

A component is a process, optionally with all its descendants (the engine core is a child of
the process that built the engine). The orchestrator snapshots every component at the start
and end of each phase; the difference is the CPU seconds that component spent on the phase.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_full(pid: int) -> tuple[int, float, str] | None:
    """(parent pid, user+system seconds, command name) of `pid`, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    comm = data[data.index("(") + 1:data.rindex(")")]
    fields = data[data.rindex(")") + 2:].split()
    ppid = int(fields[1])
    utime, stime = int(fields[11]), int(fields[12])
    return ppid, (utime + stime) / _TICKS, comm


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user+system seconds) of `pid`, None when it is gone."""
    full = _stat_full(pid)
    return None if full is None else (full[0], full[1])


def _all_parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None:
                parents[int(name)] = stat[0]
    return parents


def descendants(pid: int, parents: Mapping[int, int] | None = None) -> list[int]:
    parents = _all_parents() if parents is None else parents
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.append(child)
            stack.append(child)
    return found


@dataclass(frozen=True)
class Component:
    """A process (`pid`), counting its own time, its descendants' time, or both."""

    pid: int
    own: bool = True
    children: bool = False
    #: Only descendants whose command name starts with one of these (e.g. vLLM's process
    #: titles "VLLM::EngineCore", "VLLM::Worker"); empty: every descendant.
    names: tuple[str, ...] = ()


def snapshot(components: Mapping[str, Component]) -> dict[str, float]:
    """CPU seconds used so far by each component (live processes only)."""
    parents = _all_parents() if any(c.children for c in components.values()) else {}
    result: dict[str, float] = {}
    for name, comp in components.items():
        total = 0.0
        if comp.own:
            stat = _stat_full(comp.pid)
            total += stat[1] if stat else 0.0
        if comp.children:
            for pid in descendants(comp.pid, parents):
                stat = _stat_full(pid)
                if stat is not None and (not comp.names or stat[2].startswith(comp.names)):
                    total += stat[1]
        result[name] = total
    result[SYSTEM] = system_busy_s()
    return result


def difference(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    return {name: max(0.0, after[name] - before.get(name, 0.0)) for name in after}


#: Name of the pseudo-component with the whole machine's busy CPU time (see `snapshot`).
SYSTEM = "_system"


def system_busy_s() -> float:
    """Busy CPU seconds of the whole machine (all cores) since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (no guest)
    return (total - idle) / _TICKS


def others(used: Mapping[str, float]) -> dict[str, float]:
    """`used` with the system total replaced by what processes outside the components took."""
    out = {k: v for k, v in used.items() if k != SYSTEM}
    if SYSTEM in used:
        out["other processes"] = max(0.0, used[SYSTEM] - sum(out.values()))
    return out


class Quietness:
    """Measures how busy processes *outside* `components` keep the machine."""

    def __init__(self, components: Mapping[str, Component]) -> None:
        self._components = dict(components)

    def mark(self) -> tuple[float, dict[str, float]]:
        return time.monotonic(), snapshot(self._components)

    def other_cores_since(self, mark: tuple[float, dict[str, float]]) -> float:
        """Average cores used by other processes since `mark`."""
        t0, before = mark
        used = others(difference(snapshot(self._components), before))
        elapsed = time.monotonic() - t0
        return used.get("other processes", 0.0) / elapsed if elapsed > 0 else 0.0


def busy_cores(window_s: float) -> float:
    """Cores the whole machine kept busy on average over the next `window_s` seconds."""
    before, t0 = system_busy_s(), time.monotonic()
    time.sleep(window_s)
    return (system_busy_s() - before) / (time.monotonic() - t0)


def memory_available_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def process_cpu_s(pid: int) -> float:
    stat = _stat(pid)
    return stat[1] if stat else 0.0
