"""Fill in the middle (Code Llama 7B/13B), exactly as Meta's `infilling_prompt_tokens`.

PSM: BOS ▁<PRE> prefix ▁<SUF> suffix' ▁<MID>
SPM: BOS ▁<PRE> ▁<SUF> suffix' ▁<MID> prefix
where the prefix is encoded normally (implicit leading space) and suffix' without the implicit
leading space. An empty suffix keeps the full layout (the reference does; HF falls back to a
plain prompt). Generation stops at ▁<EOT>, not at EOS.
"""

from __future__ import annotations

from enum import StrEnum

from fleet_common.errors import InvalidArgument
from prompting import pieces
from prompting.built import BuiltPrompt
from prompting.encoding import bos_prefix, encode_field, special_id
from prompting.tokenizer import PromptTokenizer


class InfillOrder(StrEnum):
    PSM = "psm"  # prefix, suffix, middle (the default)
    SPM = "spm"  # suffix first


def build_infill(
    tokenizer: PromptTokenizer,
    prefix: str,
    suffix: str,
    order: InfillOrder = InfillOrder.PSM,
    *,
    prefix_field: str = "prefix",
    suffix_field: str = "suffix",
) -> BuiltPrompt:
    if not prefix and not suffix:
        raise InvalidArgument(
            prefix_field, "prefix and suffix are both empty; infill needs at least one of them"
        )
    purpose = "infill"
    pre, suf, mid, eot = (
        special_id(tokenizer, p, purpose)
        for p in (pieces.PREFIX, pieces.SUFFIX, pieces.MIDDLE, pieces.END_OF_TEXT)
    )
    prefix_ids = encode_field(tokenizer, prefix, prefix_field)
    suffix_ids = encode_field(tokenizer, suffix, suffix_field, leading_space=False)
    head = bos_prefix(tokenizer)
    if order is InfillOrder.SPM:
        ids = [*head, pre, suf, *suffix_ids, mid, *prefix_ids]
    else:
        ids = [*head, pre, *prefix_ids, suf, *suffix_ids, mid]
    return BuiltPrompt(
        token_ids=ids, stop_token_ids=[eot], format=f"infill-{order.value}", decode_as_infill=True
    )
