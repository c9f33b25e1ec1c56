"""Helpers for the hostile-input and fuzz tests of the bus consumers: read the metrics the services
export (through the real OpenTelemetry -> Prometheus path), read dead letters, wait for a stream
or a consumer to settle."""

from __future__ import annotations

import asyncio
import time

from nats.js.api import DeliverPolicy
from prometheus_client import REGISTRY

from microturn.bus import Bus, subjects
from microturn.config import TelemetrySettings
from microturn.telemetry import setup_telemetry


def metric(name: str, **labels: str) -> float:
    """Sum of the Prometheus samples called ``name`` whose labels include ``labels`` (0 if none)."""
    setup_telemetry("tests", TelemetrySettings())  # idempotent: the first set-up of the process
    total = 0.0
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def metric_by(name: str, label: str) -> dict[str, float]:
    """Samples called ``name`` summed by the value of ``label``."""
    setup_telemetry("tests", TelemetrySettings())
    out: dict[str, float] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name:
                key = sample.labels.get(label, "")
                out[key] = out.get(key, 0.0) + sample.value
    return out


def rejected(kind: str, code: str | None = None) -> float:
    """``microturn_<kind>_rejected_total`` (optionally of one code)."""
    return metric(f"microturn_{kind}_rejected_total", **({"code": code} if code else {}))


async def dead_letters(bus: Bus, kind: str, count: int, timeout_s: float = 20.0, since_seq: int = 0):
    """The first ``count`` dead letters of ``kind`` (after stream sequence ``since_seq``)."""
    kw = (
        {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": since_seq + 1}
        if since_seq
        else {}
    )
    sub = await bus.js.subscribe(
        subjects.dead_subject(kind), stream=subjects.DEAD_STREAM, ordered_consumer=True, **kw
    )
    try:
        return [await sub.next_msg(timeout=timeout_s) for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def dead_seq(bus: Bus) -> int:
    """The last sequence of the dead-letter stream (to read only what comes after)."""
    return (await bus.js.stream_info(subjects.DEAD_STREAM)).state.last_seq


async def wait_until(predicate, timeout_s: float = 20.0, what: str = "condition") -> None:
    """Poll an async predicate until it holds (a liveness bound, not a performance threshold)."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s}s")
        await asyncio.sleep(0.05)


async def stream_empty(bus: Bus, stream: str) -> bool:
    return (await bus.js.stream_info(stream)).state.messages == 0
