"""What a model can do with prompts: modes and chat format. Catalog entries and registry rows
both produce a PromptProfile; the prompt builders only look at this."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from prompting.modes import Mode


class ChatFormat(StrEnum):
    LLAMA2 = "llama2"  # Code Llama 7B/13B/34B Instruct
    CODELLAMA_70B = "codellama-70b"  # Code Llama 70B Instruct ("Source:" / <step>)
    HF_TEMPLATE = "hf-template"  # the checkpoint's own Jinja chat template (e.g. ChatML)


_CHAT_FORMAT_VALUES = frozenset(f.value for f in ChatFormat)
_ALLOWED_CHAT_FORMATS = ", ".join(f.value for f in ChatFormat)


@dataclass(frozen=True)
class PromptProfile:
    """`model` is the name users ask for (used in error messages). Every model can complete."""

    model: str
    supports_infill: bool = False
    chat_format: ChatFormat | None = None
    chat_template: str | None = None  # for HF_TEMPLATE: overrides the tokenizer's template

    @property
    def supports_chat(self) -> bool:
        return self.chat_format is not None

    @property
    def modes(self) -> tuple[Mode, ...]:
        return (
            Mode.COMPLETION,
            *((Mode.INFILL,) if self.supports_infill else ()),
            *((Mode.CHAT,) if self.supports_chat else ()),
        )

    @classmethod
    def from_registry(
        cls,
        model: str,
        *,
        chat_format: str,
        supports_infill: bool,
        supports_chat: bool,
        chat_template: str | None = None,
    ) -> PromptProfile:
        """From a registry row: `chat_format` is "" or a ChatFormat value (ValueError otherwise).
        Called for every request the gateway builds: iterating an Enum costs more than the
        rest, so the values are read once."""
        if chat_format and chat_format not in _CHAT_FORMAT_VALUES:
            raise ValueError(f"model {model}: unknown chat_format {chat_format!r}; allowed: '' "
                             f"or {_ALLOWED_CHAT_FORMATS}")
        if supports_chat and not chat_format:
            raise ValueError(f"model {model}: supports_chat needs a chat_format "
                             f"({_ALLOWED_CHAT_FORMATS})")
        fmt = ChatFormat(chat_format) if supports_chat else None
        return cls(model=model, supports_infill=supports_infill, chat_format=fmt,
                   chat_template=chat_template or None)
