"""The three kinds of prompt a caller can send."""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    COMPLETION = "completion"
    INFILL = "infill"
    CHAT = "chat"
