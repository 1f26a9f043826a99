"""Llama 2 style chat (Code Llama 7B/13B/34B Instruct), exactly as Meta's `chat_completion`.

A first system message is folded into the first user message as
`<<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user}`. Each finished exchange is
BOS + encode(`[INST] {u.strip()} [/INST] {a.strip()} `) + EOS (note the trailing space); the
last user message is BOS + encode(`[INST] {u.strip()} [/INST]`). Generation stops at EOS.
"""

from __future__ import annotations

from collections.abc import Sequence

from prompting.built import BuiltPrompt
from prompting.encoding import bos_prefix, encode_segment
from prompting.messages import (
    ChatMessage,
    check_dialog,
    check_no_destinations,
    check_no_tags,
    message_field,
)
from prompting.pieces import RESERVED_CHAT_TAGS
from prompting.tokenizer import PromptTokenizer

FORMAT = "llama2-chat"
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def build_llama2_chat(tokenizer: PromptTokenizer, messages: Sequence[ChatMessage]) -> BuiltPrompt:
    check_dialog(messages)
    check_no_destinations(messages, "llama2")
    check_no_tags(
        messages, RESERVED_CHAT_TAGS, "Llama 2 chat messages must not contain the reserved tags"
    )

    # (text, [(field, user text)]) per turn, with the system message folded into the first user.
    turns = [
        (m.content, [(message_field(i, "content"), m.content)]) for i, m in enumerate(messages)
    ]
    if messages[0].role == "system":
        system_text, system_sources = turns[0]
        user_text, user_sources = turns[1]
        turns = [
            (B_SYS + system_text + E_SYS + user_text, system_sources + user_sources),
            *turns[2:],
        ]

    ids: list[int] = []
    for (user, user_sources), (answer, answer_sources) in zip(
        turns[:-1:2], turns[1::2], strict=True
    ):
        text = f"{B_INST} {user.strip()} {E_INST} {answer.strip()} "
        ids += bos_prefix(tokenizer) + encode_segment(
            tokenizer, text, user_sources + answer_sources
        )
        ids.append(tokenizer.eos_id)
    last, last_sources = turns[-1]
    ids += bos_prefix(tokenizer) + encode_segment(
        tokenizer, f"{B_INST} {last.strip()} {E_INST}", last_sources
    )
    return BuiltPrompt(
        token_ids=ids, stop_token_ids=[tokenizer.eos_id], format=FORMAT, decode_as_infill=False
    )
