"""Recovery gap after replica kills: ``python -m loadtest.recovery --help``.

For each replica count it starts the system (``microturn up`` on free ports), then repeats: open an
old session (``--age`` seconds before the kill, so its replay is a full resume span) and a young one
(2 s before), stream real-time chunks into both over gRPC through Serve's proxy, SIGKILL the replica
that holds the old one, keep streaming for ``--after`` seconds, and measure each session's output gap
(arrival of the last output before the kill to the first after it). It prints p50 / max per replica
count and session age, and fails (exit 1) if any session lost or repeated a chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from loadtest.services import replicas
from loadtest.stack import Stack
from microturn.interaction.client import InteractionSession
from microturn.protocol.chunks import input_chunk
from microturn.protocol.clock import ChunkClock, now_unix_ms

CHUNK_MS = 200


def tone(k: int) -> bytes:
    t = np.arange(3200) / 16000
    return (3000 * np.sin(2 * math.pi * (200 + 37 * (k % 11)) * t)).astype("<i2").tobytes()


class Caller:
    """One session streaming a chunk per micro-turn in real time; records output arrivals."""

    def __init__(self, channel: grpc.aio.Channel, sid: str) -> None:
        self.t0 = ChunkClock().floor(now_unix_ms())
        self.session = InteractionSession(channel, "interaction", sid, seed=1, t0_ms=self.t0)
        self.arrivals: dict[int, list[float]] = {}
        self.errors: list[str] = []
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> str:
        replica = (await self.session.open()).replica_id
        self._tasks = [asyncio.create_task(self._send()), asyncio.create_task(self._read())]
        return replica

    async def _send(self) -> None:
        k = 0
        while True:
            await asyncio.sleep(max(0.0, (self.t0 + CHUNK_MS * (k + 1)) / 1000 - time.time()))
            await self.session.send(input_chunk(self.session.session_id, k, self.t0, tone(k)))
            k += 1

    async def _read(self) -> None:
        while True:
            msg = await self.session.receive()
            if msg.WhichOneof("kind") == "chunk":
                self.arrivals.setdefault(msg.chunk.header.chunk_index, []).append(time.monotonic())
            else:
                self.errors.append(msg.error.message)

    def last_index(self) -> int:
        return max(self.arrivals, default=-1)

    def gap_after(self, index: int) -> float:
        """Seconds between the output of ``index`` and the next one."""
        return self.arrivals[index + 1][0] - self.arrivals[index][0]

    def lost_repeated(self) -> tuple[int, int]:
        top = self.last_index()
        lost = sum(1 for k in range(top + 1) if k not in self.arrivals)
        return lost, sum(len(v) - 1 for v in self.arrivals.values())

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.session.close()


async def trial(stack: Stack, age_s: float, after_s: float, n: int) -> dict:
    port = stack.port("INTERACTION__GRPC_PORT")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        old = Caller(channel, f"old-{n}")
        victim = await old.start()
        await asyncio.sleep(age_s - 2)
        # a young session on the same replica: new sessions go to the least-loaded replica, so open
        # until one lands there, then close the others
        young, others = None, []
        for i in range(8):
            cand = Caller(channel, f"young-{n}-{i}")
            if await cand.start() == victim:
                young = cand
                break
            others.append(cand)
        for cand in others:
            await cand.stop()
        await asyncio.sleep(2)
        pid = next(r.pid for r in replicas(stack) if r.short == victim)
        callers = {"old": old, **({"young": young} if young else {})}
        at_kill = {name: c.last_index() for name, c in callers.items()}
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(after_s)
        out: dict = {"replica": victim}
        for name, c in callers.items():
            lost, rep = c.lost_repeated()
            out[name] = {"gap_s": c.gap_after(at_kill[name]), "lost": lost, "repeated": rep,
                         "errors": len(c.errors), "recoveries": c.session.recoveries}  # fmt: skip
            await c.stop()
        return out


def wait_for_replicas(stack: Stack, n: int, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if len(replicas(stack)) >= n:
                return
        except Exception:
            pass
        time.sleep(1)
    raise TimeoutError(f"Serve did not restore {n} replicas within {timeout_s:.0f} s")


def run(n_replicas: int, kills: int, age_s: float, after_s: float) -> list[dict]:
    stack = Stack({"MICROTURN_INTERACTION__REPLICAS": str(n_replicas), "MICROTURN_RAY__NUM_CPUS": "4"})
    results = []
    try:
        stack.wait_ready(300)
        for i in range(kills):
            wait_for_replicas(stack, n_replicas)
            r = asyncio.run(trial(stack, age_s, after_s, i))
            results.append(r)
            gaps = ", ".join(f"{k} {v['gap_s'] * 1000:.0f} ms" for k, v in r.items() if isinstance(v, dict))
            print(f"  {n_replicas} replica(s), kill {i + 1}/{kills}: {gaps}", flush=True)
    finally:
        stack.down()
        stack.cleanup()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.recovery",
        description="Measure the model-output gap of sessions whose replica is SIGKILLed (p50 / max).",
    )
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="replica counts to measure")
    p.add_argument("--kills", type=int, default=10, help="kills per replica count")
    p.add_argument("--age", type=float, default=25.0, help="age of the old session at the kill, s")
    p.add_argument("--after", type=float, default=10.0, help="streaming after each kill, s")
    p.add_argument("--report", type=Path, help="write every trial as JSON here")
    a = p.parse_args(argv)
    all_results = {n: run(n, a.kills, a.age, a.after) for n in a.replicas}
    print("\nrecovery gap (last output before the kill -> first after), ms")
    print(f"{'replicas':>8} {'session':>8} {'n':>3} {'p50':>7} {'max':>7}")
    bad = 0
    for n, results in all_results.items():
        for name in ("old", "young"):
            rows = [r[name] for r in results if name in r]
            bad += sum(1 for x in rows if x["lost"] or x["repeated"])
            if rows:
                g = [x["gap_s"] * 1000 for x in rows]
                print(f"{n:>8} {name:>8} {len(g):>3} {statistics.median(g):>7.0f} {max(g):>7.0f}")
    if a.report:
        a.report.write_text(json.dumps(all_results, indent=1))
    if bad:
        print(f"FAIL: {bad} sessions lost or repeated output chunks")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
