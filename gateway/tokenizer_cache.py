"""Prompt tokenizers by checkpoint directory, each loaded once.

Loading parses the tokenizer files (about 0.1 s for a 49k-piece BPE `tokenizer.json`), so the
gateway loads every served version's tokenizer before it serves (`PromptBuilder.preload`), and a
version that appears later is loaded off the event loop on its first request. Concurrent first
uses of one directory wait for a single load; a failed load is not remembered, so the next use
tries again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from prompting.tokenizer import PromptTokenizer, load_prompt_tokenizer


class TokenizerCache:
    def __init__(self, load: Callable[[Path], PromptTokenizer] = load_prompt_tokenizer) -> None:
        self._load = load
        self._loaded: dict[str, PromptTokenizer] = {}
        self._loading: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def loaded(self, checkpoint_dir: str) -> PromptTokenizer | None:
        """The tokenizer when it is already loaded, else None (never blocks)."""
        return self._loaded.get(checkpoint_dir)

    def get(self, checkpoint_dir: str) -> PromptTokenizer:
        """The tokenizer of `checkpoint_dir`, loaded here (blocking) on first use."""
        tokenizer = self._loaded.get(checkpoint_dir)
        if tokenizer is not None:
            return tokenizer
        with self._guard:
            lock = self._loading.setdefault(checkpoint_dir, threading.Lock())
        with lock:
            tokenizer = self._loaded.get(checkpoint_dir)
            if tokenizer is None:
                tokenizer = self._load(Path(checkpoint_dir))
                self._loaded[checkpoint_dir] = tokenizer
            return tokenizer


#: The process's cache: every PromptBuilder made without its own shares it.
SHARED_TOKENIZERS = TokenizerCache()
