"""The check before a checkpoint is used (by a worker before its engine loads it, by the
registry before a canary starts on it): the files on disk must be the ones the registry
recorded (present, same sizes, same sha256)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from model_registry.checkpoints import CheckpointFile, verify_checkpoint

log = logging.getLogger(__name__)


class CheckpointCorrupted(Exception):
    """The checkpoint differs from its registry record; `problems` says how."""

    def __init__(self, directory: Path, problems: list[str]) -> None:
        super().__init__(
            f"checkpoint {directory} refused: {len(problems)} problem(s): "
            f"{'; '.join(problems)}; the worker will not load it"
        )
        self.directory = directory
        self.problems = problems


class CheckpointUnrecorded(CheckpointCorrupted):
    """The registry holds no file records for the checkpoint, so nothing can be verified."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, [(
            "the registry has no file sizes or sha256 for it (registered before checksums "
            "were recorded); register the directory again as a new checkpoint to record them")])


def verify_before_load(
    directory: Path, expected: Sequence[CheckpointFile], *, check_hashes: bool = True,
    allow_unrecorded: bool = False,
) -> None:
    """Raises CheckpointCorrupted unless `directory` matches `expected`; CheckpointUnrecorded
    when there is nothing to match, unless `allow_unrecorded`."""
    if not expected:
        if not allow_unrecorded:
            raise CheckpointUnrecorded(directory)
        log.warning("checkpoint %s has no recorded files; loading it unverified as allowed",
                    directory)
        return
    started = time.monotonic()
    problems = verify_checkpoint(directory, expected, check_hashes=check_hashes)
    log.info(
        "checkpoint %s: checked %s of %d files (%d bytes) in %.2fs: %s",
        directory,
        "sizes and sha256" if check_hashes else "sizes",
        len(expected),
        sum(entry.size_bytes for entry in expected),
        time.monotonic() - started,
        f"{len(problems)} problem(s)" if problems else "ok",
    )
    if problems:
        raise CheckpointCorrupted(directory, problems)
