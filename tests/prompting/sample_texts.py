"""Strings that exercise tokenizers: code, unicode, whitespace runs, format look-alikes."""

from __future__ import annotations

import random

_FRAGMENTS = (
    " ", "  ", "   ", "\t", "\n", "\r\n", "a", "b", "x", "def", "return", "self", "(", ")", ":",
    "{", "}", "==", "->", "é", "日本", "☺", "🎉", "Ω", "<", ">", "/", "s", "PRE", "0", "12", "3.14",
    "<s>", "</s>", "<unk>", "<step>", "<PRE>", " <SUF>", " <MID>", " <EOT>", "▁<PRE>", "▁",
    "[INST]",
    "<<SYS>>", "Source:", "<FILL_ME>", "\u200b", "\x00", "ﬁ",
)  # fmt: skip

FIXED_TEXTS = (
    "hello world",
    'def remove_non_ascii(s: str) -> str:\n    """ ',
    "\n    return result\n",
    "    indented = True\n\t\ttabs\n",
    "a  b   c    d     e",
    " " * 40,
    "x" + " " * 33 + "y",
    "日本語のテキスト ☺ émoji 🎉 Ωμέγα",
    "<s>[INST] <<SYS>>\nhi\n<</SYS>>\n\nq [/INST]</s>",
    "<PRE> <SUF> <MID> <EOT> ▁<PRE> <step> Source: user",
    'fn main() { println!("{}", 1 + 2); }\r\n',
    "",
)


def sample_texts(count: int, seed: int = 0) -> list[str]:
    """FIXED_TEXTS plus `count` random concatenations of tricky fragments (deterministic)."""
    rnd = random.Random(seed)
    generated = [
        "".join(rnd.choice(_FRAGMENTS) for _ in range(rnd.randint(1, 25))) for _ in range(count)
    ]
    return [*FIXED_TEXTS, *generated]
