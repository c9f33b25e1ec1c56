"""Fixtures for background/tool tests: the services in-process (``stack``) or as subprocesses (``spawn``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from background_helpers import ServiceProcess, Stack, make_settings

from microturn.background import BackgroundService
from microturn.bus import Bus, DelegationClient
from microturn.config import Settings
from microturn.tools.service import ToolsService


@pytest.fixture
async def stack(nats_server) -> AsyncIterator[Stack]:
    """Tools and background services in-process, and an interaction-side client."""
    settings = make_settings(nats_server.url)
    tools = ToolsService(settings)
    background = BackgroundService(settings)
    await tools.start()
    await background.start()
    bus = await Bus.connect(nats_server.url, settings.bus, name="test-interaction")
    try:
        yield Stack(settings, DelegationClient(bus), bus, [tools, background])
    finally:
        await bus.close()
        await background.stop()
        await tools.stop()


@pytest.fixture
def spawn(tmp_path) -> Iterator:
    """Start service subprocesses; every one is stopped (or killed) at the end of the test."""
    procs: list[ServiceProcess] = []

    def start(module: str, settings: Settings) -> ServiceProcess:
        p = ServiceProcess(module, settings, tmp_path / f"{module}-{len(procs)}.log")
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()
