"""``python -m tests.telemetry.interaction_main``: one interaction replica as a process of its own, with
a /metrics endpoint: ``InteractionCore`` (the shipped model, its NATS bridge) on a plain grpc.aio
server as ``grpc_server.py`` serves it, settings from ``MICROTURN_*``. In production the core runs in a
Ray Serve replica and exports by OTLP; the instruments are the same (the Serve-only gauges aside)."""

from __future__ import annotations

import asyncio
import os
import signal

from microturn.config import load_settings
from microturn.interaction.core import InteractionCore
from microturn.interaction.grpc_server import start_server
from microturn.telemetry import configure_logging, setup_telemetry


async def serve() -> None:
    settings = load_settings()
    configure_logging("interaction", settings.telemetry.log_format, settings.telemetry.log_level)
    telemetry = setup_telemetry("interaction", settings.telemetry)
    core = InteractionCore(settings, os.environ.get("REPLICA_ID", "replica-a"))
    core.start()
    server = await start_server(core, "127.0.0.1", settings.interaction.grpc_port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    telemetry.set_ready()
    await stop.wait()
    await server.stop(grace=None)
    await core.drain(timeout_s=0)
    telemetry.shutdown()


if __name__ == "__main__":
    asyncio.run(serve())
