"""`fleet preview --tokenizer DIR`: the ids a prompt format builds, with no gateway running.

For debugging a tokenizer or a checkpoint before it is registered. The request is the one
`fleet preview -m` would send and goes through the gateway's own PromptBuilder, so the two
differ only in where the tokenizer and the prompt format come from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fleet_cli.client import preview_request, print_prompt_table
from fleet_common.errors import FleetError
from gateway.prompts import PromptBuilder, PromptInput
from gateway.settings import Limits
from prompting.profile import ChatFormat, PromptProfile
from prompting.tokenizer import load_prompt_tokenizer

CHAT_FORMATS = tuple(f.value for f in ChatFormat)


def run_local_preview(args: argparse.Namespace) -> int:
    builder = PromptBuilder(Limits())
    try:
        tokenizer = load_prompt_tokenizer(Path(args.tokenizer))
        profile = PromptProfile(model=args.tokenizer, supports_infill=True,
                                chat_format=ChatFormat(args.chat_format) if args.chat_format
                                else None)
        prompt = builder.build_with(tokenizer, profile, PromptInput.preview(preview_request(args)))
    except (FleetError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    view = builder.view(tokenizer, prompt)
    if args.json:
        print(json.dumps(view, indent=2, ensure_ascii=False))
        return 0
    print_prompt_table(f"{args.tokenizer}  format={view['format']}  {view['token_count']} tokens",
                       view["token_ids"], view["pieces"], view["stop_token_ids"],
                       view["stop_pieces"])
    return 0
