"""Entry points: build a request's prompt for a model, refusing modes the model cannot do.

The format modules (completion, infill, chat_llama2, chat_codellama70b, chat_template) build
ids; this module checks the PromptProfile and picks one.
"""

from __future__ import annotations

from collections.abc import Sequence

from fleet_common.errors import FailedPrecondition, InvalidArgument
from prompting.built import BuiltPrompt
from prompting.catalog import chat_model_names, infill_model_names
from prompting.chat_codellama70b import build_codellama70b_chat
from prompting.chat_llama2 import build_llama2_chat
from prompting.chat_template import build_template_chat
from prompting.completion import build_completion
from prompting.infill import InfillOrder, build_infill
from prompting.messages import ChatMessage
from prompting.pieces import FILL_ME
from prompting.profile import ChatFormat, PromptProfile
from prompting.tokenizer import PromptTokenizer

_CHAT_BUILDERS = {
    ChatFormat.LLAMA2: build_llama2_chat,
    ChatFormat.CODELLAMA_70B: build_codellama70b_chat,
    ChatFormat.HF_TEMPLATE: build_template_chat,
}


def build_completion_prompt(
    tokenizer: PromptTokenizer, profile: PromptProfile, prompt: str
) -> BuiltPrompt:
    """BOS + prompt; a single `<FILL_ME>` marker turns it into a PSM infill of (before, after)."""
    markers = prompt.count(FILL_ME)
    if markers > 1:
        raise InvalidArgument(
            "prompt",
            f"contains {markers} {FILL_ME} markers; "
            "at most one is allowed (it marks where to infill)",
        )
    if markers == 1:
        _require_infill(profile, f"the prompt contains {FILL_ME}")
        before, after = prompt.split(FILL_ME)
        return build_infill(
            tokenizer, before, after, InfillOrder.PSM, prefix_field="prompt", suffix_field="prompt"
        )
    return build_completion(tokenizer, prompt)


def build_infill_prompt(
    tokenizer: PromptTokenizer,
    profile: PromptProfile,
    prefix: str,
    suffix: str,
    order: InfillOrder = InfillOrder.PSM,
) -> BuiltPrompt:
    _require_infill(profile, "infill was requested")
    return build_infill(tokenizer, prefix, suffix, order)


def build_chat_prompt(
    tokenizer: PromptTokenizer, profile: PromptProfile, messages: Sequence[ChatMessage]
) -> BuiltPrompt:
    if profile.chat_format is None:
        raise FailedPrecondition(
            f"model {profile.model} cannot chat; chat is supported by Instruct models "
            f"({', '.join(chat_model_names())}) and models registered with a chat format"
        )
    if profile.chat_format is ChatFormat.HF_TEMPLATE:
        return build_template_chat(tokenizer, messages, template=profile.chat_template)
    return _CHAT_BUILDERS[profile.chat_format](tokenizer, messages)


def _require_infill(profile: PromptProfile, why: str) -> None:
    if not profile.supports_infill:
        raise FailedPrecondition(
            f"model {profile.model} cannot infill ({why}); infill is supported by "
            f"{', '.join(infill_model_names())}"
        )
