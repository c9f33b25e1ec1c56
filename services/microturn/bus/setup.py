"""``microturn bus setup``: create the JetStream topology (streams, then the services' durable
consumers) and exit. The chart runs it as a hook Job before the services and the KEDA scalers: a
scaler whose consumer does not exist yet reads the whole stream as lag and scales to its maximum."""

from __future__ import annotations

import logging

from microturn.bus.connection import Bus
from microturn.bus.streams import ensure_topology
from microturn.config import Settings

log = logging.getLogger(__name__)


async def setup(settings: Settings, timeout_s: float = 120.0) -> list[str]:
    """Connect (waiting up to ``timeout_s`` for NATS), ensure everything; returns what exists."""
    bus = await Bus.connect(
        settings.nats,
        settings.bus,
        name="microturn-setup",
        connect_timeout_s=timeout_s,
        create_streams=False,
    )
    try:
        return await bus.retrying(lambda: ensure_topology(bus.js, settings.bus), "set up streams", timeout_s)
    finally:
        await bus.close()
