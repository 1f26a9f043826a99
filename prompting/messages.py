"""Chat messages and the dialog rules every chat format shares.

Rules (Meta's reference for Code Llama Instruct; we apply them to every chat format so clients
meet one contract): roles are system, user, assistant; an optional system message comes first;
then user and assistant alternate, starting and ending with user; the last user message is not
empty. Errors name the offending field (`messages[2].role`) and say what is allowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fleet_common.errors import InvalidArgument

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str
    destination: str | None = None


def message_field(index: int, name: str) -> str:
    """Request path of a message field, e.g. `messages[2].role`."""
    return f"messages[{index}].{name}"


def check_dialog(messages: Sequence[ChatMessage]) -> None:
    """Raise InvalidArgument unless `messages` is system?, user, (assistant, user)*."""
    if not messages:
        raise InvalidArgument(
            "messages", "must hold at least one message; the last one from 'user'"
        )
    for index, message in enumerate(messages):
        if message.role not in ROLES:
            raise InvalidArgument(
                message_field(index, "role"),
                f"unknown role {message.role!r}; allowed roles are {', '.join(ROLES)}",
            )
    start = 1 if messages[0].role == "system" else 0
    for index in range(start, len(messages)):
        expected = "user" if (index - start) % 2 == 0 else "assistant"
        role = messages[index].role
        if role == expected:
            continue
        if role == "system":
            problem = "'system' is allowed only as the first message"
        else:
            problem = (
                f"expected {expected!r}: after an optional first 'system' message, "
                "roles alternate user, assistant, user, ..."
            )
        raise InvalidArgument(message_field(index, "role"), problem)
    last = len(messages) - 1
    if messages[last].role != "user":
        raise InvalidArgument(
            message_field(last, "role"),
            "the last message must be from 'user' (the model answers it), "
            f"got {messages[last].role!r}",
        )
    if not messages[last].content.strip():
        raise InvalidArgument(
            message_field(last, "content"), "the last user message must not be empty"
        )


def check_no_tags(messages: Sequence[ChatMessage], tags: Sequence[str], why: str) -> None:
    """Raise InvalidArgument on the first message whose content contains one of `tags`."""
    for index, message in enumerate(messages):
        for tag in tags:
            if tag in message.content:
                listed = ", ".join(repr(t) for t in tags)
                raise InvalidArgument(
                    message_field(index, "content"), f"contains {tag!r}; {why}: {listed}"
                )


def check_no_destinations(messages: Sequence[ChatMessage], chat_format: str) -> None:
    for index, message in enumerate(messages):
        if message.destination is not None:
            raise InvalidArgument(
                message_field(index, "destination"),
                f"is not supported by the {chat_format} chat format; "
                "only codellama-70b messages have a destination",
            )
