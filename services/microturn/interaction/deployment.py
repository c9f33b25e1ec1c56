"""The Ray Serve deployment: a thin wrapper that gives ``InteractionCore`` a replica and a gRPC
method. Built by ``build_app`` from the Serve config file (see serve_config.py); options such as
replicas, CPUs, ``max_ongoing_requests`` and the session-affinity router live in that file."""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from ray import serve

from microturn.config import load_settings
from microturn.interaction.autoscaling import SESSIONS_METRIC, UTILISATION_METRIC, StopWatch, deployment_view
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
        context = serve.get_replica_context()
        replica_id = context.replica_id.unique_id
        self.core = InteractionCore(settings, replica_id)
        # Serve runs __del__ only once every stream has ended: the watch starts the drain before.
        self.stop_watch = StopWatch(
            lambda: deployment_view(context.app_name, context.deployment, replica_id),
            self.core.drain,
            settings.interaction.stop_poll_s,
            busy=lambda: bool(self.core.sessions),
        )
        self._deployment_gauges(replica_id)

    def _deployment_gauges(self, replica_id: str) -> None:
        """Target and running replicas as this replica last read them from the controller (every
        replica reports the same numbers: aggregate with max)."""
        meter = metrics.get_meter_provider().get_meter("microturn.interaction")

        def observe(pick):
            def callback(_: CallbackOptions) -> list[Observation]:
                view = self.stop_watch.last
                return [] if view is None else [Observation(pick(view), {"replica": replica_id})]

            return [callback]

        meter.create_observable_gauge(
            "microturn_replicas_target", observe(lambda v: v.target_replicas), unit="{replica}",
            description="replicas the Serve autoscaler wants for the interaction deployment",
        )  # fmt: skip
        meter.create_observable_gauge(
            "microturn_replicas_running", observe(lambda v: v.running_replicas), unit="{replica}",
            description="replicas of the interaction deployment that are RUNNING",
        )  # fmt: skip

    async def Converse(self, request_stream):
        self.stop_watch.start()
        async for message in self.core.converse(request_stream):
            yield message

    async def check_health(self) -> None:
        self.stop_watch.start()
        self.core.check_health()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """This replica's load for the autoscaling policy (microturn.interaction.autoscaling)."""
        return {SESSIONS_METRIC: len(self.core.sessions), UTILISATION_METRIC: self.core.tick_utilisation()}

    async def __del__(self) -> None:
        log.info("Serve is stopping this replica (its streams have ended)")
        await self.stop_watch.stop()
        await self.core.drain()
        log.info("replica stopped")


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder named by the Serve config (``import_path``); ``args.settings`` are
    settings overrides (the rendered config carries the local run's ports and limits)."""
    return InteractionDeployment.bind(args.get("settings"))
