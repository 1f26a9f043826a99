"""Start the gateway: `python -m gateway [--port N] [--port-file PATH] [...]`.

Every setting is a `FLEET_*` environment variable and a flag (`--help` lists them); a flag
wins over its variable.
"""

from __future__ import annotations

import functools

from fleet_common.logs import configure_logging
from fleet_common.settings.loading import load_settings
from fleet_server import tracing
from fleet_server.bootstrap import run_until_signalled
from gateway.server import serve
from gateway.settings import GatewaySettings


def main(argv: list[str] | None = None) -> None:
    settings = load_settings(GatewaySettings, argv, prog="python -m gateway",
                             description=__doc__)
    configure_logging(settings.log_level, settings.log_format)
    tracing.configure("codellama-fleet-gateway")
    try:
        run_until_signalled(functools.partial(serve, settings))
    finally:
        tracing.shutdown()


if __name__ == "__main__":
    main()
