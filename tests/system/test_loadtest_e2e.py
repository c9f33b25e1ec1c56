"""`microturn loadtest` against a real `microturn up` on loopback, as an operator runs it: a small
mixed run (aiortc callers for the load, real Chromium canaries) that writes the result and the
report, a deliberately impossible SLO that must exit with the SLO code, and a generator starved of
CPU that must call its own results invalid (the overloaded code) instead of blaming the target.

Latency numbers are printed, never asserted: the machine is shared with the stack under test."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from loadtest import prompts
from loadtest.browser_caller import CHROMIUM
from loadtest.slo import EXIT_OVERLOADED, EXIT_SLO
from loadtest.stack import Stack

from ..need import need

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack():
    need([*prompts.missing_tools(), *([] if Path(CHROMIUM).exists() else [CHROMIUM])], "make system-deps")
    s = Stack({"MICROTURN_RAY__NUM_CPUS": "4"})
    try:
        s.wait_ready(300)
        yield s
    finally:
        code, left = s.down()
        assert code == 0 and not left, f"microturn down: exit {code}, left {left}"


def loadtest(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROTURN_")}
    return subprocess.run(
        [sys.executable, "-m", "microturn", "loadtest", "run", *args, "--quiet"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip


@pytest.mark.timeout(900)
def test_a_mixed_run_reports_and_an_impossible_slo_fails_it(stack, tmp_path):
    out = tmp_path / "mixed"
    res = loadtest(
        "--url", stack.edge_url, "--mode", "mixed", "--browsers", "2", "--stages", "10s:6,35s:6,5s:0",
        "--slo", "turn_latency.p95<1ms", "--slo", "setup_fail_rate<50%", "--out", str(out),
        "--metrics-url", f"{stack.edge_url}/metrics",
        # The generator shares two cores with the whole system under test: bounds for that, not for
        # a load machine (the starvation test below uses the defaults).
        "--max-loop-lag", "400ms", "--max-cpu", "100%", "--overload-seconds", "10s",
    )  # fmt: skip
    print(res.stdout[-6000:], res.stderr[-3000:])
    assert res.returncode == EXIT_SLO, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    result = json.loads((out / "result.json").read_text())
    gates = {v["spec"]: v["passed"] for v in result["slo"]}
    assert gates == {"turn_latency.p95<1ms": False, "setup_fail_rate<50%": True}, result["slo"]
    modes = {s["mode"] for s in result["sessions"]}
    assert modes == {"aiortc", "browser"}, modes
    connected = [s for s in result["sessions"] if s["connected_at"] is not None]
    assert len(connected) >= 8, [(s["caller"], s["failure"]) for s in result["sessions"]]
    for s in connected:
        assert s["first_audio_ms"] is not None, s["caller"]
        # A call the ramp-down ended before its first turn has none; one that lived has turns.
        if s["ended_at"] - s["connected_at"] > 15:
            assert s["turns"], (
                f"{s['caller']} was up {s['ended_at'] - s['connected_at']:.0f} s, played no turn"
            )
    assert {s["mode"] for s in connected if s["turns"]} == {"aiortc", "browser"}
    measured = [
        t["turn_latency_ms"] for s in connected for t in s["turns"] if t["turn_latency_ms"] is not None
    ]
    assert measured, "no turn latency measured in any call"
    browser_stats = [st for s in connected if s["mode"] == "browser" for st in s["stats"]]
    assert browser_stats and max(st["packets_received"] for st in browser_stats) > 0
    assert result["timeline"] and max(row["active_sessions"] for row in result["timeline"]) >= 6
    assert not result["generator"]["overloaded"], result["generator"]
    report = (out / "report.html").read_text()
    assert "turn_latency.p95&lt;1ms" in report or "turn_latency.p95<1ms" in report
    assert report.count("data:image/png;base64,") >= 3
    assert (out / "sessions.csv").read_text().count("\n") == len(result["sessions"]) + 1
    print("turn latency ms:", sorted(measured))


def _hog(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
    while True:
        pass


def _edge_sessions(stack) -> float:
    with urllib.request.urlopen(f"{stack.edge_url}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("microturn_edge_sessions"):
                return float(line.split()[-1])
    return 0.0


@pytest.mark.timeout(900)
def test_a_starved_generator_says_its_results_are_invalid(stack, tmp_path):
    """Once its calls are up, the generator's processes are pinned to one CPU at nice 19 beside busy
    loops at nice 0: it gets a few percent of that CPU for 10 s, its event loops lag far past the
    bound, and the run must exit EXIT_OVERLOADED, saying its results are invalid."""
    out = tmp_path / "starved"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROTURN_")}
    cmd = [sys.executable, "-m", "microturn", "loadtest", "run", "--url", stack.edge_url, "--quiet",
           "--stages", "40s:2", "--workers", "1", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 180
    while _edge_sessions(stack) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "the calls never came up"
        time.sleep(0.5)
    cpu = sorted(os.sched_getaffinity(0))[0]
    generator = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for g in generator:
        with contextlib.suppress(psutil.Error):
            g.cpu_affinity([cpu])
            g.nice(19)
    hogs = [mp.get_context("spawn").Process(target=_hog, args=(cpu,), daemon=True) for _ in range(4)]
    for h in hogs:
        h.start()
    try:
        time.sleep(10)
    finally:
        for h in hogs:
            h.kill()
    output, _ = proc.communicate(timeout=600)
    print(output[-4000:])
    assert proc.returncode == EXIT_OVERLOADED, f"exit {proc.returncode}\n{output[-3000:]}"
    result = json.loads((out / "result.json").read_text())
    assert result["generator"]["overloaded"] and result["generator"]["reason"], result["generator"]
    assert "overloaded" in output.lower()
