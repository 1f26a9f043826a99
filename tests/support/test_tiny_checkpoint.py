"""The tiny Code Llama-layout checkpoints: deterministic, the right shape, varied outputs.

No vLLM engine is started here by default (transformers runs the forward passes). Set
FLEET_ENGINE_TESTS=1 to also check that vLLM, run through tests.support.vllm_reference,
gives the same greedy tokens as transformers (one engine start, about 25 s).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from safetensors import safe_open

from tests.support import tiny_checkpoint as tc
from tests.support.tiny_checkpoint import (
    LAYOUTS,
    build_tiny_codellama,
    checkpoint_hash,
    tiny_checkpoint_cached,
)

FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    tc.MARKER_FILENAME,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One freshly built checkpoint per layout (seed 0)."""
    root = tmp_path_factory.mktemp("tiny")
    return {layout: build_tiny_codellama(root / layout, layout) for layout in LAYOUTS}


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def test_building_twice_gives_identical_bytes(built: dict[str, Path], tmp_path: Path) -> None:
    again = build_tiny_codellama(tmp_path / "again", "infill", seed=0)
    for name in FILES:
        assert (again / name).read_bytes() == (built["infill"] / name).read_bytes(), name


def test_another_seed_gives_other_weights(built: dict[str, Path], tmp_path: Path) -> None:
    other = build_tiny_codellama(tmp_path / "seed1", "infill", seed=1)
    a, b = _tensors(built["infill"]), _tensors(other)
    assert a.keys() == b.keys()
    assert not torch.equal(a["model.embed_tokens.weight"], b["model.embed_tokens.weight"])
    assert not torch.equal(a["lm_head.weight"], b["lm_head.weight"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_config_has_code_llama_conventions_and_tp2_shape(
    built: dict[str, Path], layout: str
) -> None:
    path = built[layout]
    assert all((path / name).is_file() for name in FILES)
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["model_type"] == "llama"
    assert config["vocab_size"] == (32000 if layout == "plain" else 32016)
    assert config["hidden_size"] == 256
    assert config["num_hidden_layers"] == 2
    assert config["num_attention_heads"] == 4
    assert config["num_key_value_heads"] == 2
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    assert config["head_dim"] == 64
    for tp in (1, 2):
        assert config["num_attention_heads"] % tp == 0
        assert config["num_key_value_heads"] % tp == 0
    assert config["rope_theta"] == 1e6
    assert config["max_position_embeddings"] == 16384
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    assert config["torch_dtype"] == "float32"
    assert config["tie_word_embeddings"] is False
    generation = json.loads((path / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_transformers_reads_config_and_tokenizer(built: dict[str, Path], layout: str) -> None:
    from transformers import AutoConfig, AutoTokenizer

    path = built[layout]
    config = AutoConfig.from_pretrained(path)
    assert config.head_dim == 64
    assert config.vocab_size == (32000 if layout == "plain" else 32016)
    rope = getattr(config, "rope_parameters", None) or {}
    assert rope.get("rope_theta", getattr(config, "rope_theta", None)) == 1e6
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert len(tokenizer) == config.vocab_size
    sp = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
    assert sp.get_piece_size() == config.vocab_size
    if layout == "infill":
        assert sp.piece_to_id("▁<MID>") == 32009
        assert sp.piece_to_id("▁<EOT>") == 32010


@pytest.mark.parametrize("layout", LAYOUTS)
def test_weights_have_llama_names_shapes_and_float32(built: dict[str, Path], layout: str) -> None:
    tensors = _tensors(built[layout])
    vocab = 32000 if layout == "plain" else 32016
    expected = {
        "model.embed_tokens.weight": (vocab, 256),
        "model.norm.weight": (256,),
        "lm_head.weight": (vocab, 256),
    }
    for i in range(2):
        p = f"model.layers.{i}."
        expected |= {
            p + "self_attn.q_proj.weight": (4 * 64, 256),
            p + "self_attn.k_proj.weight": (2 * 64, 256),
            p + "self_attn.v_proj.weight": (2 * 64, 256),
            p + "self_attn.o_proj.weight": (256, 4 * 64),
            p + "mlp.gate_proj.weight": (512, 256),
            p + "mlp.up_proj.weight": (512, 256),
            p + "mlp.down_proj.weight": (256, 512),
            p + "input_layernorm.weight": (256,),
            p + "post_attention_layernorm.weight": (256,),
        }
    assert {name: tuple(t.shape) for name, t in tensors.items()} == expected
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    assert all(torch.isfinite(t).all() for t in tensors.values())


def _greedy(path: Path, prompt: list[int], n: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
            eos_token_id=None, pad_token_id=0,
        )  # fmt: skip
    return out[0, len(prompt):].tolist()


def test_greedy_continuations_vary(built: dict[str, Path]) -> None:
    path = built["infill"]
    sp = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
    a = _greedy(path, [1, *sp.encode("def fibonacci(n):")], 32)
    b = _greedy(path, [1, *sp.encode("import os\n")], 32)
    for tokens in (a, b):
        assert len(set(tokens)) >= 24, tokens  # no token repeated forever, no short loop
        assert tokens[-4:] != tokens[-8:-4], tokens
    assert a[:8] != b[:8]  # the prompt matters


def test_cached_builds_once_and_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = tiny_checkpoint_cached(tmp_path, "plain")
    assert first.parent == tmp_path
    assert first.name == f"plain-0-{checkpoint_hash('plain', 0)}"
    assert (first / tc.MARKER_FILENAME).is_file()
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp dirs left

    def no_rebuild(*args: object, **kwargs: object) -> Path:
        raise AssertionError("rebuilt a cached checkpoint")

    monkeypatch.setattr(tc, "build_tiny_codellama", no_rebuild)
    assert tiny_checkpoint_cached(tmp_path, "plain") == first


def test_cached_keys_on_layout_and_seed_and_repairs_partial_dirs(tmp_path: Path) -> None:
    assert checkpoint_hash("infill", 0) != checkpoint_hash("infill", 1)
    assert checkpoint_hash("infill", 0) != checkpoint_hash("70b", 0)
    partial = tmp_path / f"infill-1-{checkpoint_hash('infill', 1)}"
    partial.mkdir()
    (partial / "config.json").write_text("{}")  # as if a build had been interrupted
    path = tiny_checkpoint_cached(tmp_path, "infill", seed=1)
    assert path == partial
    assert json.loads((path / "config.json").read_text())["vocab_size"] == 32016
    assert (path / "model.safetensors").is_file()


def test_unknown_layout_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="layout"):
        build_tiny_codellama(tmp_path / "x", "34b")
    with pytest.raises(ValueError, match="layout"):
        tiny_checkpoint_cached(tmp_path, "13b")


@pytest.mark.skipif(
    os.environ.get("FLEET_ENGINE_TESTS") != "1",
    reason="starts a vLLM engine (~25 s); set FLEET_ENGINE_TESTS=1",
)
def test_vllm_greedy_matches_transformers(built: dict[str, Path]) -> None:
    from tests.support.vllm_reference import run_reference

    path = built["infill"]
    sp = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
    prompt = [1, 32007, *sp.encode("def add(a, b):\n    "), 32008,
              *sp.encode("\n    return c"), 32009]  # fmt: skip
    expected = _greedy(path, prompt, 16)
    out = run_reference(path, [{"prompt_token_ids": prompt, "max_tokens": 16}], dtype="float32")
    result = out["results"][0]
    assert result["token_ids"] == expected
    assert result["finish_reason"] == "length"
    assert out["meta"]["dtype"] == "float32"


def test_reference_requests_are_validated_and_greedy_by_default() -> None:
    from tests.support.vllm_reference import sampling_params_kwargs, validate_requests

    ok = validate_requests({"requests": [{"prompt_token_ids": [1, 5], "max_tokens": 4,
                                          "stop_token_ids": [2], "seed": 3}]})
    assert sampling_params_kwargs(ok[0]) == {
        "temperature": 0.0, "seed": 3, "max_tokens": 4, "stop_token_ids": [2],
    }
    for bad in (
        [{"prompt_token_ids": []}],
        [{"prompt_token_ids": [1], "temprature": 0.5}],
        [{"prompt_token_ids": [1], "max_tokens": 0}],
        [{"prompt_token_ids": [1], "stop_token_ids": "2"}],
        {"prompt_token_ids": [1]},
    ):
        with pytest.raises(ValueError):
            validate_requests(bad)
