"""A JSON-serialisable view of a built prompt, for debugging and the preview RPC."""

from __future__ import annotations

from typing import Any

from prompting.built import BuiltPrompt
from prompting.tokenizer import PromptTokenizer


def preview(built: BuiltPrompt, tokenizer: PromptTokenizer) -> dict[str, Any]:
    return {
        "format": built.format,
        "token_count": len(built.token_ids),
        "token_ids": list(built.token_ids),
        "pieces": [tokenizer.id_to_piece(i) for i in built.token_ids],
        "stop_token_ids": list(built.stop_token_ids),
        "stop_pieces": [tokenizer.id_to_piece(i) for i in built.stop_token_ids],
        "decode_as_infill": built.decode_as_infill,
    }
