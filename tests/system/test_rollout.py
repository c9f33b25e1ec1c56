"""Session-aware rollouts on a real local run (microturn up: Ray Serve, NATS, the edge): live calls
keep going through a whole rollout, new calls move to the candidate by the step weights, old calls
finish on the version they started on (the version in every output chunk proves it) or, past the drain
deadline, move to the new one and go on, and a bad candidate is rolled back automatically, with no call
dropped."""

from __future__ import annotations

import asyncio
import json
import math
import time

import pytest

from loadtest.rollout import Traffic, follow, rollout_cli, shares

from ..edge.conftest import wait_until
from ..edge.webrtc_client import EdgeClient
from .conftest import LocalRun

pytestmark = pytest.mark.slow
V1, V2 = "microturn-tiny-v1", "microturn-tiny-v2"  # shipped; the run starts on v2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    r = LocalRun(tmp_path_factory.mktemp("rollout") / "state",
                 MICROTURN_INTERACTION__NUM_CPUS="0.5", MICROTURN_INTERACTION__TICK_GRACE_MS="20")  # fmt: skip
    try:
        yield r.wait_ready()
    finally:
        r.stop()


def traffic(run: LocalRun) -> Traffic:
    target = f"127.0.0.1:{run.port('MICROTURN_INTERACTION__GRPC_PORT')}"
    # a call every 2 s (4 live at a time) beside the WebRTC call: two model versions, the edge and this
    # test share 2 cores, and the test is about who serves which call, not about capacity
    return Traffic(target, run.state / "rollout" / "routing.json", rate=0.5, length_s=8.0)


def within_binomial(on: int, n: int, p: float) -> bool:
    return n == 0 or abs(on - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1


def events_of(run: LocalRun) -> list[dict]:
    return [json.loads(line) for line in (run.state / "rollout" / "events.jsonl").read_text().splitlines()]


async def phase_of(run: LocalRun) -> str:
    res = await asyncio.to_thread(rollout_cli, run.env, run.state, "status", "--json")
    return json.loads(res.stdout)["status"]["phase"] if res.returncode == 0 else ""


async def wait_phase(run: LocalRun, wanted: set[str], timeout_s: float) -> str:
    """The first phase in ``wanted``; a failure naming the rollout's events and the run's output when
    none comes within ``timeout_s``."""
    deadline, phase = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        if (phase := await phase_of(run)) in wanted:
            return phase
        await asyncio.sleep(0.5)
    events = [(e["reason"], e["message"]) for e in events_of(run)]
    pytest.fail(f"the rollout is {phase!r} after {timeout_s:.0f} s, not one of {sorted(wanted)}; "
                f"events {events}\nlocal run:\n{run.up.drain()}")  # fmt: skip


async def settle(run: LocalRun, timeout_s: float) -> dict:
    """The status once the rollout rests (Succeeded or Aborted), or a failure naming its events."""
    try:
        return await follow(run.env, run.state, timeout_s, print)
    except TimeoutError as exc:
        events = [(e["reason"], e["message"]) for e in events_of(run)]
        pytest.fail(f"{exc}; events {events}\nlocal run:\n{run.up.drain()}")


@pytest.mark.timeout(900)  # a local run's start (~1 min), two rollouts under live calls (~3 min)
async def test_a_rollout_moves_new_calls_and_lets_live_ones_finish_then_a_bad_one_rolls_back(run):
    edge = f"http://127.0.0.1:{run.port('MICROTURN_EDGE__PORT')}"
    # -- v2 -> v1 under live calls, with a WebRTC call that started before it ----------------------
    webrtc = EdgeClient(edge, video=False)
    await webrtc.connect()
    await wait_until(lambda: len(webrtc.chunk_arrivals()) >= 5, 120, "the WebRTC call's first outputs")
    calls = traffic(run)
    stop = asyncio.Event()
    runner = asyncio.create_task(calls.run(stop))
    await asyncio.sleep(4)
    res = await asyncio.to_thread(rollout_cli, run.env, run.state, "start", "--to", V1, "--steps", "50,100",
                                  "--hold", "6s", "--min-sessions", "2", "--interval", "3s",
                                  "--drain-deadline", "20s", "--replay-compatible",
                                  # both versions share 2 cores and the candidate carries the new calls:
                                  # tick time fails it only at 3x stable's, a fault, not the sharing
                                  "--threshold", "tick_p99_ms=150:2")  # fmt: skip
    assert res.returncode == 0, res.stderr
    # until v1 takes every new call; v2 cannot retire: the WebRTC call is still on it
    phase = await wait_phase(run, {"Draining", "Retiring", "Succeeded", "Aborting", "Aborted"}, 180)
    assert phase == "Draining", [(e["reason"], e["message"]) for e in events_of(run)]

    def chunks() -> list[dict]:
        return [e for e in webrtc.events if e.get("type") == "chunk"]

    assert {e["model_version"] for e in chunks()} == {V2}, "the call changed version before the deadline"
    # past the 20 s drain deadline the call moves to v1 (replay-compatible versions) and goes on there
    try:
        await wait_until(lambda: any(e["model_version"] == V1 for e in chunks()), 90, "the WebRTC call on v1")
    except AssertionError as exc:
        tail = [
            (e.get("type"), e.get("index"), e.get("model_version"), e.get("message"))
            for e in webrtc.events[-8:]
        ]
        events = [(e["reason"], e["message"]) for e in events_of(run)]
        pytest.fail(f"{exc}: {len(chunks())} chunks, last events of the call {tail}; rollout events {events}"
                    f"\nlocal run:\n{run.up.drain()}")  # fmt: skip
    moved_at = len(chunks())
    await asyncio.sleep(10)
    after = [e["model_version"] for e in chunks()[moved_at:]]
    assert len(after) >= 40 and set(after) == {V1}, after  # 10 s of output (5 per s), all from v1
    indices = [k for k, _ in webrtc.chunk_arrivals()]
    assert indices == list(range(len(indices))) and not [e for e in webrtc.events if e.get("type") == "error"]
    await webrtc.close()
    doc = await settle(run, 180)
    stop.set()
    await runner
    assert doc["status"]["phase"] == "Succeeded" and doc["status"]["stable"] == V1
    assert not calls.check(), calls.check()
    per_epoch = shares(calls, V1)
    assert per_epoch.get(None, (0, 0))[0] == 0  # before the rollout: all on v2
    assert within_binomial(*per_epoch[1], 0.5), per_epoch  # the 50 % step
    assert all(on == n for e, (on, n) in per_epoch.items() if e is not None and e >= 2), per_epoch
    assert sum(n for e, (_, n) in per_epoch.items() if e is not None) >= 10
    events = events_of(run)
    assert any(e["reason"] == "DrainDeadline" and f"move to {V1}" in e["message"] for e in events), events

    # -- a bad candidate (every tick 300 ms late) is rolled back by its own metrics ----------------
    calls = traffic(run)
    stop = asyncio.Event()
    runner = asyncio.create_task(calls.run(stop))
    await asyncio.sleep(3)
    res = await asyncio.to_thread(rollout_cli, run.env, run.state, "start", "--to", V2, "--set",
                                  "fault_tick_delay_ms=300", "--steps", "50,100", "--hold", "60s",
                                  "--min-sessions", "1", "--interval", "3s", "--failure-limit", "2",
                                  "--drain-deadline", "300s")  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = await settle(run, 240)
    stop.set()
    await runner
    st = doc["status"]
    assert st["phase"] == "Aborted" and st["stable"] == V1 and st["weights"] == {V1: 100}
    events = events_of(run)
    failed = [e for e in events if e["reason"] == "AnalysisFailed"]
    # each failed analysis names what the slow candidate broke (misses, or tick time when the whole
    # machine is so loaded that stable misses deadlines too)
    assert len(failed) >= 2, failed
    assert all("deadline_miss_ratio" in e["message"] or "tick_p99_ms" in e["message"] for e in failed), failed
    assert [e["reason"] for e in events][-2:] == ["RolloutAborting", "RolloutAborted"] or any(
        e["reason"] == "RolloutAborting" and "analysis failed" in e["message"] for e in events
    ), events[-5:]
    assert not calls.check(), calls.check()  # the candidate's calls finished: none was dropped
    assert any(c.version == V2 for c in calls.calls), "no call reached the candidate before the rollback"
