"""The progress display: a rich progress bar per phase, or plain lines when it is off."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any


class ProgressUI:
    def __init__(self, enabled: bool, total_phases: int) -> None:
        self._enabled = enabled
        self._progress: Any = None
        self._overall: Any = None
        self._status: Any = None
        self._phase: Any = None
        self._total_phases = total_phases
        self._started = time.monotonic()

    def __enter__(self) -> ProgressUI:
        if self._enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                SpinnerColumn(finished_text="[green]✓"), TextColumn("{task.description}"),
                BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=Console(stderr=True), refresh_per_second=4)
            self._progress.__enter__()
            self._overall = self._progress.add_task("[bold]benchmark phases",
                                                    total=self._total_phases)
            self._status = self._progress.add_task("", total=None)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)

    def log(self, message: str) -> None:
        stamp = f"[{time.monotonic() - self._started:7.1f}s]"
        if self._progress is not None:
            self._progress.console.log(message)
        else:
            print(f"{stamp} {message}", file=sys.stderr, flush=True)

    def step(self, message: str) -> None:
        """A start-up or tear-down step (no request count)."""
        if self._progress is not None:
            self._progress.update(self._status, description=f"[cyan]{message}")
        else:
            self.log(message)

    def phase_start(self, backend: str, phase: str, total: int, measured: bool) -> None:
        label = f"{backend} · {phase}" + ("" if measured else " (not measured)")
        if self._progress is not None:
            if self._phase is not None:
                self._progress.remove_task(self._phase)
            self._phase = self._progress.add_task(label, total=total)
            self._progress.update(self._status, description="")
        else:
            self.log(f"{label}: {total} requests")

    def phase_progress(self, done: int) -> None:
        if self._progress is not None and self._phase is not None:
            self._progress.update(self._phase, completed=done)

    def phase_end(self, backend: str, phase: str, summary: str, counted: bool) -> None:
        if self._progress is not None:
            if self._phase is not None:
                self._progress.remove_task(self._phase)
                self._phase = None
            if counted:
                self._progress.advance(self._overall)
        self.log(f"{backend} · {phase}: {summary}")

    def phase_retry(self, backend: str, phase: str, message: str) -> None:
        """The phase just ended will run again: it no longer counts as done."""
        if self._progress is not None:
            self._progress.advance(self._overall, -1)
        self.log(f"[yellow]{backend} · {phase}: {message}")
