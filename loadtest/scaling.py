"""Autoscaling on a real local Ray cluster: ``python -m loadtest.scaling --help``.

It starts the system (``microturn up`` on free ports) with Serve autoscaling on small numbers
(``SCALING_ENV``: 4 slots, a target of 2 sessions per replica, 1..3 replicas), then drives
synthetic sessions straight into the interaction service over gRPC, each a chunk per micro-turn in
real time, through these steps:

1. open 4 sessions: one replica, full;
2. open a 5th: every replica is full, so it is told OVER_CAPACITY (retry after N ms) and retries
   until the scale-up brings a second replica, where it lands;
3. open a 6th (the load asks for 3 replicas) and, once the third serves, a 7th: it lands there;
4. hold, then close the 5 oldest: the load asks for one replica; after the downscale delay Serve
   removes two, whose sessions migrate (make before break) to the one left;
5. keep every remaining session streaming ``--after`` seconds more.

It prints the replica timeline (target, running, starting/stopping, sessions) and the numbers of
``make bench-scale``: time from a load step to the new replica serving, migrations per second during
the scale-down, and the output gap (largest time between two outputs) of the migrated sessions next
to the sessions that never moved. Exit 1 if a session lost, repeated or stopped its output, or a
step did not happen.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import httpx

from loadtest.recovery import Caller
from microturn.interaction.client import SessionRejected

SCALING_ENV = {
    "MICROTURN_INTERACTION__SESSION_SLOTS": "4",
    "MICROTURN_INTERACTION__NUM_CPUS": "0.5",
    "MICROTURN_INTERACTION__TICK_GRACE_MS": "20",
    "MICROTURN_INTERACTION__STOP_POLL_S": "0.5",
    "MICROTURN_INTERACTION__RETRY_AFTER_MS": "500",
    "MICROTURN_INTERACTION__AUTOSCALING__ENABLED": "true",
    "MICROTURN_INTERACTION__AUTOSCALING__MIN_REPLICAS": "1",
    "MICROTURN_INTERACTION__AUTOSCALING__MAX_REPLICAS": "3",
    "MICROTURN_INTERACTION__AUTOSCALING__TARGET_SESSIONS": "2",
    "MICROTURN_INTERACTION__AUTOSCALING__UPSCALE_DELAY_S": "1",
    "MICROTURN_INTERACTION__AUTOSCALING__DOWNSCALE_DELAY_S": "8",
    "MICROTURN_INTERACTION__AUTOSCALING__LOOK_BACK_PERIOD_S": "2",
    "MICROTURN_INTERACTION__AUTOSCALING__METRICS_INTERVAL_S": "0.5",
    "MICROTURN_RAY__NUM_CPUS": "4",
}
APP, DEPLOYMENT = "interaction", "Interaction"


@dataclass
class Sample:
    t: float  # seconds since the scenario started
    target: int
    running: int
    starting: int
    stopping: int
    sessions: int


@dataclass
class SessionReport:
    name: str
    rejected: int  # OVER_CAPACITY answers before it was accepted
    outputs: int
    lost: int
    repeated: int
    errors: int
    migrations: int
    recoveries: int
    max_gap_s: float
    migration_gaps_s: list[float]  # output gap at each switch to a new owner
    stalled_s: float  # time from its last output to the end of the run (a stopped stream shows here)


@dataclass
class Result:
    timeline: list[Sample] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    sessions: list[SessionReport] = field(default_factory=list)
    scale_up_s: list[float] = field(default_factory=list)  # load step -> new replica's first session
    migrations_per_s: float = 0.0
    failures: list[str] = field(default_factory=list)


class Timeline:
    """Samples the deployment's replicas from the Serve REST API every ``period_s``."""

    def __init__(self, dashboard: str, sessions: callable, t0: float, period_s: float = 0.5) -> None:
        self.dashboard, self.sessions, self.t0, self.period_s = dashboard, sessions, t0, period_s
        self.samples: list[Sample] = []
        self._task: asyncio.Task | None = None

    async def read(self, client: httpx.AsyncClient) -> Sample:
        r = await client.get(self.dashboard + "/api/serve/applications/", timeout=5)
        r.raise_for_status()
        dep = r.json()["applications"][APP]["deployments"][DEPLOYMENT]
        states = [x["state"] for x in dep.get("replicas", [])]
        return Sample(
            round(time.monotonic() - self.t0, 2), int(dep.get("target_num_replicas", 0)),
            states.count("RUNNING"), states.count("STARTING"), states.count("STOPPING"), self.sessions(),
        )  # fmt: skip

    async def _run(self) -> None:
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    s = await self.read(client)
                except (httpx.HTTPError, KeyError, ValueError):
                    pass
                else:
                    last = self.samples[-1] if self.samples else None
                    if last is None or (s.target, s.running, s.starting, s.stopping, s.sessions) != (
                        last.target, last.running, last.starting, last.stopping, last.sessions
                    ):  # fmt: skip
                        self.samples.append(s)
                await asyncio.sleep(self.period_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def now(self) -> Sample | None:
        return self.samples[-1] if self.samples else None


class Fleet:
    """The scenario's sessions: opened with the edge's retry on OVER_CAPACITY, closed oldest first."""

    def __init__(self, channel: grpc.aio.Channel, log: callable) -> None:
        self.channel, self.log = channel, log
        self.live: list[tuple[str, Caller]] = []
        self.done: list[tuple[str, Caller, float]] = []
        self.rejected: dict[str, int] = {}

    async def open(self, name: str, timeout_s: float = 120) -> str:
        caller = Caller(self.channel, name)
        self.rejected[name] = 0
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                replica = await caller.start()
                break
            except SessionRejected as exc:
                if not exc.error.retryable or time.monotonic() > deadline:
                    raise
                self.rejected[name] += 1
                if self.rejected[name] == 1:
                    self.log(f"{name}: {exc} (retrying every {exc.error.retry_after_ms} ms)")
                await asyncio.sleep(exc.error.retry_after_ms / 1000)
        self.live.append((name, caller))
        self.log(
            f"{name} opened on replica {replica}"
            + (f" after {self.rejected[name]} retries" if self.rejected[name] else "")
        )
        return replica

    async def close_oldest(self, n: int) -> None:
        for _ in range(n):
            name, caller = self.live.pop(0)
            await caller.stop()
            self.done.append((name, caller, time.monotonic()))
            self.log(f"{name} closed")

    def placement(self) -> dict[str, str]:
        return {name: c.session.accepted.replica_id for name, c in self.live if c.session.accepted}


async def wait_for(cond, what: str, timeout_s: float, period_s: float = 0.25) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        await asyncio.sleep(period_s)
    return time.monotonic() - start


def report(name: str, caller: Caller, rejected: int, ended: float) -> SessionReport:
    lost, repeated = caller.lost_repeated()
    firsts = [caller.arrivals[k][0] for k in sorted(caller.arrivals)]
    gaps = [b - a for a, b in itertools.pairwise(firsts)]
    return SessionReport(
        name=name, rejected=rejected, outputs=len(caller.arrivals), lost=lost, repeated=repeated,
        errors=len(caller.errors), migrations=caller.session.migrations, recoveries=caller.session.recoveries,
        max_gap_s=round(max(gaps, default=0.0), 3),
        migration_gaps_s=[round(caller.gap_after(k - 1), 3) for k in caller.session.switched_at if k - 1 in caller.arrivals],
        stalled_s=round(ended - (firsts[-1] if firsts else ended), 3),
    )  # fmt: skip


async def scenario(
    grpc_target: str, dashboard: str, after_s: float = 20.0, step_timeout_s: float = 120
) -> Result:
    """The five steps of the module docstring against a running system; returns what happened."""
    res = Result()
    t0 = time.monotonic()

    def log(msg: str) -> None:
        line = f"{time.monotonic() - t0:6.1f}s  {msg}"
        res.events.append(line)
        print(line, flush=True)

    async with grpc.aio.insecure_channel(grpc_target) as channel:
        fleet = Fleet(channel, log)
        timeline = Timeline(dashboard, lambda: len(fleet.live), t0)
        timeline.start()
        running = lambda n: (s := timeline.now()) is not None and s.running >= n and s.starting == 0  # noqa: E731
        try:
            await wait_for(lambda: running(1), "one replica", step_timeout_s)
            for i in range(4):  # 1. one replica, full
                await fleet.open(f"s{i + 1}")
            first = set(fleet.placement().values())
            step = time.monotonic()  # 2. all full: told to retry, then lands on the new replica
            r5 = await fleet.open("s5", step_timeout_s)
            res.scale_up_s.append(round(time.monotonic() - step, 2))
            if fleet.rejected["s5"] == 0:
                res.failures.append("s5 was not told OVER_CAPACITY while the only replica was full")
            if r5 in first:
                res.failures.append(f"s5 landed on the full replica {r5}")
            step = time.monotonic()  # 3. the third replica
            await fleet.open("s6")
            await wait_for(lambda: running(3), "a third replica", step_timeout_s)
            r7 = await fleet.open("s7")
            res.scale_up_s.append(round(time.monotonic() - step, 2))
            if r7 in {r for n, r in fleet.placement().items() if n != "s7"}:
                res.failures.append(f"s7 landed on {r7}, not on the new, empty replica")
            await asyncio.sleep(5)  # 4. hold, then the load falls
            await fleet.close_oldest(5)
            down = time.monotonic()
            await wait_for(lambda: running(1) and timeline.now().running == 1 and timeline.now().stopping == 0,
                           "the scale-down to one replica", step_timeout_s + 60)  # fmt: skip
            down_s = time.monotonic() - down
            log(f"scaled down to one replica {down_s:.1f} s after the load fell")
            await asyncio.sleep(after_s)  # 5. everything left keeps streaming
        finally:
            await timeline.stop()
            end = time.monotonic()
            migrated = sum(c.session.migrations for _, c in fleet.live)
            res.migrations_per_s = (
                round(migrated / max(1e-9, _drain_window(fleet, timeline)), 2) if migrated else 0.0
            )
            for name, caller in fleet.live:
                res.sessions.append(report(name, caller, fleet.rejected[name], end))
                await caller.stop()
            for name, caller, ended in fleet.done:
                res.sessions.append(report(name, caller, fleet.rejected[name], ended))
            res.timeline = timeline.samples
    for s in res.sessions:
        if s.lost or s.repeated or s.errors or s.recoveries:
            res.failures.append(
                f"{s.name}: lost {s.lost}, repeated {s.repeated}, errors {s.errors}, recoveries {s.recoveries}"
            )
        if s.stalled_s > 2.0:
            res.failures.append(f"{s.name}: no output for the last {s.stalled_s:.1f} s")
    if not any(s.migrations for s in res.sessions):
        res.failures.append("no session was migrated by the scale-down")
    if max((x.running for x in res.timeline), default=0) < 3:
        res.failures.append("the deployment never ran 3 replicas")
    return res


def _drain_window(fleet: Fleet, timeline: Timeline) -> float:
    """Seconds the deployment had a STOPPING replica (the scale-down's migrations happen then)."""
    stopping = [s.t for s in timeline.samples if s.stopping]
    return (max(stopping) - min(stopping) + timeline.period_s) if stopping else 0.0


def print_result(res: Result) -> None:
    print("\nreplica timeline (changes only)")
    print(f"{'t, s':>7} {'target':>6} {'running':>7} {'starting':>8} {'stopping':>8} {'sessions':>8}")
    for s in res.timeline:
        print(f"{s.t:>7.1f} {s.target:>6} {s.running:>7} {s.starting:>8} {s.stopping:>8} {s.sessions:>8}")
    at_switch = [g * 1000 for s in res.sessions for g in s.migration_gaps_s]
    moved = [s.max_gap_s * 1000 for s in res.sessions if s.migrations]
    stayed = [s.max_gap_s * 1000 for s in res.sessions if not s.migrations]
    print("\nscaling benchmark")
    print(f"  load step -> new replica serving, s: {', '.join(f'{x:.1f}' for x in res.scale_up_s)}")
    print(f"  migrations per second during the scale-down: {res.migrations_per_s:.2f}")
    if at_switch:
        print(f"  output gap at a migration ({len(at_switch)}): p50 {statistics.median(at_switch):.0f} ms, "
              f"max {max(at_switch):.0f} ms (one micro-turn: 200 ms)")  # fmt: skip
    for label, gaps in (("migrated", moved), ("not migrated", stayed)):
        if gaps:
            print(f"  largest output gap over a whole session, {label} ({len(gaps)}): "
                  f"p50 {statistics.median(gaps):.0f} ms, max {max(gaps):.0f} ms")  # fmt: skip
    for f in res.failures:
        print(f"FAIL: {f}")


def main(argv: list[str] | None = None) -> int:
    from loadtest.stack import Stack

    p = argparse.ArgumentParser(
        prog="python -m loadtest.scaling",
        description="Ramp synthetic sessions over a local Ray cluster with Serve autoscaling: replicas follow "
        "the load up and down, calls are never dropped; prints the timeline and the scaling benchmark.",
    )
    p.add_argument("--after", type=float, default=20.0, help="streaming after the scale-down, s (default 20)")
    p.add_argument("--report", type=Path, help="write the result as JSON here")
    p.add_argument(
        "--keep-state", action="store_true", help="keep the run's state dir (logs, Ray's session dir)"
    )
    a = p.parse_args(argv)
    stack = Stack(SCALING_ENV, keep_state=a.keep_state)
    try:
        stack.wait_ready(300)
        target = f"127.0.0.1:{stack.port('INTERACTION__GRPC_PORT')}"
        res = asyncio.run(scenario(target, stack.dashboard_url, after_s=a.after))
    finally:
        stack.down()
        stack.cleanup()
        if a.keep_state:
            print(f"state kept in {stack.state}")
    print_result(res)
    if a.report:
        a.report.write_text(json.dumps(asdict(res), indent=1))
    return 1 if res.failures else 0


if __name__ == "__main__":
    sys.exit(main())
