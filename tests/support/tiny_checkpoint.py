"""Tiny, randomly initialised Code Llama-layout checkpoints that real vLLM loads and serves.

`build_tiny_codellama(dest, layout, seed)` writes a LlamaForCausalLM checkpoint with Code
Llama's conventions (SentencePiece tokenizer with the layout's appended pieces, vocab 32,016 or
32,000, RoPE theta 1e6, 16,384 positions, BOS 1 / EOS 2) but only 2 layers of width 256, so an
engine serves it in seconds on CPU:

- head_dim 64 (vLLM's CPU attention refuses smaller heads), 4 query heads and 2 KV heads, so
  tensor parallel size 1 and 2 both divide the heads;
- float32 weights and `torch_dtype`, so greedy decoding is numerically stable (serve it with
  dtype "float32": vLLM's dtype "auto" would down-cast a float32 checkpoint);
- weights drawn from a seeded `torch.Generator` in a fixed order and saved with safetensors,
  so building twice gives byte-identical `model.safetensors`;
- initialisation scaled so that greedy continuations vary from token to token and from prompt
  to prompt (see `_INIT_STD`), instead of one token repeated forever.

Layouts ("infill", "70b", "plain") are those of `tests.support.codellama_tokenizer`.
`tiny_checkpoint_cached(cache_root, layout, seed)` builds once per distinct builder input into
`cache_root/<layout>-<seed>-<hash>` and reuses it afterwards (tests call it per session).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

LAYOUTS = ("infill", "70b", "plain")

#: Bump when the output changes in a way the parameters below do not capture.
BUILDER_VERSION = 2
MARKER_FILENAME = "tiny-checkpoint.json"

HIDDEN_SIZE = 256
NUM_LAYERS = 2
NUM_HEADS = 4
NUM_KV_HEADS = 2
HEAD_DIM = HIDDEN_SIZE // NUM_HEADS  # 64: the smallest head vLLM's CPU attention accepts
INTERMEDIATE_SIZE = 512
ROPE_THETA = 1_000_000.0
MAX_POSITION_EMBEDDINGS = 16384
RMS_NORM_EPS = 1e-5
BOS_TOKEN_ID = 1
EOS_TOKEN_ID = 2
VOCAB_SIZES = {"infill": 32016, "70b": 32016, "plain": 32000}
# The format's end token (infill's ▁<EOT>, the 70B chat's <step>) gets its lm_head row scaled so
# that greedy decoding emits it within a few dozen tokens on most prompts, as a trained model
# would; the fleet's tests can then show generation stopping there.
_END_TOKEN_IDS = {"infill": 32010, "70b": 32015}
END_TOKEN_BOOST = 2.5

# Standard deviations of the normal initialisation. Norm weights are ones (as in training).
# With the usual 0.02 everywhere, the final logits have a spread of ~0.3 and a random model
# falls into short loops; a larger lm_head spread (logit std ~3) and embeddings comparable
# to the attention/MLP outputs give continuations that keep changing and depend on the prompt.
_INIT_STD = {
    "embed_tokens": 1.0,
    "attn": 0.06,
    "mlp": 0.06,
    "lm_head": 0.2,
}

_CHECKPOINT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def tiny_config(layout: str = "infill") -> dict[str, Any]:
    """The config.json contents for `layout` (Code Llama's key set, tiny sizes)."""
    _check_layout(layout)
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_ID,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": HIDDEN_SIZE,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE_SIZE,
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": NUM_HEADS,
        "num_hidden_layers": NUM_LAYERS,
        "num_key_value_heads": NUM_KV_HEADS,
        "pretraining_tp": 1,
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_scaling": None,
        "rope_theta": ROPE_THETA,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": VOCAB_SIZES[layout],
    }


def builder_params(layout: str = "infill", seed: int = 0) -> dict[str, Any]:
    """Everything the checkpoint bytes depend on (besides the tokenizer builder's code)."""
    return {
        "builder_version": BUILDER_VERSION,
        "layout": layout,
        "seed": seed,
        "config": tiny_config(layout),
        "init_std": dict(_INIT_STD),
        "end_token_boost": END_TOKEN_BOOST,
    }


def build_tiny_codellama(dest: Path, layout: str = "infill", seed: int = 0) -> Path:
    """Write a tiny Code Llama-layout checkpoint into `dest` (created if missing); return it.

    Files: config.json, generation_config.json, model.safetensors (float32), tokenizer.model,
    tokenizer.json, tokenizer_config.json, special_tokens_map.json and a marker
    (tiny-checkpoint.json) with the builder parameters.
    """
    from safetensors.torch import save_file

    from tests.support import codellama_tokenizer

    _check_layout(layout)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = tiny_config(layout)

    tensors = _random_weights(config, seed, layout)
    weights = dest / "model.safetensors"
    save_file(tensors, str(weights), metadata={"format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    weights.chmod(0o666 & ~umask)  # safetensors creates it 0600
    _write_json(dest / "config.json", config)
    _write_json(
        dest / "generation_config.json",
        {"bos_token_id": BOS_TOKEN_ID, "eos_token_id": EOS_TOKEN_ID},
    )
    codellama_tokenizer.build_sentencepiece_model(layout, dest)
    codellama_tokenizer.build_hf_tokenizer_files(layout, dest)
    _write_json(dest / MARKER_FILENAME, builder_params(layout, seed))
    return dest


def tiny_checkpoint_cached(cache_root: Path, layout: str = "infill", seed: int = 0) -> Path:
    """Return `cache_root/<layout>-<seed>-<hash>`, building it the first time.

    The hash covers `builder_params` and the source of this module and of the tokenizer
    builder, so a change to either gives a fresh directory. Building happens in a temporary
    directory renamed into place, so concurrent or interrupted runs never expose a partial
    checkpoint.
    """
    _check_layout(layout)
    cache_root = Path(cache_root)
    target = cache_root / f"{layout}-{seed}-{checkpoint_hash(layout, seed)}"
    if _is_complete(target):
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=cache_root))
    try:
        build_tiny_codellama(work / "ckpt", layout, seed)
        if target.exists() and not _is_complete(target):  # left over from a crash
            stale = cache_root / f".{target.name}.stale-{os.getpid()}-{time.monotonic_ns()}"
            os.rename(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(work / "ckpt", target)
        except OSError:
            if not _is_complete(target):  # a concurrent builder did not win either
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def checkpoint_hash(layout: str = "infill", seed: int = 0) -> str:
    """12 hex digits identifying the builder inputs for (`layout`, `seed`)."""
    from tests.support import codellama_tokenizer

    digest = hashlib.sha256()
    digest.update(json.dumps(builder_params(layout, seed), sort_keys=True).encode())
    for module_file in (__file__, codellama_tokenizer.__file__):
        digest.update(Path(module_file).read_bytes())
    return digest.hexdigest()[:12]


def _random_weights(config: dict[str, Any], seed: int, layout: str) -> dict[str, Any]:
    import torch

    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    hidden = config["hidden_size"]
    inter = config["intermediate_size"]
    head_dim = config["head_dim"]
    q_out = config["num_attention_heads"] * head_dim
    kv_out = config["num_key_value_heads"] * head_dim
    vocab = config["vocab_size"]

    def normal(shape: tuple[int, ...], std: float) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float32) * std

    # The order of draws below is part of the checkpoint's definition: do not reorder.
    tensors: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": normal((vocab, hidden), _INIT_STD["embed_tokens"]),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors[p + "self_attn.q_proj.weight"] = normal((q_out, hidden), _INIT_STD["attn"])
        tensors[p + "self_attn.k_proj.weight"] = normal((kv_out, hidden), _INIT_STD["attn"])
        tensors[p + "self_attn.v_proj.weight"] = normal((kv_out, hidden), _INIT_STD["attn"])
        tensors[p + "self_attn.o_proj.weight"] = normal((hidden, q_out), _INIT_STD["attn"])
        tensors[p + "mlp.gate_proj.weight"] = normal((inter, hidden), _INIT_STD["mlp"])
        tensors[p + "mlp.up_proj.weight"] = normal((inter, hidden), _INIT_STD["mlp"])
        tensors[p + "mlp.down_proj.weight"] = normal((hidden, inter), _INIT_STD["mlp"])
        tensors[p + "input_layernorm.weight"] = torch.ones(hidden)
        tensors[p + "post_attention_layernorm.weight"] = torch.ones(hidden)
    tensors["model.norm.weight"] = torch.ones(hidden)
    tensors["lm_head.weight"] = normal((vocab, hidden), _INIT_STD["lm_head"])
    end_token = _END_TOKEN_IDS.get(layout)
    if end_token is not None:
        tensors["lm_head.weight"][end_token] *= END_TOKEN_BOOST
    return tensors


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in (*_CHECKPOINT_FILES, MARKER_FILENAME))


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
