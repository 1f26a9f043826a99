"""Code Llama 70B Instruct chat ("Source:" format), exactly as Meta's `dialog_prompt_tokens`.

BOS; per message: encode(` Source: {role}` [+ `\\nDestination: {d}`]), then, if the content is
not empty, encode(`\\n\\n {content.strip()}`), then `<step>`; finally
encode(` Source: assistant\\nDestination: user`) + encode(`\\n\\n `). A missing system message
is inserted with empty content. Generation stops at `<step>`.
"""

from __future__ import annotations

from collections.abc import Sequence

from fleet_common.errors import InvalidArgument
from prompting import pieces
from prompting.built import BuiltPrompt
from prompting.encoding import bos_prefix, encode_segment, special_id
from prompting.messages import ChatMessage, check_dialog, check_no_tags, message_field
from prompting.tokenizer import PromptTokenizer

FORMAT = "codellama-70b-chat"
REPLY_HEADER = " Source: assistant\nDestination: user"
BODY_START = "\n\n "


def build_codellama70b_chat(
    tokenizer: PromptTokenizer, messages: Sequence[ChatMessage]
) -> BuiltPrompt:
    check_dialog(messages)
    check_no_tags(
        messages, pieces.RESERVED_CHAT_TAGS, "chat messages must not contain the reserved tags"
    )
    _check_destinations(messages)
    step = special_id(tokenizer, pieces.STEP, "the codellama-70b chat format")

    indexed: list[tuple[int | None, ChatMessage]] = list(enumerate(messages))
    if messages[0].role != "system":
        indexed.insert(0, (None, ChatMessage(role="system", content="")))

    ids = bos_prefix(tokenizer)
    for index, message in indexed:
        header = f" Source: {message.role.strip()}"
        header_sources: list[tuple[str, str]] = []
        if message.destination is not None and index is not None:
            header += f"\nDestination: {message.destination.strip()}"
            header_sources.append((message_field(index, "destination"), message.destination))
        ids += encode_segment(tokenizer, header, header_sources)
        if message.content and index is not None:
            body = BODY_START + message.content.strip()
            ids += encode_segment(
                tokenizer, body, [(message_field(index, "content"), message.content)]
            )
        ids.append(step)
    ids += tokenizer.encode(REPLY_HEADER) + tokenizer.encode(BODY_START)
    return BuiltPrompt(token_ids=ids, stop_token_ids=[step], format=FORMAT, decode_as_infill=False)


def _check_destinations(messages: Sequence[ChatMessage]) -> None:
    for index, message in enumerate(messages):
        destination = message.destination
        if destination is None:
            continue
        if not destination.strip() or "\n" in destination or "\r" in destination:
            raise InvalidArgument(
                message_field(index, "destination"),
                f"must be one non-empty line (e.g. 'user'), got {destination!r}",
            )
        for tag in pieces.RESERVED_CHAT_TAGS:
            if tag in destination:
                raise InvalidArgument(
                    message_field(index, "destination"),
                    f"must not contain the reserved tag {tag!r}",
                )
