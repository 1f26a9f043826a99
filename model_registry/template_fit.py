"""Does a template version fit a checkpoint's tokenizer? Checked before a model version exists."""

from __future__ import annotations

from pathlib import Path

from fleet_common.errors import FailedPrecondition, FleetError
from model_registry.records import CheckpointRecord, TemplateRecord
from prompting.chat_template import build_template_chat
from prompting.messages import ChatMessage
from prompting.pieces import END_OF_TEXT, MIDDLE, PREFIX, STEP, SUFFIX
from prompting.tokenizer import load_prompt_tokenizer


def check_template_fits(checkpoint: CheckpointRecord, template: TemplateRecord) -> None:
    label = f"template {template.name}@{template.version}"
    try:
        tokenizer = load_prompt_tokenizer(Path(checkpoint.directory))
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(f"checkpoint {checkpoint.name!r}: cannot load its tokenizer "
                                 f"from {checkpoint.directory}: {exc}") from exc
    needed = []
    if template.infill:
        needed += [PREFIX, SUFFIX, MIDDLE, END_OF_TEXT]
    if template.chat_format == "codellama-70b":
        needed.append(STEP)
    missing = [piece for piece in needed if tokenizer.piece_to_id(piece) is None]
    if missing:
        raise FailedPrecondition(
            f"{label} does not fit checkpoint {checkpoint.name!r}: its tokenizer has no "
            f"{', '.join(map(repr, missing))} piece(s), which the template's "
            f"{'infill' if template.infill else template.chat_format} layout needs")
    if template.chat_format == "hf-template":
        if not (template.chat_template or tokenizer.chat_template):
            raise FailedPrecondition(f"{label} uses the tokenizer's chat template, but "
                                     f"checkpoint {checkpoint.name!r} has none")
        try:
            build_template_chat(tokenizer, [ChatMessage(role="user", content="hello")],
                                template=template.chat_template or None)
        except FleetError as exc:
            raise FailedPrecondition(f"{label} does not render with checkpoint "
                                     f"{checkpoint.name!r}'s tokenizer: {exc.message}") from exc
