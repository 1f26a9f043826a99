"""`fleet preview --tokenizer DIR`: the ids a prompt format builds, with no gateway running.

For debugging a tokenizer or a checkpoint before it is registered; a served model's preview goes
through the gateway's PreviewPrompt instead (same builders, plus the model's own limits).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fleet_cli.client import chat_turns
from fleet_common.errors import FleetError
from prompting.built import BuiltPrompt
from prompting.formats import build_chat_prompt, build_completion_prompt, build_infill_prompt
from prompting.infill import InfillOrder
from prompting.messages import ChatMessage
from prompting.preview import preview
from prompting.profile import ChatFormat, PromptProfile
from prompting.tokenizer import load_prompt_tokenizer

CHAT_FORMATS = tuple(f.value for f in ChatFormat)


def build_local(args: argparse.Namespace) -> tuple[BuiltPrompt, Any]:
    directory = Path(args.tokenizer)
    tokenizer = load_prompt_tokenizer(directory)
    profile = PromptProfile(model=str(directory), supports_infill=True,
                            chat_format=ChatFormat(args.chat_format) if args.chat_format else None)
    if args.prompt is not None:
        return build_completion_prompt(tokenizer, profile, args.prompt), tokenizer
    if args.prefix is not None or args.suffix is not None:
        order = InfillOrder.SPM if args.spm else InfillOrder.PSM
        return build_infill_prompt(tokenizer, profile, args.prefix or "", args.suffix or "",
                                   order), tokenizer
    messages = [ChatMessage(role, text) for role, text in chat_turns(args.system, args.turns)]
    return build_chat_prompt(tokenizer, profile, messages), tokenizer


def run_local_preview(args: argparse.Namespace) -> int:
    try:
        built, tokenizer = build_local(args)
    except (FleetError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    view = preview(built, tokenizer)
    if args.json:
        print(json.dumps(view, indent=2, ensure_ascii=False))
        return 0
    print(f"{args.tokenizer}  format={view['format']}  {view['token_count']} tokens")
    for token_id, piece in zip(view["token_ids"], view["pieces"]):
        print(f"{token_id:>8}  {piece!r}")
    stops = ", ".join(f"{i} {p!r}" for i, p in zip(view["stop_token_ids"], view["stop_pieces"]))
    print(f"stop tokens: {stops}")
    return 0
