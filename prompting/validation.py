"""Checks on a built prompt before it is queued."""

from __future__ import annotations

from fleet_common.errors import InvalidArgument, OutOfBounds

MAX_TOKENS_FIELD = "sampling.max_tokens"


def check_context_budget(prompt_tokens: int, max_new_tokens: int, context_limit: int) -> None:
    """Prompt tokens plus the tokens to generate must fit the model's context limit."""
    if context_limit < 1:
        raise ValueError(f"context_limit must be positive, got {context_limit}")
    if max_new_tokens < 1:
        raise OutOfBounds(MAX_TOKENS_FIELD, max_new_tokens, "at least 1")
    room = context_limit - prompt_tokens
    if room < 1:
        raise InvalidArgument(
            "prompt",
            f"is {prompt_tokens} tokens, which fills the model's context limit "
            f"of {context_limit} tokens "
            f"and leaves no room for {MAX_TOKENS_FIELD}={max_new_tokens}; shorten the prompt",
        )
    if max_new_tokens > room:
        raise OutOfBounds(
            MAX_TOKENS_FIELD,
            max_new_tokens,
            f"at most {room} (context limit {context_limit} minus {prompt_tokens} prompt tokens)",
        )
