"""Piece strings the Code Llama formats use. Ids are always looked up from these, never assumed."""

from __future__ import annotations

PREFIX = "▁<PRE>"
SUFFIX = "▁<SUF>"
MIDDLE = "▁<MID>"
END_OF_TEXT = "▁<EOT>"
STEP = "<step>"
FORMAT_PIECES = (PREFIX, SUFFIX, MIDDLE, END_OF_TEXT, STEP)

# Meta's reference prepends this character to text that must be encoded without SentencePiece's
# implicit leading space, then drops the ids of the space and the sentinel.
SENTINEL = "☺"

# transformers' CodeLlamaTokenizer splits a completion prompt at this marker into prefix/suffix.
FILL_ME = "<FILL_ME>"

# The reference refuses dialogs whose messages contain any of these (llama/generation.py,
# SPECIAL_TAGS): they would let a user forge turns of the Llama 2 or the 70B format.
RESERVED_CHAT_TAGS = ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "<step>")
