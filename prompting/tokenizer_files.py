"""Reading the Hugging Face side files of a checkpoint: tokenizer_config.json and chat templates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or an empty dict when the file does not exist."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def token_content(value: object) -> str | None:
    """A token as written in tokenizer_config.json: a string or an AddedToken-like dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def special_token_strings(directory: Path) -> dict[str, str]:
    """bos/eos/unk/pad token strings from tokenizer_config.json, else special_tokens_map.json."""
    config = read_json(directory / TOKENIZER_CONFIG)
    fallback = read_json(directory / SPECIAL_TOKENS_MAP)
    strings: dict[str, str] = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        content = token_content(config.get(key)) or token_content(fallback.get(key))
        if content is not None:
            strings[key] = content
    return strings


def read_chat_template(directory: Path) -> str | None:
    """The checkpoint's default chat template: chat_template.jinja, else tokenizer_config.json."""
    template_file = directory / CHAT_TEMPLATE_FILE
    if template_file.is_file():
        return template_file.read_text(encoding="utf-8")
    template = read_json(directory / TOKENIZER_CONFIG).get("chat_template")
    if isinstance(template, list):  # the older named-templates form
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None
