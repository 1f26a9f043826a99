"""Start the gateway: `python -m gateway [--port N] [--port-file PATH] [...]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from gateway.server import serve
from gateway.settings import GatewaySettings


def parse_overrides(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--port-file")
    parser.add_argument("--redis-url")
    parser.add_argument("--registry-url")
    args = parser.parse_args(argv)
    return {k: v for k, v in vars(args).items() if v is not None}


async def _run(settings: GatewaySettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop)


def main(argv: list[str] | None = None) -> None:
    settings = GatewaySettings(**parse_overrides(argv))  # type: ignore[arg-type]
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_run(settings))


if __name__ == "__main__":
    main()
