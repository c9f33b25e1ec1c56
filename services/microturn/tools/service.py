"""The tool-execution service: executor behind the bus work queue, the timers queue and gRPC."""

from __future__ import annotations

import logging

import grpc

from microturn.bus import Bus
from microturn.config import Settings
from microturn.tools import clock
from microturn.tools.catalog import build_registry, knowledge_index
from microturn.tools.executor import ToolExecutor
from microturn.tools.grpc_server import start_grpc
from microturn.tools.timers import BusTimerScheduler
from microturn.tools.worker import ToolWorker

log = logging.getLogger(__name__)


class ToolsService:
    name = "tools"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bus: Bus | None = None
        self.worker: ToolWorker | None = None
        self.grpc: grpc.aio.Server | None = None
        self.index = knowledge_index(settings.tools)

    async def start(self) -> None:
        s = self.settings
        clock.warm_up()
        if s.tools.knowledge_preload:
            await self.index.load()
        self.bus = await Bus.connect(s.nats, s.bus, name="microturn-tools")
        executor = ToolExecutor(build_registry(s.tools, self.index), timers=BusTimerScheduler(self.bus))
        self.worker = ToolWorker(self.bus, executor, s.tools.concurrency, s.tools.max_timer_s)
        await self.worker.start()
        if s.tools.grpc_enabled:
            self.grpc = await start_grpc(
                executor,
                s.tools.grpc_host,
                s.tools.grpc_port,
                s.bus.max_payload_bytes,
                tls_cert=s.tools.grpc_tls_cert,
                tls_key=s.tools.grpc_tls_key,
                tls_client_ca=s.tools.grpc_tls_client_ca,
            )
            tls = " (mutual TLS)" if s.tools.grpc_tls_client_ca else " (TLS)" if s.tools.grpc_tls_cert else ""
            log.info("tools gRPC on %s:%d%s", s.tools.grpc_host, s.tools.grpc_port, tls)

    async def stop(self) -> None:
        grace = self.settings.bus.shutdown_grace_s
        if self.grpc is not None:
            await self.grpc.stop(grace)
        if self.worker is not None:
            await self.worker.stop(grace)
        if self.bus is not None:
            await self.bus.close()
