"""How a role reads its settings at start-up: flags over `FLEET_*` variables, typos refused."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

from pydantic import ValidationError

from fleet_common.settings.base import FleetSettings, setting_fields
from fleet_common.settings.command_line import build_parser, overrides
from fleet_common.settings.environment import check_environment

S = TypeVar("S", bound=FleetSettings)


def _problems(cls: type[FleetSettings], exc: ValidationError) -> list[str]:
    """One line per invalid value, naming its variable and flag (`exc.title` is the class
    that refused it: `cls` or a nested group)."""
    names = {(field.owner.__name__, field.path[-1]): f"{field.env_name} ({field.flag})"
             for field in setting_fields(cls)}
    lines = []
    for error in exc.errors():
        where = str(error["loc"][0]) if error["loc"] else "?"
        named = names.get((exc.title, where), where)
        lines.append(f"  {named}: {error['msg']}, got {error.get('input')!r}")
    return lines


def load_settings(cls: type[S], argv: Sequence[str] | None = None, *, prog: str,
                  description: str | None = None) -> S:
    """`cls` from the environment with `argv`'s flags on top (None: sys.argv). Exits with a
    message on an unknown `FLEET_*` variable, a bad flag or an invalid value."""
    args = build_parser(cls, prog=prog, description=description).parse_args(argv)
    check_environment(os.environ)
    try:
        return cls(**overrides(cls, args))
    except ValidationError as exc:
        raise SystemExit("\n".join([f"{prog}: invalid settings:", *_problems(cls, exc)])) from exc
