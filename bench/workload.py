"""Seeded random prompts whose engine input has an exact number of tokens.

As vLLM's random dataset does, a prompt is random token ids decoded to text and re-encoded,
adjusted until the re-encoding has the wanted length. Here the length that must hold is the
one the *engine* sees for a completion request, built by the project's own prompt builder
(`prompting`: BOS when the model uses one, then the text's ids). The same text therefore
reaches the fleet (which tokenizes it in the gateway) and the same ids reach vLLM alone and
vLLM's server (which get token ids); the fleet backend checks this with PreviewPrompt.

Every prompt of a run is distinct in its first block of tokens, so prefix caching (on by
default in vLLM) never lets one request reuse another's prefill.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prompting.completion import build_completion
from prompting.pieces import FILL_ME
from prompting.tokenizer import PromptTokenizer, load_prompt_tokenizer

#: Pieces never sampled: control tokens, unknown, byte fallback and other "<...>" markers.
_MARKUP_PIECE = re.compile(r"^<.*>$")
#: Length of the prefix that must differ between prompts (at least one KV cache block).
DISTINCT_PREFIX = 16
_MAX_ROUNDS = 12
_MAX_ATTEMPTS = 64


class WorkloadError(RuntimeError):
    """No prompt of the requested length could be made."""


@dataclass(frozen=True)
class Prompt:
    index: int
    #: The text sent to the fleet.
    text: str
    #: The engine input: what the fleet's gateway builds from `text`, and what vLLM alone and
    #: vLLM's server are given directly.
    token_ids: tuple[int, ...]

    def to_json(self) -> dict[str, object]:
        return {"index": self.index, "text": self.text, "token_ids": list(self.token_ids)}

    @staticmethod
    def from_json(data: dict[str, object]) -> Prompt:
        return Prompt(int(data["index"]), str(data["text"]),  # type: ignore[arg-type]
                      tuple(data["token_ids"]))  # type: ignore[arg-type]


def engine_ids(tokenizer: PromptTokenizer, text: str) -> list[int]:
    """The ids a completion request with `text` is sent to the engine as."""
    return list(build_completion(tokenizer, text).token_ids)


def stop_ids(model_dir: Path) -> list[int]:
    """Token ids that end a completion request of this model (the fleet's stop tokens)."""
    tokenizer = load_prompt_tokenizer(Path(model_dir))
    return list(build_completion(tokenizer, "x").stop_token_ids)


def sampleable_ids(tokenizer: PromptTokenizer) -> np.ndarray:
    special = set(tokenizer.special_ids)
    ids = [i for i in range(tokenizer.vocab_size)
           if i not in special and not _MARKUP_PIECE.match(tokenizer.id_to_piece(i))]
    return np.asarray(ids, dtype=np.int64)


def _one_prompt(tokenizer: PromptTokenizer, allowed: np.ndarray, rng: np.random.Generator,
                input_len: int, overhead: int) -> tuple[str, list[int]] | None:
    body = rng.choice(allowed, size=input_len - overhead).tolist()
    for _ in range(_MAX_ROUNDS):
        text = tokenizer.decode(body)
        if not text.strip() or FILL_ME in text:
            return None
        ids = engine_ids(tokenizer, text)
        if len(ids) == input_len:
            return text, ids
        body = ids[overhead:]
        if len(ids) > input_len:
            body = body[: input_len - overhead]
        else:
            body = body + rng.choice(allowed, size=input_len - len(ids)).tolist()
    return None


def make_prompts(model_dir: Path, count: int, input_len: int, seed: int) -> list[Prompt]:
    """`count` distinct prompts of exactly `input_len` engine tokens, reproducible by `seed`."""
    tokenizer = load_prompt_tokenizer(Path(model_dir))
    overhead = len(engine_ids(tokenizer, "x")) - len(tokenizer.encode("x"))
    if input_len <= overhead + 1:
        raise WorkloadError(f"input_len {input_len} leaves no room for text "
                            f"({overhead} format tokens)")
    allowed = sampleable_ids(tokenizer)
    rng = np.random.default_rng(seed)
    prompts: list[Prompt] = []
    prefixes: set[tuple[int, ...]] = set()
    attempts = 0
    while len(prompts) < count:
        made = _one_prompt(tokenizer, allowed, rng, input_len, overhead)
        if made is not None:
            text, ids = made
            prefix = tuple(ids[:DISTINCT_PREFIX])
            if prefix not in prefixes:
                prefixes.add(prefix)
                prompts.append(Prompt(len(prompts), text, tuple(ids)))
                attempts = 0
                continue
        attempts += 1
        if attempts > _MAX_ATTEMPTS:
            raise WorkloadError(f"could not make a prompt of {input_len} tokens for "
                                f"{model_dir} in {_MAX_ATTEMPTS} attempts")
    return prompts


def fingerprint(prompts: Sequence[Prompt]) -> str:
    """sha256 of the prompts' token ids: equal across backends means the same workload."""
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(json.dumps(prompt.token_ids).encode())
    return digest.hexdigest()
