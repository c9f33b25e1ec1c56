"""The routing table this edge applies to new calls (microturn.rollout.routing), re-read from
``edge.routing_file`` when it changes: the local rollout controller writes that file, and on
Kubernetes it is the mounted ConfigMap the rollout controller writes.

A new call's version and Serve application come from the table once, at creation; the call keeps
them for its life (its reopened streams ask for the same version). A table that cannot be read or
parsed is reported (logged once per distinct problem, counted) and the last good one stays in force:
a bad write never stops new calls. Without a file, calls go to ``interaction.app_name`` and take the
version its replicas serve.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from opentelemetry import metrics
from opentelemetry.metrics import Observation

from microturn.rollout.routing import Route, RoutingError, RoutingTable

log = logging.getLogger(__name__)


class RoutingWatcher:
    def __init__(
        self, path: Path | None, default_app: str, meter: metrics.Meter, poll_s: float = 1.0
    ) -> None:
        self.path, self.default_app, self.poll_s = path, default_app, poll_s
        self.table: RoutingTable | None = None
        self._stamp: tuple[float, int] | None = None
        self._problem: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._errors = meter.create_counter(
            "microturn_edge_routing_errors",
            unit="{error}",
            description="routing table reads that failed (the last good one stays)",
        )
        meter.create_observable_gauge(
            "microturn_edge_routing_epoch",
            [lambda _: [Observation(self.epoch)] if self.epoch is not None else []],
            description="epoch of the routing table this edge applies to new calls",
        )
        if path is not None:
            self.reload()

    @property
    def epoch(self) -> int | None:
        return self.table.epoch if self.table is not None else None

    def route(self, session_id: str) -> Route:
        if self.table is None:
            return Route("", self.default_app)
        return self.table.route(session_id, self.default_app)

    def reload(self) -> None:
        """Read the file if it changed since the last read (mtime and size)."""
        assert self.path is not None
        try:
            st = self.path.stat()
            stamp = (st.st_mtime, st.st_size)
            if stamp == self._stamp:
                return
            table = RoutingTable.from_json(self.path.read_text())
        except (OSError, RoutingError, UnicodeDecodeError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
            self._errors.add(1)
            if problem != self._problem:
                kept = (
                    f"epoch {self.epoch} stays in force"
                    if self.table
                    else "new calls use the default application"
                )
                log.error("cannot apply the routing table %s (%s); %s", self.path, problem, kept)
                self._problem = problem
            return
        self._stamp, self._problem = stamp, None
        if self.table is None or table != self.table:
            log.info("routing epoch %d: %s", table.epoch, table.weights)
        self.table = table

    def start(self) -> None:
        if self.path is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="routing-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            self.reload()
