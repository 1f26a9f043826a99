"""The tokenizer seam of the prompt builders, and loading one from a checkpoint directory.

Prompt builders never tokenize a rendered string that contains format tokens: they encode the
user's text with `encode` (which can never yield a special id) and insert special ids looked up
by piece string. Two implementations: SentencePiece (`tokenizer.model`, what Meta's reference
uses) and Hugging Face (`tokenizer.json`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class PromptTokenizer(Protocol):
    """What the prompt builders need from a tokenizer."""

    @property
    def bos_id(self) -> int | None:
        """Id that starts every sequence, or None for models that use no BOS."""

    @property
    def eos_id(self) -> int:
        """End-of-sequence id."""

    @property
    def vocab_size(self) -> int:
        """Number of ids, appended pieces and added tokens included."""

    @property
    def chat_template(self) -> str | None:
        """The checkpoint's Jinja chat template, if it ships one."""

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids `encode` never yields (control pieces / special added tokens, not `<unk>`)."""

    @property
    def special_tokens(self) -> Mapping[str, int]:
        """Strings that `encode_template` turns into single special ids."""

    @property
    def template_tokens(self) -> Mapping[str, str]:
        """Variables for chat templates: bos_token, eos_token (and unk/pad when known)."""

    def encode(self, text: str, *, leading_space: bool = True) -> list[int]:
        """Ids of plain text; special-token look-alikes in `text` stay plain text.

        `leading_space=False` encodes `text` as a continuation, without the implicit leading
        space SentencePiece adds (the reference's `encode_infilling`).
        """

    def encode_template(self, text: str) -> list[int]:
        """Ids of trusted template output, where special-token strings become their ids."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; special ids render as nothing."""

    def decode_infill(self, ids: Sequence[int]) -> str:
        """Text of a generated infill middle, without stripping its leading space."""

    def piece_to_id(self, piece: str) -> int | None:
        """Id of `piece`, or None when the vocabulary has no such piece."""

    def id_to_piece(self, token_id: int) -> str:
        """Piece string of `token_id` (IndexError when out of range)."""


def load_prompt_tokenizer(directory: Path) -> PromptTokenizer:
    """The tokenizer of a checkpoint: `tokenizer.model` when present (as in Meta's reference),
    else `tokenizer.json`. The chat template and token strings come from tokenizer_config.json."""
    from prompting.hf_tokenizer import HuggingFacePromptTokenizer
    from prompting.sp_tokenizer import SentencePiecePromptTokenizer

    directory = Path(directory)
    if (directory / "tokenizer.model").is_file():
        return SentencePiecePromptTokenizer.from_directory(directory)
    if (directory / "tokenizer.json").is_file():
        return HuggingFacePromptTokenizer.from_directory(directory)
    raise FileNotFoundError(f"{directory} has neither tokenizer.model nor tokenizer.json")
