"""Run a bus service until SIGTERM/SIGINT, the way the local-run supervisor and Kubernetes stop it:
ready only once connected and serving; on a signal, stop taking work and finish (or hand back)
what is in flight before exiting."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Protocol

from microturn.telemetry import Telemetry

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
