"""Prompts: the exact engine length, distinct prefixes, reproducible, as the gateway builds them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.workload import DISTINCT_PREFIX, engine_ids, fingerprint, make_prompts
from prompting.tokenizer import load_prompt_tokenizer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    from tests.support.tiny_checkpoint import tiny_checkpoint_cached

    return tiny_checkpoint_cached(REPO / ".cache" / "test-checkpoints", "infill")


@pytest.mark.parametrize("input_len", [8, 33, 128])
def test_every_prompt_has_the_exact_engine_length(checkpoint: Path, input_len: int) -> None:
    prompts = make_prompts(checkpoint, 20, input_len, seed=1)
    tokenizer = load_prompt_tokenizer(checkpoint)
    for prompt in prompts:
        assert len(prompt.token_ids) == input_len
        # the ids are what the fleet's prompt builder makes of the text (BOS first)
        assert engine_ids(tokenizer, prompt.text) == list(prompt.token_ids)
        assert prompt.token_ids[0] == tokenizer.bos_id


def test_prompts_are_distinct_and_seeded(checkpoint: Path) -> None:
    a = make_prompts(checkpoint, 30, 64, seed=3)
    assert len({p.token_ids[:DISTINCT_PREFIX] for p in a}) == 30
    assert [p.index for p in a] == list(range(30))
    assert fingerprint(a) == fingerprint(make_prompts(checkpoint, 30, 64, seed=3))
    assert fingerprint(a) != fingerprint(make_prompts(checkpoint, 30, 64, seed=4))
