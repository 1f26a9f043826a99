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
from fleet_common.errors import FailedPrecondition, FleetError
from gateway.prompts import PromptBuilder, PromptInput
from gateway.settings import Limits
from prompting import pieces
from prompting.profile import ChatFormat, PromptProfile
from prompting.tokenizer import PromptTokenizer, load_prompt_tokenizer

CHAT_FORMATS = tuple(f.value for f in ChatFormat)
INFILL_PIECES = (pieces.PREFIX, pieces.SUFFIX, pieces.MIDDLE, pieces.END_OF_TEXT)


def infill_refusal(tokenizer: PromptTokenizer) -> str | None:
    """Why a model with this tokenizer cannot infill, or None: Code Llama 7B and 13B (base and
    Instruct) have the infill pieces; 34B and Python have none; 70B has them and `<step>`, but
    the catalog serves no 70B infill (docs/codellama-prompts.md, "Infill")."""
    missing = [p for p in INFILL_PIECES if tokenizer.piece_to_id(p) is None]
    if missing:
        return f"its tokenizer has no {', '.join(missing)} piece{'s' if len(missing) > 1 else ''}"
    if tokenizer.piece_to_id(pieces.STEP) is not None:
        return (f"its tokenizer is Code Llama 70B's (it has {pieces.STEP}), and 70B is not "
                "served for infill (its model cards leave infilling unchecked); pass --infill "
                "to see the layout anyway")
    return None


def _profile(args: argparse.Namespace, tokenizer: PromptTokenizer) -> PromptProfile:
    """Refuses an infill request (or a `<FILL_ME>` prompt) the model could not serve."""
    refusal = infill_refusal(tokenizer) if args.infill is None else (
        None if args.infill else "--no-infill was given")
    wants_infill = pieces.FILL_ME in args.prompt if args.prompt is not None else (
        args.prefix is not None or args.suffix is not None)  # as preview_request picks
    if refusal is not None and wants_infill:
        raise FailedPrecondition(f"{args.tokenizer} cannot infill: {refusal}")
    return PromptProfile(model=args.tokenizer, supports_infill=refusal is None,
                         chat_format=ChatFormat(args.chat_format) if args.chat_format else None)


def run_local_preview(args: argparse.Namespace) -> int:
    builder = PromptBuilder(Limits())
    try:
        tokenizer = load_prompt_tokenizer(Path(args.tokenizer))
        profile = _profile(args, tokenizer)
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
