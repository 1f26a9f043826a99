"""The base of every role's settings and the walk over their fields that flags and the
environment check share."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "FLEET_"


class FleetSettings(BaseSettings):
    """Settings read from `FLEET_*` variables; a keyword that names no field is an error."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    #: Extra command-line spellings of a field's flag (field name -> flags), for flags older
    #: than the rule that a flag is its variable's name.
    flag_aliases: ClassVar[Mapping[str, tuple[str, ...]]] = {}


@dataclass(frozen=True)
class SettingField:
    """One leaf setting: where it sits in the settings (`path`), its variable and its field."""

    owner: type[FleetSettings]
    path: tuple[str, ...]
    env_name: str
    info: FieldInfo

    @property
    def flag(self) -> str:
        """`--port-file` for FLEET_PORT_FILE, `--limit-max-n` for FLEET_LIMIT_MAX_N."""
        return "--" + self.env_name.removeprefix(ENV_PREFIX).lower().replace("_", "-")

    @property
    def dest(self) -> str:
        return "__".join(self.path)


def nested_settings(info: FieldInfo) -> type[FleetSettings] | None:
    """The settings class of a field that groups settings under its own prefix (e.g. limits)."""
    annotation: Any = info.annotation
    if isinstance(annotation, type) and issubclass(annotation, FleetSettings):
        return annotation
    return None


def setting_fields(cls: type[FleetSettings]) -> Iterator[SettingField]:
    """Every leaf setting of `cls`; a nested settings field yields its own fields (one level)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    for name, info in cls.model_fields.items():
        nested = nested_settings(info)
        if nested is None:
            yield SettingField(cls, (name,), f"{prefix}{name}".upper(), info)
            continue
        nested_prefix = str(nested.model_config.get("env_prefix", ""))
        for inner, inner_info in nested.model_fields.items():
            yield SettingField(nested, (name, inner), f"{nested_prefix}{inner}".upper(),
                               inner_info)
