"""The edge process's sessions: creation under the per-process cap, lookup, and the reaper that
closes sessions nobody finished setting up, whose media stopped, or whose peer failed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

import grpc
from opentelemetry import metrics
from opentelemetry.metrics import Observation

from microturn.config import Settings
from microturn.edge.call_metrics import CallMetrics
from microturn.edge.deletion_cost import DeletionCost
from microturn.edge.events import ClientErrors
from microturn.edge.ice import pin_host_candidates, use_port_range
from microturn.edge.peer import EdgeSession
from microturn.edge.routing import RoutingWatcher
from microturn.edge.tokens import SessionTokens

log = logging.getLogger(__name__)


class EdgeFull(Exception):
    pass


class EdgeServer:
    def __init__(self, settings: Settings, meter_provider: metrics.MeterProvider | None = None) -> None:
        self.settings = settings
        self.cfg = settings.edge
        self.tokens = SessionTokens(self.cfg.token_secret, self.cfg.token_ttl_s)
        self.sessions: dict[str, EdgeSession] = {}
        self.channel: grpc.aio.Channel | None = None  # to interaction_target
        self._channels: dict[str, grpc.aio.Channel] = {}  # to other versions' endpoints (routing targets)
        self._reaper: asyncio.Task[None] | None = None
        self.deletion_cost: DeletionCost | None = None
        if self.cfg.ice_host_addresses:
            pin_host_candidates(self.cfg.ice_host_addresses)
        use_port_range(self.cfg.ice_port_min, self.cfg.ice_port_max)  # unset: aioice's own binding
        meter = (meter_provider or metrics.get_meter_provider()).get_meter("microturn.edge")
        self.client_errors = ClientErrors(meter, self.cfg.client_error_log_interval_s)
        self.call_metrics = CallMetrics(meter)
        self.routing = RoutingWatcher(
            self.cfg.routing_file, settings.interaction.app_name, meter, self.cfg.routing_poll_s
        )
        self._moved = meter.create_counter(
            "microturn_edge_sessions_moved",
            unit="{session}",
            description="calls moved to another model version (theirs was retired by a rollout)",
        )
        meter.create_observable_gauge(
            "microturn_edge_sessions",
            [lambda _: [Observation(len(self.sessions))]],
            unit="{session}",
            description="sessions held",
        )

    @property
    def interaction_target(self) -> str:
        return self.cfg.interaction_target or f"127.0.0.1:{self.settings.interaction.grpc_port}"

    async def start(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.interaction_target)
        self._reaper = asyncio.create_task(self._reap_forever())
        self.routing.start()
        self.deletion_cost = DeletionCost.from_settings(self.cfg, lambda: len(self.sessions))
        if self.deletion_cost is not None:
            self.deletion_cost.start()

    async def stop(self) -> None:
        await self.routing.stop()
        if self.deletion_cost is not None:
            await self.deletion_cost.stop()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await asyncio.gather(*(s.close("edge shutting down") for s in list(self.sessions.values())))
        self.sessions.clear()
        if self.channel is not None:
            await self.channel.close()
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()

    def create(self) -> tuple[EdgeSession, str, int]:
        if len(self.sessions) >= self.cfg.max_sessions:
            raise EdgeFull(f"this edge holds its limit of {self.cfg.max_sessions} sessions")
        assert self.channel is not None, "start() first"
        session_id = "s" + secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")
        route = self.routing.route(session_id)
        session = EdgeSession(
            session_id, self.settings, self._channel_for(route.target), client_errors=self.client_errors,
            route=route, call_metrics=self.call_metrics,
        )  # fmt: skip
        self.sessions[session_id] = session
        token, expires = self.tokens.issue(session_id)
        return session, token, expires

    def _channel_for(self, target: str) -> grpc.aio.Channel:
        """The gRPC channel to a version's endpoint (one per target, kept for the edge's life)."""
        assert self.channel is not None
        if not target or target == self.interaction_target:
            return self.channel
        if target not in self._channels:
            self._channels[target] = grpc.aio.insecure_channel(target)
        return self._channels[target]

    async def close(self, session_id: str, reason: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is not None:
            await session.close(reason)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            table = self.routing.table
            retired, moves = (table.retired, table.moves) if table is not None else ({}, {})
            for sid, s in list(self.sessions.items()):
                reason = None
                version = s.route.version or (
                    s.grpc.accepted.model_version if s.grpc and s.grpc.accepted else ""
                )
                if version in moves and table is not None and not s.closed:
                    # its version is going (a rollout's drain deadline) and the next one can replay it
                    to = table.route_to(moves[version], self.settings.interaction.app_name)
                    s.move_to(to, self._channel_for(to.target), retired[version])
                    self._moved.add(1)
                elif version in retired and not s.closed:
                    # its version is gone and the call cannot move: a clear error, then the end
                    s.send_event({"type": "error", "code": "VERSION_RETIRED", "message": retired[version]})
                    reason = f"model version {version} retired"
                elif s.closed:
                    reason = "closed"
                elif s.state == "created" and now - s.created_at > self.cfg.offer_timeout_s:
                    reason = f"no offer within {self.cfg.offer_timeout_s:.0f} s"
                elif s.state in ("connecting", "live") and now - s.last_media > self.cfg.idle_timeout_s:
                    reason = f"no media for {self.cfg.idle_timeout_s:.0f} s"
                if reason:
                    log.info("reaping session %s: %s", sid, reason)
                    await self.close(sid, reason)
