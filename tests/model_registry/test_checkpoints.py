"""inspect_checkpoint and verify_checkpoint on small checkpoint directories built in tmp_path;
download_hf_repo's validation and error translation (offline: it cannot reach the hub)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import huggingface_hub
import numpy as np
import pytest
from huggingface_hub import constants as hf_constants
from safetensors.numpy import save_file

from fleet_common.errors import FailedPrecondition, InvalidArgument
from model_registry import checkpoints
from model_registry.checkpoints import (
    CheckpointFile,
    CheckpointInfo,
    inspect_checkpoint,
    verify_checkpoint,
)
from model_registry.hf_download import download_hf_repo, local_dir_name

CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 32016,
    "max_position_embeddings": 16384,
    "torch_dtype": "bfloat16",
    "model_type": "llama",
}


def write_checkpoint(directory: Path, config: dict[str, Any] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config or CONFIG))
    rng = np.random.default_rng(0)
    save_file(
        {
            "model.embed_tokens.weight": rng.standard_normal((64, 16), dtype=np.float32),
            "lm_head.weight": rng.standard_normal((64, 16), dtype=np.float32),
        },
        str(directory / "model.safetensors"),
    )
    (directory / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {}}))
    return directory


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return write_checkpoint(tmp_path / "ckpt")


@pytest.fixture
def recorded(checkpoint: Path) -> tuple[CheckpointFile, ...]:
    return inspect_checkpoint(checkpoint).files


# ---------------------------------------------------------------------------------------
# inspect_checkpoint


def test_inspect_reports_every_field(checkpoint: Path) -> None:
    info = inspect_checkpoint(checkpoint)

    names = ["config.json", "model.safetensors", "tokenizer.json"]
    expected_files = tuple(
        CheckpointFile(name, (checkpoint / name).stat().st_size, sha256_of(checkpoint / name))
        for name in names
    )
    assert info == CheckpointInfo(
        directory=str(checkpoint.resolve()),
        files=expected_files,
        format="safetensors",
        dtype="bfloat16",
        quantization="",
        architecture="LlamaForCausalLM",
        vocab_size=32016,
        context_length=16384,
        tokenizer="huggingface",
        total_bytes=sum(f.size_bytes for f in expected_files),
    )
    assert all(f.size_bytes > 0 for f in info.files)


def test_inspect_walks_subdirectories_sorted_and_skips_hidden(checkpoint: Path) -> None:
    (checkpoint / "tokenizer.model").write_bytes(b"sentencepiece stub")
    (checkpoint / "b-extra").mkdir()
    (checkpoint / "b-extra" / "notes.txt").write_text("x")
    (checkpoint / "a-extra.txt").write_text("y")
    (checkpoint / ".cache" / "huggingface").mkdir(parents=True)
    (checkpoint / ".cache" / "huggingface" / "meta.json").write_text("{}")
    (checkpoint / ".hidden").write_text("z")
    (checkpoint / "__pycache__").mkdir()
    (checkpoint / "__pycache__" / "x.pyc").write_bytes(b"\0")

    info = inspect_checkpoint(checkpoint)

    assert [f.path for f in info.files] == [
        "a-extra.txt",
        "b-extra/notes.txt",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer.model",
    ]
    assert info.files[1] == CheckpointFile(
        "b-extra/notes.txt", 1, sha256_of(checkpoint / "b-extra" / "notes.txt")
    )
    assert info.tokenizer == "sentencepiece"


def test_inspect_hashes_files_larger_than_a_chunk(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "HASH_CHUNK_BYTES", 100)
    weights = checkpoint / "model.safetensors"
    assert weights.stat().st_size > 1000

    info = inspect_checkpoint(checkpoint)

    assert {f.path: f.sha256 for f in info.files}["model.safetensors"] == sha256_of(weights)


def test_inspect_detects_awq(tmp_path: Path) -> None:
    config = {**CONFIG, "torch_dtype": "float16",
              "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}
    info = inspect_checkpoint(write_checkpoint(tmp_path / "awq", config))

    assert (info.format, info.quantization, info.dtype) == ("awq", "awq", "float16")


def test_inspect_reads_dtype_key_and_defaults_to_auto(tmp_path: Path) -> None:
    without_torch_dtype = {k: v for k, v in CONFIG.items() if k != "torch_dtype"}
    newer = inspect_checkpoint(write_checkpoint(tmp_path / "a", {**without_torch_dtype,
                                                                 "dtype": "float32"}))
    bare = inspect_checkpoint(write_checkpoint(tmp_path / "b", without_torch_dtype))

    assert newer.dtype == "float32"
    assert bare.dtype == "auto"


def test_inspect_with_progress(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert inspect_checkpoint(checkpoint, progress=True) == inspect_checkpoint(checkpoint)
    shown = capsys.readouterr().err
    total_kb = sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file()) / 1000
    # rich's bar on stderr, finished: the title and done/total bytes
    assert f"hashing {checkpoint.name}" in shown, shown
    assert f"{total_kb:.1f}/{total_kb:.1f} kB" in shown, shown


def test_refuses_a_path_that_is_not_a_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for path in (missing, a_file):
        with pytest.raises(InvalidArgument, match="is not a directory") as caught:
            inspect_checkpoint(path)
        assert caught.value.field == "directory"
        assert str(path) in caught.value.problem


@pytest.mark.parametrize(
    ("remove", "missing"),
    [
        ("config.json", "has no config.json"),
        ("model.safetensors", r"has no \*.safetensors weights"),
        ("tokenizer.json", r"has no tokenizer \(tokenizer.model or tokenizer.json\)"),
    ],
)
def test_refuses_a_directory_missing_a_part(checkpoint: Path, remove: str, missing: str) -> None:
    (checkpoint / remove).unlink()

    with pytest.raises(InvalidArgument, match=missing) as caught:
        inspect_checkpoint(checkpoint)

    assert caught.value.field == "directory"
    assert str(checkpoint) in caught.value.problem


def test_refuses_unreadable_or_incomplete_config(tmp_path: Path) -> None:
    broken = write_checkpoint(tmp_path / "broken")
    (broken / "config.json").write_text("{not json")
    with pytest.raises(InvalidArgument, match="cannot read .*config.json"):
        inspect_checkpoint(broken)

    for key, bad in (("architectures", []), ("vocab_size", None), ("max_position_embeddings", 0)):
        config = {**CONFIG, key: bad}
        with pytest.raises(InvalidArgument, match=f"has no usable '{key}'"):
            inspect_checkpoint(write_checkpoint(tmp_path / key, config))


# ---------------------------------------------------------------------------------------
# verify_checkpoint


def test_verify_accepts_the_recorded_checkpoint(
    checkpoint: Path, recorded: tuple[CheckpointFile, ...]
) -> None:
    (checkpoint / "extra-on-disk.txt").write_text("not in the registry")

    assert verify_checkpoint(checkpoint, recorded) == []
    assert verify_checkpoint(checkpoint, recorded, progress=True) == []


def test_verify_names_a_flipped_byte(
    checkpoint: Path, recorded: tuple[CheckpointFile, ...]
) -> None:
    weights = checkpoint / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    registered = {f.path: f.sha256 for f in recorded}["model.safetensors"]

    problems = verify_checkpoint(checkpoint, recorded)

    assert problems == [
        f"model.safetensors: sha256 {sha256_of(weights)[:12]}… does not match the registry's "
        f"{registered[:12]}…"
    ]


def test_verify_names_a_truncated_file_without_hashing(
    checkpoint: Path, recorded: tuple[CheckpointFile, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = checkpoint / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:-6])
    monkeypatch.setattr(checkpoints, "file_sha256", _must_not_hash)

    problems = verify_checkpoint(checkpoint, recorded)

    assert problems == [f"model.safetensors: size {size - 6} bytes, registry says {size}"]


def test_verify_names_a_missing_file(
    checkpoint: Path, recorded: tuple[CheckpointFile, ...]
) -> None:
    (checkpoint / "tokenizer.json").unlink()

    assert verify_checkpoint(checkpoint, recorded) == ["tokenizer.json: missing"]


def test_verify_without_hashes_checks_sizes_only(
    checkpoint: Path, recorded: tuple[CheckpointFile, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    tampered = tuple(CheckpointFile(f.path, f.size_bytes, "0" * 64) for f in recorded)
    monkeypatch.setattr(checkpoints, "file_sha256", _must_not_hash)

    assert verify_checkpoint(checkpoint, tampered, check_hashes=False) == []


def test_verify_reports_a_missing_directory_and_escaping_paths(
    tmp_path: Path, checkpoint: Path
) -> None:
    gone = tmp_path / "gone"
    entry = CheckpointFile("model.safetensors", 1, "0" * 64)
    assert verify_checkpoint(gone, [entry]) == [f"{gone} is not a directory"]

    outside = CheckpointFile("../secret", 1, "0" * 64)
    assert verify_checkpoint(checkpoint, [outside]) == [
        "../secret: path is not inside the checkpoint directory"
    ]


def _must_not_hash(*args: object, **kwargs: object) -> str:
    raise AssertionError("verify_checkpoint hashed a file it should not have")


# ---------------------------------------------------------------------------------------
# download_hf_repo


@pytest.mark.parametrize(
    "repo_id",
    ["", "CodeLlama-7b-hf", "a/b/c", "owner/", "/name", "own er/name", "owner/-name",
     "owner/name.", "owner/na--me", "owner/na..me", "owner/name.git", "o/" + "x" * 97],
)
def test_download_refuses_a_malformed_repo_id(tmp_path: Path, repo_id: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        download_hf_repo(repo_id, tmp_path)

    assert caught.value.field == "hf_repo_id"
    assert repr(repo_id) in caught.value.problem
    assert list(tmp_path.iterdir()) == []


def test_download_offline_is_a_failed_precondition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    repo_id = "codellama-fleet-tests/no-such-repo"

    with pytest.raises(FailedPrecondition) as caught:
        download_hf_repo(repo_id, tmp_path, revision="refs/pr/1")

    message = caught.value.message
    assert message.startswith(f"cannot download {repo_id} from the Hugging Face hub: ")
    assert message.endswith(
        "; this machine may have no network — register a local directory instead"
    )
    assert isinstance(caught.value.__cause__, OSError)


def test_download_passes_the_patterns_and_a_safe_local_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []

    def fake_snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        return str(kwargs["local_dir"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)

    path = download_hf_repo("codellama/CodeLlama-7b-hf", tmp_path, revision="refs/pr/1")

    assert path == tmp_path / "codellama--CodeLlama-7b-hf--refs-pr-1"
    assert calls == [{
        "repo_id": "codellama/CodeLlama-7b-hf",
        "revision": "refs/pr/1",
        "local_dir": path,
        "allow_patterns": ["*.json", "*.safetensors", "tokenizer.model", "*.jinja"],
    }]
    assert local_dir_name("codellama", "CodeLlama-7b-hf") == "codellama--CodeLlama-7b-hf"
