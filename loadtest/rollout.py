"""A rollout under live calls on a local run: ``python -m loadtest.rollout --help``.

It starts the system (``microturn up`` on free ports), keeps synthetic calls coming (gRPC, a chunk
per micro-turn in real time; each new call takes its version and Serve application from the
routing table, as the edge does), runs ``microturn rollout start`` and follows ``rollout status``
until the rollout ends. It then checks every call: no output chunk lost or repeated, every chunk
made by the version the call started on, and no call cut. It prints the timeline, the share of new
calls on the candidate per routing epoch, and the largest output gaps.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from loadtest.recovery import CHUNK_MS, tone
from microturn.interaction.client import InteractionSession, SessionClosed, SessionRejected
from microturn.protocol.chunks import input_chunk
from microturn.protocol.clock import ChunkClock, now_unix_ms
from microturn.rollout.routing import RoutingError, RoutingTable

MICROTURN = [sys.executable, "-m", "microturn"]


@dataclass
class Call:
    name: str
    version: str
    app: str
    epoch: int | None
    outputs: dict[int, list[tuple[float, str]]] = field(default_factory=dict)  # index -> (arrival, version)
    errors: list[str] = field(default_factory=list)
    ended_early: str = ""


class Traffic:
    """New calls at ``rate`` per second, each ``length_s`` long, routed by the table in ``routing``."""

    def __init__(
        self, target: str, routing: Path, rate: float, length_s: float, app: str = "interaction"
    ) -> None:
        self.target, self.routing, self.rate, self.length_s, self.app = target, routing, rate, length_s, app
        self.calls: list[Call] = []
        self._tasks: set[asyncio.Task] = set()

    def table(self) -> RoutingTable | None:
        try:
            return RoutingTable.from_json(self.routing.read_text())
        except (OSError, RoutingError):
            return None

    async def run(self, until: asyncio.Event) -> None:
        async with grpc.aio.insecure_channel(self.target) as channel:
            n = 0
            while not until.is_set():
                n += 1
                task = asyncio.create_task(self._call(channel, f"call{n:04d}"))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                await asyncio.sleep(1 / self.rate)
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _call(self, channel: grpc.aio.Channel, sid: str) -> None:
        table = self.table()
        route = table.route(sid, self.app) if table else None
        call = Call(
            sid,
            route.version if route else "",
            route.app if route else self.app,
            table.epoch if table else None,
        )
        self.calls.append(call)
        clock = ChunkClock(CHUNK_MS)
        t0 = clock.floor(now_unix_ms())
        sess = InteractionSession(channel, call.app, sid, seed=1, t0_ms=t0, model_version=call.version)
        try:
            accepted = await sess.open()
            call.version = call.version or accepted.model_version
            n = int(self.length_s * 1000 / CHUNK_MS)
            for k in range(n):
                await asyncio.sleep(max(0.0, (t0 + CHUNK_MS * (k + 1)) / 1000 - time.time()))
                await sess.send(input_chunk(sid, k, t0, tone(k)))
                msg = await asyncio.wait_for(sess.receive(), 30)
                if msg.WhichOneof("kind") == "chunk":
                    c = msg.chunk
                    call.outputs.setdefault(c.header.chunk_index, []).append(
                        (time.monotonic(), c.model_version)
                    )
                else:
                    call.errors.append(msg.error.message)
            await sess.close()
        except (SessionRejected, SessionClosed, ConnectionError, TimeoutError, grpc.aio.AioRpcError) as exc:
            call.ended_early = f"{type(exc).__name__}: {exc}"

    def check(self) -> list[str]:
        problems = []
        for c in self.calls:
            if c.ended_early:
                problems.append(f"{c.name}: cut ({c.ended_early})")
                continue
            indices = sorted(c.outputs)
            if indices != list(range(len(indices))) or any(len(v) > 1 for v in c.outputs.values()):
                problems.append(f"{c.name}: output chunks lost or repeated")
            made_by = {v for outs in c.outputs.values() for _, v in outs}
            if made_by != {c.version}:
                problems.append(f"{c.name}: started on {c.version}, output made by {sorted(made_by)}")
            if c.errors:
                problems.append(f"{c.name}: errors {c.errors[:2]}")
        return problems

    def max_gaps_ms(self) -> list[float]:
        out = []
        for c in self.calls:
            firsts = [c.outputs[k][0][0] for k in sorted(c.outputs)]
            if len(firsts) > 1:
                out.append(max(b - a for a, b in itertools.pairwise(firsts)) * 1000)
        return out


def rollout_cli(env: dict[str, str], state: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MICROTURN, "--state-dir", str(state), "rollout", *args], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


async def follow(env: dict[str, str], state: Path, timeout_s: float, log) -> dict:
    """``rollout status --json`` until the rollout rests (Succeeded or Aborted); the last status."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        res = await asyncio.to_thread(rollout_cli, env, state, "status", "--json")
        if res.returncode == 0:
            doc = json.loads(res.stdout)
            st = doc["status"]
            line = f"{st['phase']:<12} step {st['step'] + 1} weights {st['weights']} epoch {st['epoch']}: {st['message']}"
            if line != last:
                log(line)
                last = line
            if st["phase"] in ("Succeeded", "Aborted") and st.get("spec"):
                return doc
        await asyncio.sleep(1.0)
    raise TimeoutError(f"the rollout did not end within {timeout_s:.0f} s")


async def scenario(env: dict[str, str], state: Path, grpc_target: str, start_args: list[str], rate: float,
                   length_s: float, timeout_s: float = 600) -> tuple[dict, Traffic]:  # fmt: skip
    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"{time.monotonic() - t0:6.1f}s  {msg}", flush=True)

    traffic = Traffic(grpc_target, state / "rollout" / "routing.json", rate, length_s)
    stop = asyncio.Event()
    runner = asyncio.create_task(traffic.run(stop))
    await asyncio.sleep(length_s / 2)
    res = await asyncio.to_thread(rollout_cli, env, state, "start", *start_args)
    log(res.stdout.strip() or res.stderr.strip())
    if res.returncode:
        raise RuntimeError(f"rollout start failed ({res.returncode}): {res.stderr}")
    try:
        doc = await follow(env, state, timeout_s, log)
    finally:
        stop.set()
        await runner
    return doc, traffic


def shares(traffic: Traffic, candidate: str) -> dict[int | None, tuple[int, int]]:
    """Per routing epoch: (calls on the candidate, calls)."""
    out: dict[int | None, tuple[int, int]] = {}
    for c in traffic.calls:
        on, n = out.get(c.epoch, (0, 0))
        out[c.epoch] = (on + (c.version == candidate), n + 1)
    return out


def main(argv: list[str] | None = None) -> int:
    from loadtest.stack import Stack

    p = argparse.ArgumentParser(prog="python -m loadtest.rollout", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--to", default="microturn-tiny-v1", help="the candidate version (default microturn-tiny-v1)"
    )
    p.add_argument("--steps", default="50,100")
    p.add_argument("--hold", default="10s")
    p.add_argument("--rate", type=float, default=1.0, help="new calls per second")
    p.add_argument("--length", type=float, default=8.0, help="seconds each call lasts")
    a = p.parse_args(argv)
    stack = Stack({"MICROTURN_RAY__NUM_CPUS": "4", "MICROTURN_INTERACTION__NUM_CPUS": "0.5"})
    try:
        stack.wait_ready(300)
        args = ["--to", a.to, "--steps", a.steps, "--hold", a.hold, "--min-sessions", "1", "--interval", "3s",
                "--drain-deadline", "60s"]  # fmt: skip
        doc, traffic = asyncio.run(scenario(stack.env, stack.state, f"127.0.0.1:{stack.port('INTERACTION__GRPC_PORT')}",
                                            args, a.rate, a.length))  # fmt: skip
    finally:
        stack.down()
        stack.cleanup()
    problems = traffic.check()
    print(f"\n{len(traffic.calls)} calls; final phase {doc['status']['phase']}")
    for epoch, (on, n) in sorted(
        shares(traffic, a.to).items(), key=lambda kv: (kv[0] is not None, kv[0] or 0)
    ):
        print(f"  routing epoch {epoch}: {on}/{n} new calls on {a.to}")
    gaps = traffic.max_gaps_ms()
    if gaps:
        print(f"  largest output gap per call: p50 {statistics.median(gaps):.0f} ms, max {max(gaps):.0f} ms")
    for pr in problems:
        print(f"FAIL: {pr}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
