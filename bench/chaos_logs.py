"""What the gateway's log says about re-runs: for each (request id, attempt) it re-published,
the reason it gave and when (the gateway logs `request <scope>: <reason>; re-running it as
attempt N` at WARNING)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

_RERUN = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) WARNING gateway\.dispatch: "
                    r"request (\S+): (.*); re-running it as attempt (\d+)$")


@dataclass(frozen=True)
class RerunCause:
    reason: str
    logged_unix: float

    @property
    def kind(self) -> str:
        if "stopped sending heartbeats" in self.reason:
            return "heartbeat-lost"
        if "no worker started it" in self.reason:
            return "unstarted-lost"
        return "worker-error"

    @property
    def worker(self) -> str:
        """The worker a heartbeat-lost reason names ("" otherwise)."""
        match = re.match(r"worker (\S+) stopped sending heartbeats", self.reason)
        return match.group(1) if match else ""


def rerun_causes(log_dir: Path) -> dict[tuple[str, int], RerunCause]:
    """(request id, attempt) -> why the gateway re-ran it, from every gateway log in `log_dir`.
    Log times are local time with millisecond resolution."""
    causes = {}
    for path in sorted(log_dir.glob("gateway-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            match = _RERUN.match(line)
            if match is None:
                continue
            stamp, scope, reason, attempt = match.groups()
            logged = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
            unix = time.mktime(logged.timetuple()) + logged.microsecond / 1e6
            causes[(scope.rsplit("/", 1)[-1], int(attempt))] = RerunCause(reason, unix)
    return causes
