"""PromptTokenizer over a Hugging Face `tokenizer.json` (the `tokenizers` library).

User text is encoded with special tokens NOT matched (`encode_special_tokens`, transformers'
`split_special_tokens=True`); trusted template output is encoded with them matched. The two
modes use two backend instances, so no shared flag is toggled between calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from tokenizers import Tokenizer

from prompting.tokenizer_base import BasePromptTokenizer
from prompting.tokenizer_files import (
    TOKENIZER_CONFIG,
    read_chat_template,
    read_json,
    special_token_strings,
)


class HuggingFacePromptTokenizer(BasePromptTokenizer):
    def __init__(
        self,
        tokenizer_json: str,
        *,
        token_strings: Mapping[str, str],
        add_bos_token: bool | None = None,
        chat_template: str | None = None,
    ) -> None:
        """`token_strings`: bos/eos/unk/pad token strings. `add_bos_token` None: follow the
        tokenizer's own post-processor."""
        self._plain = Tokenizer.from_str(tokenizer_json)
        self._plain.encode_special_tokens = True
        self._template = Tokenizer.from_str(tokenizer_json)
        self._template.encode_special_tokens = False
        self._token_strings: Mapping[str, str] = MappingProxyType(dict(token_strings))

        added = self._plain.get_added_tokens_decoder()
        specials = {token.content: token_id for token_id, token in added.items() if token.special}
        unk = self._token_id("unk_token")
        super().__init__(
            special_tokens=specials,
            special_ids=frozenset(i for i in specials.values() if i != unk),
            chat_template=chat_template,
        )
        eos = self._token_id("eos_token")
        if eos is None:
            raise ValueError("the tokenizer names no eos_token that is in its vocabulary")
        self._eos_id = eos
        self._bos_id = self._resolve_bos(add_bos_token)

    @classmethod
    def from_directory(cls, directory: Path) -> HuggingFacePromptTokenizer:
        add_bos = read_json(directory / TOKENIZER_CONFIG).get("add_bos_token")
        return cls(
            (directory / "tokenizer.json").read_text(encoding="utf-8"),
            token_strings=special_token_strings(directory),
            add_bos_token=add_bos if isinstance(add_bos, bool) else None,
            chat_template=read_chat_template(directory),
        )

    def _token_id(self, name: str) -> int | None:
        token = self._token_strings.get(name)
        return None if token is None else self._plain.token_to_id(token)

    def _resolve_bos(self, add_bos_token: bool | None) -> int | None:
        bos = self._token_id("bos_token")
        if add_bos_token is None:
            add_bos_token = bos is not None and self._plain.encode("a").ids[:1] == [bos]
        return bos if add_bos_token else None

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def vocab_size(self) -> int:
        return self._plain.get_vocab_size(with_added_tokens=True)

    @property
    def template_tokens(self) -> Mapping[str, str]:
        return self._token_strings

    def _encode_plain(self, text: str) -> list[int]:
        # The "fast" batch call skips character offsets, which nothing here reads: a quarter
        # of the gateway's tokenization CPU.
        return self._plain.encode_batch_fast([text], add_special_tokens=False)[0].ids

    def _encode_plain_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._plain.encode_batch_fast(texts, add_special_tokens=False)]

    def encode_template(self, text: str) -> list[int]:
        return self._template.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._plain.decode(list(ids), skip_special_tokens=True)

    def piece_to_id(self, piece: str) -> int | None:
        return self._plain.token_to_id(piece)

    def id_to_piece(self, token_id: int) -> str:
        piece = self._plain.id_to_token(token_id)
        if piece is None:
            raise IndexError(
                f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})"
            )
        return piece
