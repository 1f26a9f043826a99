"""Prompt building for Code Llama (and chat-template models): token ids, never re-tokenized text.

Public API:
- load_prompt_tokenizer(directory) -> PromptTokenizer
- build_completion_prompt / build_infill_prompt / build_chat_prompt(tokenizer, profile, ...)
  -> BuiltPrompt
- PromptProfile, ChatFormat, Mode; catalog: CATALOG, catalog_entry, CodeLlamaVariant
- check_context_budget(prompt_tokens, max_new_tokens, context_limit)
- preview(built, tokenizer) -> dict
"""

from prompting.built import BuiltPrompt
from prompting.catalog import (
    CATALOG,
    CodeLlamaVariant,
    Flavour,
    catalog_entry,
    chat_model_names,
    infill_model_names,
)
from prompting.formats import build_chat_prompt, build_completion_prompt, build_infill_prompt
from prompting.infill import InfillOrder
from prompting.messages import ChatMessage
from prompting.preview import preview
from prompting.profile import ChatFormat, Mode, PromptProfile
from prompting.tokenizer import PromptTokenizer, load_prompt_tokenizer
from prompting.validation import check_context_budget

__all__ = [
    "CATALOG",
    "BuiltPrompt",
    "ChatFormat",
    "ChatMessage",
    "CodeLlamaVariant",
    "Flavour",
    "InfillOrder",
    "Mode",
    "PromptProfile",
    "PromptTokenizer",
    "build_chat_prompt",
    "build_completion_prompt",
    "build_infill_prompt",
    "catalog_entry",
    "chat_model_names",
    "check_context_budget",
    "infill_model_names",
    "load_prompt_tokenizer",
    "preview",
]
