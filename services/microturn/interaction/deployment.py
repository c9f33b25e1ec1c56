"""The Ray Serve deployment: a thin wrapper that gives ``InteractionCore`` a replica and a gRPC
method. Built by ``build_app`` from the Serve config file (see serve_config.py); options such as
replicas, CPUs, ``max_ongoing_requests`` and the session-affinity router live in that file."""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from microturn.config import load_settings
from microturn.interaction.core import InteractionCore
from microturn.telemetry import configure_logging, setup_telemetry

log = logging.getLogger(__name__)


@serve.deployment(name="Interaction")
class InteractionDeployment:
    def __init__(self, settings_overrides: dict[str, Any] | None = None) -> None:
        settings = load_settings(overrides=settings_overrides)
        configure_logging("interaction", settings.telemetry.log_format, settings.telemetry.log_level)
        # Several replicas share a node: their metrics go out by OTLP, not one HTTP port each.
        setup_telemetry("interaction", settings.telemetry.model_copy(update={"metrics_port": 0}))
        replica_id = serve.get_replica_context().replica_id.unique_id
        self.core = InteractionCore(settings, replica_id)

    async def Converse(self, request_stream):
        async for message in self.core.converse(request_stream):
            yield message

    async def check_health(self) -> None:
        self.core.check_health()

    async def __del__(self) -> None:
        await self.core.drain()


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder named by the Serve config (``import_path``); ``args.settings`` are
    settings overrides (the rendered config carries the local run's ports and limits)."""
    return InteractionDeployment.bind(args.get("settings"))
