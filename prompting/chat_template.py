"""Chat through the checkpoint's own Hugging Face chat template (models outside Code Llama).

The template is rendered with `add_generation_prompt=True` (transformers' renderer, so templates
behave as with `apply_chat_template`) and the result is encoded with special-token strings
matched (`encode_template`). Because that encoding would also match such strings inside a
message, messages containing any special-token string are refused. No BOS is added beyond what
the template writes (double BOS is a classic bug). Generation stops at EOS and at the template's
end-of-turn token, found by rendering a probe exchange and reading which special token follows
the assistant's text (`<|im_end|>` for ChatML). The probe is rendered once per (template,
tokenizer), not per request.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping, Sequence

from fleet_common.errors import FailedPrecondition, InvalidArgument
from prompting.built import BuiltPrompt
from prompting.messages import ChatMessage, check_dialog, check_no_destinations, message_field
from prompting.tokenizer import PromptTokenizer

FORMAT = "hf-chat-template"
_PROBE_ANSWER = "probe-answer-5f0c1e"

# tokenizer -> template -> end-of-turn ids; an entry goes with its tokenizer.
_end_of_turn: weakref.WeakKeyDictionary[PromptTokenizer, dict[str, tuple[int, ...]]] = (
    weakref.WeakKeyDictionary())
_end_of_turn_lock = threading.Lock()


def build_template_chat(
    tokenizer: PromptTokenizer, messages: Sequence[ChatMessage], *, template: str | None = None
) -> BuiltPrompt:
    """`template` (a registry template version) overrides the tokenizer's own chat template."""
    template = template or tokenizer.chat_template
    if template is None:
        raise FailedPrecondition("the model's tokenizer has no chat template, so it cannot chat")
    check_dialog(messages)
    check_no_destinations(messages, "hf-template")
    _check_no_special_strings(messages, tokenizer.special_tokens)

    rendered = _render(
        template, [{"role": m.role, "content": m.content} for m in messages], tokenizer
    )
    ids = tokenizer.encode_template(rendered)
    stops = [tokenizer.eos_id, *end_of_turn_ids(template, tokenizer)]
    return BuiltPrompt(
        token_ids=ids,
        stop_token_ids=list(dict.fromkeys(stops)),
        format=FORMAT,
        decode_as_infill=False,
    )


def end_of_turn_ids(template: str, tokenizer: PromptTokenizer) -> tuple[int, ...]:
    """The special token the template writes right after an assistant message, if any;
    probed on the first call for a (template, tokenizer), remembered afterwards."""
    with _end_of_turn_lock:
        known = _end_of_turn.get(tokenizer, {}).get(template)
    if known is not None:
        return known
    found = tuple(_probe_end_of_turn(template, tokenizer))
    with _end_of_turn_lock:
        _end_of_turn.setdefault(tokenizer, {})[template] = found
    return found


def _probe_end_of_turn(template: str, tokenizer: PromptTokenizer) -> list[int]:
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE_ANSWER}]
    try:
        rendered = _render(template, probe, tokenizer, add_generation_prompt=False)
    except (InvalidArgument, FailedPrecondition):
        return []
    _, found, after = rendered.partition(_PROBE_ANSWER)
    after = after.lstrip()
    if not found:
        return []
    for text in sorted(tokenizer.special_tokens, key=len, reverse=True):
        if after.startswith(text):
            return [tokenizer.special_tokens[text]]
    return []


def _check_no_special_strings(
    messages: Sequence[ChatMessage], special_tokens: Mapping[str, int]
) -> None:
    for index, message in enumerate(messages):
        found = [
            (message.content.find(text), text)
            for text in special_tokens
            if text and text in message.content
        ]
        if found:
            _, first = min(found)
            raise InvalidArgument(
                message_field(index, "content"),
                f"contains {first!r}, a special token of this model; "
                "messages must not contain special tokens",
            )


def _render(
    template: str,
    conversation: list[dict[str, str]],
    tokenizer: PromptTokenizer,
    *,
    add_generation_prompt: bool = True,
) -> str:
    import jinja2
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, _ = render_jinja_template(
            conversations=[conversation],
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            **tokenizer.template_tokens,
        )
    except jinja2.TemplateSyntaxError as error:
        raise FailedPrecondition(f"the model's chat template does not compile: {error}") from error
    except jinja2.TemplateError as error:
        raise InvalidArgument(
            "messages", f"rejected by the model's chat template: {error}"
        ) from error
    return rendered[0]
