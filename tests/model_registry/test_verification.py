"""verify_before_load: a worker refuses a checkpoint whose files differ from the registry's."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from model_registry.checkpoints import CheckpointFile
from model_registry.verification import (
    CheckpointCorrupted,
    CheckpointUnrecorded,
    verify_before_load,
)


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, list[CheckpointFile]]:
    directory = tmp_path / "ckpt"
    directory.mkdir()
    contents = {"config.json": b'{"vocab_size": 32016}', "model.safetensors": bytes(range(256)) * 8}
    for name, data in contents.items():
        (directory / name).write_bytes(data)
    expected = [
        CheckpointFile(name, len(data), hashlib.sha256(data).hexdigest())
        for name, data in contents.items()
    ]
    return directory, expected


def test_passes_on_a_good_checkpoint(
    checkpoint: tuple[Path, list[CheckpointFile]], caplog: pytest.LogCaptureFixture
) -> None:
    directory, expected = checkpoint
    with caplog.at_level(logging.INFO, logger="model_registry.verification"):
        verify_before_load(directory, expected)

    assert "2 files (2069 bytes)" in caplog.text
    assert "ok" in caplog.text


def test_refuses_a_corrupted_file(checkpoint: tuple[Path, list[CheckpointFile]]) -> None:
    directory, expected = checkpoint
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))

    with pytest.raises(CheckpointCorrupted) as caught:
        verify_before_load(directory, expected)

    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith("model.safetensors: sha256 ")
    message = str(caught.value)
    assert message.startswith(f"checkpoint {directory} refused: 1 problem(s): model.safetensors")
    assert message.endswith("; the worker will not load it")


def test_refuses_a_missing_file_even_without_hashes(
    checkpoint: tuple[Path, list[CheckpointFile]]
) -> None:
    directory, expected = checkpoint
    (directory / "config.json").unlink()

    with pytest.raises(CheckpointCorrupted, match="config.json: missing") as caught:
        verify_before_load(directory, expected, check_hashes=False)

    assert caught.value.problems == ["config.json: missing"]


def test_refuses_a_checkpoint_without_records_unless_allowed(
    checkpoint: tuple[Path, list[CheckpointFile]], caplog: pytest.LogCaptureFixture
) -> None:
    directory, _ = checkpoint

    with pytest.raises(CheckpointUnrecorded, match="no file sizes or sha256") as caught:
        verify_before_load(directory, [])
    assert isinstance(caught.value, CheckpointCorrupted)
    assert str(caught.value).endswith("; the worker will not load it")

    with caplog.at_level(logging.WARNING, logger="model_registry.verification"):
        verify_before_load(directory, [], allow_unrecorded=True)
    assert "loading it unverified" in caplog.text
