"""Command-line flags made from a settings class: one per setting, named after its variable.

FLEET_PORT_FILE is `--port-file`, FLEET_LIMIT_MAX_N is `--limit-max-n`; a bool is
`--x/--no-x`; a dict or list takes JSON, as its variable does. A flag overrides the variable.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from typing import Any

from fleet_common.settings.base import FleetSettings, SettingField, nested_settings, setting_fields


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc})") from exc


def _without_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _help(field: SettingField) -> str:
    where = field.env_name
    if field.info.default_factory is None:  # a computed default is the description's to explain
        default = field.info.default
        where += ", default " + ("unset" if default is None else json.dumps(default))
    parts = [field.info.description or "", f"[{where}]"]
    return " ".join(part for part in parts if part).replace("%", "%%")


def _add_flag(parser: argparse.ArgumentParser, field: SettingField) -> None:
    flags = (field.flag, *field.owner.flag_aliases.get(field.path[-1], ()))
    annotation = _without_none(field.info.annotation)
    common: dict[str, Any] = {"dest": field.dest, "default": None, "help": _help(field)}
    if annotation is bool:
        parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **common)
    elif annotation in (int, float, str):
        parser.add_argument(*flags, type=annotation, metavar=annotation.__name__.upper(),
                            **common)
    else:
        parser.add_argument(*flags, type=_json, metavar="JSON", **common)


def build_parser(cls: type[FleetSettings], *, prog: str,
                 description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in setting_fields(cls):
        _add_flag(parser, field)
    return parser


def overrides(cls: type[FleetSettings], args: argparse.Namespace) -> dict[str, object]:
    """The keyword arguments for `cls` that the given flags set; a nested group is built whole
    so that its other settings still come from the environment."""
    values: dict[str, object] = {}
    groups: dict[str, dict[str, object]] = {}
    for field in setting_fields(cls):
        value = getattr(args, field.dest)
        if value is None:
            continue
        if len(field.path) == 1:
            values[field.path[0]] = value
        else:
            groups.setdefault(field.path[0], {})[field.path[1]] = value
    for name, group in groups.items():
        nested = nested_settings(cls.model_fields[name])
        assert nested is not None  # setting_fields only nests settings classes
        values[name] = nested(**group)  # type: ignore[arg-type]
    return values
