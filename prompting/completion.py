"""Plain completion: BOS + the prompt; generation stops at EOS."""

from __future__ import annotations

from fleet_common.errors import InvalidArgument
from prompting.built import BuiltPrompt
from prompting.encoding import bos_prefix, encode_field
from prompting.tokenizer import PromptTokenizer

FORMAT = "completion"


def build_completion(tokenizer: PromptTokenizer, prompt: str) -> BuiltPrompt:
    if not prompt:
        raise InvalidArgument("prompt", "must not be empty")
    ids = bos_prefix(tokenizer) + encode_field(tokenizer, prompt, "prompt")
    return BuiltPrompt(
        token_ids=ids, stop_token_ids=[tokenizer.eos_id], format=FORMAT, decode_as_infill=False
    )
