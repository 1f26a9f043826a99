"""Tokenizer directories in the three Code Llama layouts, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm

from prompting.hf_tokenizer import HuggingFacePromptTokenizer
from prompting.sp_tokenizer import SentencePiecePromptTokenizer
from prompting.tokenizer import PromptTokenizer
from tests.support.codellama_tokenizer import LAYOUTS, build_hf_tokenizer_files

TOKENIZER_KINDS = ("sentencepiece", "huggingface")


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """layout -> directory holding tokenizer.model, tokenizer.json and the HF config files."""
    root = tmp_path_factory.mktemp("tokenizers")
    return {layout: build_hf_tokenizer_files(layout, root / layout) for layout in LAYOUTS}


@pytest.fixture(scope="session")
def sp_models(tokenizer_dirs: dict[str, Path]) -> dict[str, spm.SentencePieceProcessor]:
    """layout -> the raw SentencePiece processor: the independent oracle for expected ids."""
    return {
        layout: spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
        for layout, path in tokenizer_dirs.items()
    }


@pytest.fixture(scope="session")
def prompt_tokenizers(tokenizer_dirs: dict[str, Path]) -> dict[tuple[str, str], PromptTokenizer]:
    """(kind, layout) -> the code under test's tokenizer, over tokenizer.model or tokenizer.json."""
    built: dict[tuple[str, str], PromptTokenizer] = {}
    for layout, path in tokenizer_dirs.items():
        built["sentencepiece", layout] = SentencePiecePromptTokenizer.from_directory(path)
        built["huggingface", layout] = HuggingFacePromptTokenizer.from_directory(path)
    return built
