"""Refuses to start on a `FLEET_*` variable that nothing reads, e.g. a mistyped name.

Every role checks against the names of all roles: one ConfigMap serves the whole fleet, so a
gateway sees the workers' variables too and must not mistake them for typos.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from fleet_common.settings.base import ENV_PREFIX, FleetSettings, setting_fields
from fleet_common.settings.gateway import GatewaySettings
from fleet_common.settings.registry import RegistrySettings
from fleet_common.settings.worker import WorkerSettings

ROLES: tuple[type[FleetSettings], ...] = (GatewaySettings, WorkerSettings, RegistrySettings)

#: `FLEET_*` variables that are not settings of a role, and who reads them.
OTHER_VARIABLES: Mapping[str, str] = {
    "FLEET_VENV": "scripts/*.sh: the virtualenv to install into and run from",
    "FLEET_TEST_REDIS_URL": "tests: a Redis to use where redis-server is not installed",
    "FLEET_TEST_POSTGRES_URL": "tests: the PostgreSQL admin URL for the registry suite",
    "FLEET_ENGINE_TESTS": "tests: 1 also runs the tests that start a vLLM engine",
    "FLEET_API_KEY": "fleet_cli: the API key `fleet ops` sends to the registry (--api-key)",
}


def known_names() -> frozenset[str]:
    """Every `FLEET_*` name some part of the fleet reads."""
    names = {field.env_name for role in ROLES for field in setting_fields(role)}
    return frozenset(names | set(OTHER_VARIABLES))


def unknown_settings(environ: Mapping[str, str]) -> list[str]:
    """One line per unknown `FLEET_*` variable in `environ`, naming the closest known name."""
    known = known_names()
    problems = []
    for name in sorted(environ):
        upper = name.upper()  # pydantic-settings matches names case-insensitively
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        close = difflib.get_close_matches(upper, known, n=1)
        hint = f"did you mean {close[0]}?" if close else "no setting has a similar name"
        problems.append(f"unknown setting {name}; {hint}")
    return problems


def check_environment(environ: Mapping[str, str]) -> None:
    """Stops start-up (SystemExit: the message, status 1) on an unknown `FLEET_*` name."""
    problems = unknown_settings(environ)
    if problems:
        raise SystemExit("\n".join(problems))
