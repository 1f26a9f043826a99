"""The result of every prompt builder."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuiltPrompt:
    """Token ids ready for the engine, the ids that end generation, and how to decode it.

    `format` names the layout ("completion", "infill-psm", "infill-spm", "llama2-chat",
    "codellama-70b-chat", "hf-chat-template"). `decode_as_infill` asks for
    `PromptTokenizer.decode_infill` on the generated ids (keeps the middle's leading space).
    """

    token_ids: list[int]
    stop_token_ids: list[int]
    format: str
    decode_as_infill: bool = False
