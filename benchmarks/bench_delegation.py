"""Delegation round trip through the real stack: nats-server, the tools and background services as
processes (planner backend), and an interaction-side client on the bus.

Measures
  * latency: one delegation at a time, publish → final update received (p50/p99), arithmetic and
    clock requests (each makes one tool call over the bus);
  * throughput: a burst of delegations across sessions, with 1 and with 2 instances of each
    service; reported as delegations/s in total and per background instance.

Run: ``python benchmarks/bench_delegation.py`` (``make bench``). Starts and cleans up everything.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from microturn.bus import Bus, DelegationClient
from microturn.config import BusSettings
from microturn.localrun.nats import NatsServer
from microturn.localrun.ports import free_port
from microturn.v1 import delegation_pb2

ROOT = Path(__file__).resolve().parents[1]
LATENCY_N = int(os.environ.get("BENCH_LATENCY_N", "200"))
BURST_N = int(os.environ.get("BENCH_BURST_N", "600"))
SESSIONS = 8


def start_service(module: str, nats_url: str, log_dir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROTURN_")}
    env.update(
        {
            "MICROTURN_NATS__URL": nats_url,
            "MICROTURN_TELEMETRY__METRICS_PORT": str(port),
            "MICROTURN_TELEMETRY__LOG_LEVEL": "WARNING",
            "MICROTURN_TOOLS__GRPC_PORT": str(free_port()),
            "MICROTURN_TOOLS__KNOWLEDGE_PRELOAD": "false",
            "HF_HUB_OFFLINE": "1",
        }
    )
    log = open(log_dir / f"{module}-{port}.log", "wb")  # noqa: SIM115 (lives as long as the process)
    proc = subprocess.Popen(
        [sys.executable, "-m", f"microturn.{module}"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, port


async def wait_ready(proc: subprocess.Popen, port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"service exited with {proc.returncode}")
            try:
                if (await http.get(f"http://127.0.0.1:{port}/healthz", timeout=1)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError("service not ready")


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def make_request(session_id: str, text: str) -> delegation_pb2.DelegationRequest:
    return delegation_pb2.DelegationRequest(
        delegation_id=f"b-{uuid.uuid4().hex[:16]}",
        session_id=session_id,
        context=delegation_pb2.ContextPackage(request=text, timezone="Europe/Paris"),
        deadline_unix_ms=int((time.time() + 60) * 1000),
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latency(client: DelegationClient, text_for, n: int) -> list[float]:
    updates = await client.session_updates("bench-latency")
    out = []
    try:
        for k in range(n):
            req = make_request("bench-latency", text_for(k))
            t0 = time.perf_counter()
            await client.delegate(req)
            while True:
                d = await updates.next(timeout_s=30)
                assert d is not None, "no update within 30 s"
                await d.ack()
                if d.update.delegation_id == req.delegation_id and d.is_last:
                    assert d.update.WhichOneof("kind") == "final", d.update
                    break
            out.append((time.perf_counter() - t0) * 1000)
    finally:
        await updates.close()
    return out


async def burst(client: DelegationClient, n: int, tag: str) -> float:
    sessions = [f"bench-{tag}-{i}" for i in range(SESSIONS)]
    readers = [await client.session_updates(s) for s in sessions]
    reqs = [make_request(sessions[k % SESSIONS], f"what is {k} * 7") for k in range(n)]

    async def drain(reader, expected: int) -> None:
        done = 0
        while done < expected:
            d = await reader.next(timeout_s=60)
            assert d is not None, "burst stalled"
            await d.ack()
            done += d.is_last

    try:
        t0 = time.perf_counter()
        drains = [
            asyncio.create_task(drain(r, sum(1 for q in reqs if q.session_id == s)))
            for r, s in zip(readers, sessions, strict=True)
        ]
        for req in reqs:
            await client.delegate(req)
        await asyncio.gather(*drains)
        return n / (time.perf_counter() - t0)
    finally:
        for r in readers:
            await r.close()


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-delegation-") as tmp:
        tmp_path = Path(tmp)
        procs: list[subprocess.Popen] = []
        with NatsServer(store_dir=tmp_path / "nats") as nats:
            try:
                started = [start_service(m, nats.url, tmp_path) for m in ("tools", "background")]
                procs += [p for p, _ in started]
                await asyncio.gather(*(wait_ready(p, port) for p, port in started))
                bus = await Bus.connect(nats.url, BusSettings(), name="bench")
                client = DelegationClient(bus)
                await latency(client, lambda k: f"what is {k} + 1", 20)  # warm-up
                rows = []
                for label, text_for in (
                    ("arithmetic (calculator)", lambda k: f"what is {k} + 1"),
                    ("time in a city (clock)", lambda k: "what time is it in Tokyo?"),
                ):
                    ms = await latency(client, text_for, LATENCY_N)
                    rows.append((label, len(ms), statistics.median(ms), pct(ms, 0.99), max(ms)))
                one = await burst(client, BURST_N, "one")
                started = [start_service(m, nats.url, tmp_path) for m in ("tools", "background")]
                procs += [p for p, _ in started]
                await asyncio.gather(*(wait_ready(p, port) for p, port in started))
                two = await burst(client, BURST_N, "two")
                await bus.close()
            finally:
                stop(procs)

    print(
        f"Delegation round trip, planner backend, {os.cpu_count()} CPUs (client, NATS and services share them)"
    )
    print()
    print(f"{'latency: publish -> final':<28} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for label, n, p50, p99, mx in rows:
        print(f"{label:<28} {n:>5} {p50:>8.2f} {p99:>8.2f} {mx:>8.2f}")
    print()
    print(f"{'throughput (burst of ' + str(BURST_N) + ')':<28} {'deleg/s':>8} {'per instance':>13}")
    print(f"{'1 background + 1 tools':<28} {one:>8.0f} {one:>13.0f}")
    print(f"{'2 background + 2 tools':<28} {two:>8.0f} {two / 2:>13.0f}")


if __name__ == "__main__":
    asyncio.run(main())
