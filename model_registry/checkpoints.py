"""What a checkpoint directory holds: every file's size and sha256, and what the model is.

`inspect_checkpoint` reads a directory once at registration (config.json, tokenizer, hashes of
every file); `verify_checkpoint` later compares a directory against what the registry recorded,
so a worker can refuse weights that changed or were damaged since.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from fleet_common.errors import InvalidArgument

HASH_CHUNK_BYTES = 8 * 1024 * 1024
_DIGEST_SHOWN = 12

#: Called with (relative path, bytes just hashed) after every chunk.
OnChunk = Callable[[str, int], None]


@dataclass(frozen=True)
class CheckpointFile:
    path: str  # relative to the checkpoint directory, posix separators
    size_bytes: int
    sha256: str  # lower-case hex


@dataclass(frozen=True)
class CheckpointInfo:
    directory: str
    files: tuple[CheckpointFile, ...]
    format: str  # "safetensors" | "awq"
    dtype: str
    quantization: str  # "" when the weights are not quantized
    architecture: str
    vocab_size: int
    context_length: int
    tokenizer: str  # "sentencepiece" | "huggingface"
    total_bytes: int


def inspect_checkpoint(directory: Path, *, progress: bool = False) -> CheckpointInfo:
    """Describes `directory`; raises InvalidArgument("directory", ...) when it is not a
    checkpoint (no config.json, no *.safetensors weights or no tokenizer)."""
    directory = Path(directory).resolve()
    _check_layout(directory)
    config = _read_config(directory)
    # Everything config.json must say is checked before the (slow) hashing.
    architecture = _architecture(config, directory)
    vocab_size = _positive_int(config, directory, "vocab_size")
    context_length = _positive_int(config, directory, "max_position_embeddings")
    quant_method = _quant_method(config)
    relative_paths = _checkpoint_files(directory)
    sizes = {rel: (directory / rel).stat().st_size for rel in relative_paths}
    total = sum(sizes.values())
    with _hash_progress(progress, total, f"hashing {directory.name}") as on_chunk:
        files = tuple(
            CheckpointFile(rel, sizes[rel], file_sha256(directory / rel, rel, on_chunk))
            for rel in relative_paths
        )
    return CheckpointInfo(
        directory=str(directory),
        files=files,
        format="awq" if quant_method == "awq" else "safetensors",
        dtype=str(config.get("torch_dtype") or config.get("dtype") or "auto"),
        quantization=quant_method,
        architecture=architecture,
        vocab_size=vocab_size,
        context_length=context_length,
        tokenizer="sentencepiece" if (directory / "tokenizer.model").is_file() else "huggingface",
        total_bytes=total,
    )


def verify_checkpoint(
    directory: Path,
    expected: Sequence[CheckpointFile],
    *,
    check_hashes: bool = True,
    progress: bool = False,
) -> list[str]:
    """The ways `directory` differs from `expected` (empty when it matches).

    Sizes are compared first; files are hashed only when every expected file is present with
    its registered size, since a size problem already settles the verdict. Files on disk that
    `expected` does not list are ignored.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return [f"{directory} is not a directory"]
    problems: list[str] = []
    for entry in expected:
        if not _is_inside(entry.path):
            problems.append(f"{entry.path}: path is not inside the checkpoint directory")
            continue
        path = directory / entry.path
        if not path.is_file():
            problems.append(f"{entry.path}: missing")
            continue
        size = path.stat().st_size
        if size != entry.size_bytes:
            problems.append(f"{entry.path}: size {size} bytes, registry says {entry.size_bytes}")
    if problems or not check_hashes:
        return problems
    total = sum(entry.size_bytes for entry in expected)
    with _hash_progress(progress, total, f"verifying {directory.name}") as on_chunk:
        for entry in expected:
            digest = file_sha256(directory / entry.path, entry.path, on_chunk)
            if digest != entry.sha256.lower():
                problems.append(
                    f"{entry.path}: sha256 {_short(digest)} does not match the registry's "
                    f"{_short(entry.sha256)}"
                )
    return problems


def file_sha256(path: Path, label: str = "", on_chunk: OnChunk | None = None) -> str:
    """Lower-case hex sha256 of `path`, read in HASH_CHUNK_BYTES chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            if on_chunk is not None:
                on_chunk(label, len(chunk))
    return digest.hexdigest()


def _check_layout(directory: Path) -> None:
    if not directory.is_dir():
        raise InvalidArgument("directory", f"{directory} is not a directory")
    if not (directory / "config.json").is_file():
        raise InvalidArgument("directory", f"{directory} has no config.json")
    if not any(path.is_file() for path in directory.glob("*.safetensors")):
        raise InvalidArgument("directory", f"{directory} has no *.safetensors weights")
    if not any((directory / name).is_file() for name in ("tokenizer.model", "tokenizer.json")):
        raise InvalidArgument(
            "directory", f"{directory} has no tokenizer (tokenizer.model or tokenizer.json)"
        )


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument("directory", f"cannot read {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise InvalidArgument("directory", f"{path} is not a JSON object")
    return config


def _architecture(config: dict[str, Any], directory: Path) -> str:
    architectures = config.get("architectures")
    if not isinstance(architectures, list) or not architectures or not architectures[0]:
        raise _unusable(directory, "architectures", architectures)
    return str(architectures[0])


def _positive_int(config: dict[str, Any], directory: Path, key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _unusable(directory, key, value)
    return value


def _quant_method(config: dict[str, Any]) -> str:
    quantization = config.get("quantization_config")
    if not isinstance(quantization, dict):
        return ""
    return str(quantization.get("quant_method") or "").lower()


def _unusable(directory: Path, key: str, value: object) -> InvalidArgument:
    return InvalidArgument(
        "directory", f"{directory / 'config.json'} has no usable {key!r} (got {value!r})"
    )


def _checkpoint_files(directory: Path) -> list[str]:
    """Relative posix paths of every regular file, sorted; hidden entries and __pycache__ are
    left out (snapshot_download keeps its own metadata under .cache/)."""
    found: list[str] = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        for name in names:
            path = Path(root) / name
            if not name.startswith(".") and path.is_file():
                found.append(path.relative_to(directory).as_posix())
    return sorted(found)


def _is_inside(relative: str) -> bool:
    path = PurePosixPath(relative)
    return bool(relative) and not path.is_absolute() and ".." not in path.parts


def _short(digest: str) -> str:
    return f"{digest[:_DIGEST_SHOWN]}…"


@contextlib.contextmanager
def _hash_progress(enabled: bool, total_bytes: int, title: str) -> Iterator[OnChunk | None]:
    """One rich bar over all bytes, its description naming the file being hashed."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(title, total=total_bytes)

        def on_chunk(label: str, nbytes: int) -> None:
            bar.update(task, advance=nbytes, description=f"{title}: {label}")

        yield on_chunk
        bar.update(task, description=title)
