"""Run a bus service until SIGTERM/SIGINT, the way the local-run supervisor and Kubernetes stop it:
ready only once connected and serving; on a signal, stop taking work and finish (or hand back)
what is in flight before exiting."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from typing import Protocol

from microturn.config import ConfigError, Settings, load_settings
from microturn.telemetry import Telemetry, configure_logging, setup_telemetry

log = logging.getLogger(__name__)


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def run_until_signalled(service: Service, telemetry: Telemetry | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    if telemetry is not None:
        telemetry.set_ready()
    log.info("%s serving", service.name)
    try:
        await stop.wait()
    finally:
        log.info("%s stopping", service.name)
        if telemetry is not None:
            telemetry.set_ready(False)
        await service.stop()
        log.info("%s stopped", service.name)


def run_service(name: str, make_service: Callable[[Settings], Service], settings: Settings) -> int:
    """Run a bus service (``microturn tools``, ``microturn background``): logs, telemetry, then run
    until signalled."""
    configure_logging(name, settings.telemetry.log_format, settings.telemetry.log_level)
    telemetry = setup_telemetry(name, settings.telemetry)
    try:
        asyncio.run(run_until_signalled(make_service(settings), telemetry))
    finally:
        telemetry.shutdown()
    return 0


def serve_main(name: str, make_service: Callable[[Settings], Service]) -> None:
    """The ``python -m microturn.<name>`` entry point of a bus service."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"microturn {name}: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_service(name, make_service, settings))
