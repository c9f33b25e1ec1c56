"""The short soak (`make soak` runs the long one): the whole system from `microturn up`, two WebRTC
callers for about 70 s, a Serve replica SIGKILLed at 20 s and nats-server killed at 40 s. Every
call's output must go on to its end with every chunk index exactly once, and every service must be
alive (restarted where it was killed) with nothing left after `microturn down`. Gaps and memory are
printed, not asserted: the machine is shared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
DURATION_S, KILL_AT_S, NATS_AT_S = 70, 20, 40


@pytest.mark.timeout(1200)
def test_short_soak_survives_a_replica_kill_and_a_nats_restart(tmp_path):
    report_path = tmp_path / "soak.json"
    cmd = [
        sys.executable, "-m", "loadtest.soak", "--duration", str(DURATION_S), "--callers", "2",
        "--kill-at", str(KILL_AT_S), "--nats-restart-at", str(NATS_AT_S), "--sample-every", "20",
        "--report", str(report_path), "--log", str(tmp_path / "up.log"),
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1100)
    print(res.stdout[-12000:])
    assert res.returncode != 2, "the stack did not start:\n" + res.stderr[-4000:]
    assert report_path.exists(), res.stdout[-4000:] + res.stderr[-4000:]
    r = json.loads(report_path.read_text())
    why = "\n".join(r["failures"]) + "\n" + res.stdout[-3000:]

    calls = r["calls"]
    assert calls, why
    for c in calls:
        name = f"call {c['caller']}.{c['call']}"
        assert not c["ended_early"], f"{name} ended early: {c['ended_early']}\n{why}"
        assert c["output_to_end"], (
            f"{name}: output stopped {c['last_chunk_before_hangup_s']} s before hangup\n{why}"
        )
        assert c["first_index"] == 0 and c["lost"] == 0, f"{name}: chunks lost: {c['lost_indices']}\n{why}"
        assert c["repeated"] == 0, f"{name}: chunks repeated: {c['repeated_indices']}\n{why}"
    assert r["calls_completed"] == r["calls_total"], why
    # both calls were up across both faults, which were injected and recovered from
    assert [f["what"].split()[0] for f in r["faults"]] == ["replica", "nats-server"], r["faults"]
    for f in r["faults"]:
        assert "error" not in f, f"{f['what']}: {f['error']}"
        assert len(f["gaps_s"]) == 2, f"{f['what']}: not every call was live across it: {f['gaps_s']}"
    assert set(r["health_at_end"].values()) == {"ok"}, r["health_at_end"]
    assert r["services"]["nats"].get("note") == "restarted", r["services"]["nats"]
    assert r["down"] == {"exit": 0, "left": []}, r["down"]
    assert r["ok"], why
