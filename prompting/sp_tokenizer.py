"""PromptTokenizer over a SentencePiece model (Meta's reference tokenizer)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import sentencepiece as spm

from prompting.tokenizer_base import BasePromptTokenizer
from prompting.tokenizer_files import read_chat_template


class SentencePiecePromptTokenizer(BasePromptTokenizer):
    """SentencePiece never produces CONTROL pieces (BOS, EOS, Code Llama's appended pieces) from
    raw text, so `encode` is safe for any user text."""

    def __init__(self, model_file: Path, *, chat_template: str | None = None) -> None:
        self._sp = spm.SentencePieceProcessor(model_file=str(model_file))
        controls = {
            self._sp.id_to_piece(i): i
            for i in range(self._sp.get_piece_size())
            if self._sp.is_control(i)
        }
        # Longest first, so a piece that contains another wins.
        alternatives = sorted(controls, key=len, reverse=True)
        self._special_re = (
            re.compile("|".join(map(re.escape, alternatives))) if alternatives else None
        )
        super().__init__(
            special_tokens=controls,
            special_ids=frozenset(controls.values()),
            chat_template=chat_template,
        )

    @classmethod
    def from_directory(cls, directory: Path) -> SentencePiecePromptTokenizer:
        return cls(directory / "tokenizer.model", chat_template=read_chat_template(directory))

    @property
    def bos_id(self) -> int | None:
        bos = self._sp.bos_id()
        return bos if bos >= 0 else None

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def template_tokens(self) -> Mapping[str, str]:
        ids = {
            "bos_token": self._sp.bos_id(),
            "eos_token": self._sp.eos_id(),
            "unk_token": self._sp.unk_id(),
        }
        return {name: self._sp.id_to_piece(i) for name, i in ids.items() if i >= 0}

    def _encode_plain(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def _encode_plain_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(ids) for ids in self._sp.encode(texts)]

    def encode_template(self, text: str) -> list[int]:
        """Control-piece strings become their ids; each text run between them is encoded on its
        own, with the implicit leading space, like the reference's per-segment `encode`."""
        if self._special_re is None:
            return self._encode_plain(text)
        ids: list[int] = []
        position = 0
        for match in self._special_re.finditer(text):
            ids += (
                self._encode_plain(text[position : match.start()])
                if match.start() > position
                else []
            )
            ids.append(self.special_tokens[match.group()])
            position = match.end()
        return ids + (self._encode_plain(text[position:]) if position < len(text) else [])

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode(list(ids))

    def piece_to_id(self, piece: str) -> int | None:
        token_id = self._sp.piece_to_id(piece)
        return token_id if self._sp.id_to_piece(token_id) == piece else None

    def id_to_piece(self, token_id: int) -> str:
        if not 0 <= token_id < self._sp.get_piece_size():
            raise IndexError(
                f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})"
            )
        return self._sp.id_to_piece(token_id)
