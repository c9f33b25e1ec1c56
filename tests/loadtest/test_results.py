"""Histograms that merge across shards, and run results built from synthetic caller records."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from loadtest import results
from loadtest.histograms import HIGHEST_MS, LatencyHistogram, merged
from loadtest.records import SCHEMA_VERSION, SessionRecord, StatsSample, TurnRecord
from loadtest.results import ResultError, build, capacity, load, merge, save

T0 = 1_800_000_000.0  # a whole epoch second, so timeline rows line up with the offsets below


def make_session(
    i: int,
    *,
    dial: float = 0.0,
    latencies: tuple[float, ...] = (300.0, 400.0),
    shard: int = 0,
    connected: bool = True,
    failure: str = "",
    length: float = 20.0,
    yields: tuple[float, ...] = (),
    gaps: tuple[float, ...] = (),
    packets: tuple[int, int] = (1000, 0),  # received, lost over the call
    samples: tuple[int, int] = (96_000, 0),  # received, concealed over the call
    version: str = "tiny-1",
) -> SessionRecord:
    """A call dialed ``dial`` s after T0: one turn every 4 s from 2 s after connecting, answered
    after each of ``latencies``; stats every second, with the loss and concealment at the end."""
    dialed = T0 + dial
    s = SessionRecord(f"aiortc-{shard}-{i}", "aiortc", "smoke", shard=shard, session_id=f"s{shard}-{i}",
                      model_version=version, dialed_at=dialed)  # fmt: skip
    if not connected:
        s.failure = "setup"
        s.ended_at = dialed + 5.0
        return s
    s.connected_at = dialed + 0.5
    s.setup_ms = 500.0
    s.first_audio_at = dialed + 1.0
    s.first_audio_ms = 1000.0
    s.ended_at = dialed + length
    s.failure = failure
    for k, lat in enumerate(latencies):
        said = s.connected_at + 2.0 + 4.0 * k
        end = said + 1.0
        s.turns.append(TurnRecord(k, "speech", said, end, end + lat / 1000.0, lat))
    for k, y in enumerate(yields):
        said = s.connected_at + 1.0 + 4.0 * k
        s.turns.append(TurnRecord(100 + k, "barge_in", said, said + 0.5, barge_in_at=said, yield_ms=y))
    s.audio_gaps_ms = list(gaps)
    n = int(length)
    for k in range(1, n + 1):
        f = k / n
        s.stats.append(StatsSample(dialed + k - 0.5, packets_received=int(packets[0] * f), packets_lost=int(packets[1] * f),
                                   total_samples_received=int(samples[0] * f), concealed_samples=int(samples[1] * f)))  # fmt: skip
    return s


# ---------------------------------------------------------------- histograms


def test_merged_shard_histograms_equal_one_histogram_of_all_values():
    rng = np.random.default_rng(7)
    values = rng.lognormal(mean=6.0, sigma=0.6, size=20_000)  # ~400 ms median, a long tail
    whole = LatencyHistogram.of(values)
    shards = [LatencyHistogram.of(part) for part in np.array_split(values, 5)]
    # Shards travel encoded (result.json), so merge what came back over the wire.
    together = merged([LatencyHistogram.decode(h.encode()) for h in shards])
    assert together.count == whole.count == len(values)
    assert together == whole  # bucket for bucket
    for p in (50, 90, 99, 99.9):
        assert together.percentile(p) == whole.percentile(p)
    exact_p99 = results.nearest_rank(list(values), 99)
    assert exact_p99 is not None
    assert abs(together.percentile(99) - exact_p99) <= 0.001 * exact_p99 + 0.5  # 0.1 % (+ the 1 ms rounding)
    assert together.max == whole.max and together.min == whole.min


def test_encode_decode_round_trips():
    h = LatencyHistogram.of([0.2, 1, 17, 250, 250, 9_999, 123_456])
    back = LatencyHistogram.decode(h.encode())
    assert back == h
    assert (back.count, back.min, back.max) == (h.count, h.min, h.max)
    assert back.to_summary() == h.to_summary()
    empty = LatencyHistogram.decode(LatencyHistogram().encode())
    assert empty.count == 0 and empty.percentile(99) is None and empty.max is None
    with pytest.raises(ValueError, match="not an encoded HdrHistogram"):
        LatencyHistogram.decode("this is not a histogram")


def test_histogram_values_and_errors():
    h = LatencyHistogram.of([100, 200, 300, 400, None])
    assert h.count == 4
    assert h.percentile(50) == pytest.approx(200, rel=1e-3)
    assert h.mean == pytest.approx(250, rel=1e-2)
    assert set(h.to_summary()) == {"p50", "p90", "p95", "p99", "max", "count"}
    assert h.cdf()[-1][1] == 1.0
    with pytest.raises(ValueError, match="finite number of ms"):
        h.record(-1)
    with pytest.raises(ValueError, match="finite number of ms"):
        h.record(math.nan)
    with pytest.raises(ValueError, match=r"percentile must be in 0\.\.100"):
        h.percentile(101)
    big = LatencyHistogram.of([HIGHEST_MS * 3])
    assert big.clamped == 1 and big.max == pytest.approx(HIGHEST_MS, rel=1e-3)
    # Merging an empty histogram changes nothing (hdrh alone would reset the minimum to 0).
    assert h.copy().merge(LatencyHistogram()).min == h.min


# ---------------------------------------------------------------- build


def test_build_counts_histograms_and_rates():
    sessions = [
        make_session(0, latencies=(300, 500), yields=(150,), gaps=(120, 480)),
        make_session(
            1, dial=1, latencies=(700,), failure="dropped", packets=(900, 100), samples=(96_000, 4_800)
        ),
        make_session(2, dial=2, connected=False),
        make_session(3, dial=3, latencies=(), version="tiny-2"),
    ]
    r = build(sessions, {"profile": "smoke"}, target={"url": "http://edge"}, slos=["turn_latency.p95<800ms"])
    assert r.schema_version == SCHEMA_VERSION
    t = r.totals
    assert (t.sessions, t.connected, t.setup_failures, t.call_failures) == (4, 3, 1, 1)
    assert (t.turns, t.answered_turns, t.barge_ins) == (4, 3, 1)
    assert r.histograms["turn_latency"].count == 3
    assert r.histograms["turn_latency"].max == pytest.approx(700, rel=1e-3)
    assert r.histograms["setup"].count == 3 and r.histograms["first_audio"].count == 3
    assert r.histograms["barge_in_yield"].count == 1
    assert r.histograms["audio_gap"].max == pytest.approx(480, rel=1e-3)
    assert t.setup_fail_rate_pct == pytest.approx(25.0)
    assert t.call_fail_rate_pct == pytest.approx(100 / 3)
    assert t.packet_loss_pct == pytest.approx(100 * 100 / (1000 + 1000 + 1000))
    assert t.concealed_pct == pytest.approx(100 * 4_800 / (3 * 96_000))
    assert r.target == {"url": "http://edge", "model_versions": ["tiny-1", "tiny-2"]}
    assert r.started_at == T0 and r.ended_at == pytest.approx(T0 + 3 + 20)
    assert [v["passed"] for v in r.slo] == [True]
    assert r.shards == [0]


def test_timeline_has_one_row_per_second_from_the_records_times():
    a = make_session(0, latencies=(250,))  # connected 0.5, turn said 2.5, speech end 3.5, answer 3.75
    b = make_session(1, dial=2.2, connected=False)  # setup failure counted at its end, 7.2
    c = make_session(2, dial=1.0, latencies=(900,), failure="dropped", length=6.0)  # answer 5.4, ends 7.0
    r = build([a, b, c], {}, started_at=T0, ended_at=T0 + 20)
    rows = r.timeline
    assert len(rows) == 20 and [row["t"] for row in rows] == list(range(20))
    assert rows[0]["at"] == int(T0)
    assert [row["dials"] for row in rows[:4]] == [1, 1, 1, 0]
    assert rows[3]["turns"] == 1 and rows[3]["turn_p50_ms"] == 250 and rows[3]["turn_p95_ms"] == 250
    assert rows[5]["turns"] == 1 and rows[5]["turn_p95_ms"] == 900
    assert rows[4]["turns"] == 0 and rows[4]["turn_p50_ms"] is None
    assert rows[7]["setup_failures"] == 1 and rows[7]["call_failures"] == 1
    assert rows[0]["active_sessions"] == 1 and rows[2]["active_sessions"] == 2
    assert rows[8]["active_sessions"] == 1  # c hung up at 7.0
    assert sum(row["turns"] for row in rows) == r.totals.answered_turns


def test_timeline_loss_and_concealment_come_from_counter_deltas():
    s = make_session(0, packets=(1000, 0), samples=(100_000, 0), length=10.0)
    # Loss only between the 4th and 5th sample: cumulative counters, so the timeline shows deltas.
    for st in s.stats[4:]:
        st.packets_lost += 50
        st.concealed_samples += 1_000
    r = build([s], {}, started_at=T0, ended_at=T0 + 10)
    loss = [row["packet_loss_pct"] for row in r.timeline]
    assert loss[4] == pytest.approx(100 * 50 / (100 + 50))
    assert all(x == 0 for i, x in enumerate(loss) if i != 4)
    assert r.timeline[4]["concealed_pct"] == pytest.approx(100 * 1_000 / 10_000)
    assert r.totals.packets_lost == 50 and r.totals.concealed_samples == 1_000


def test_generator_and_target_samples_fill_the_timeline_and_overload():
    gen = [{"at": T0 + k + 0.5, "cpu_pct": 50.0, "loop_lag_ms": 3.0} for k in range(10)]
    tgt = [{"at": T0 + k + 0.2, "edge_sessions": k, "tick_ms_p95": 20.0 + k} for k in range(10)]
    r = build([make_session(0, length=10)], {}, started_at=T0, ended_at=T0 + 10,
              generator={"cores": 2}, generator_samples=gen, target_samples=tgt)  # fmt: skip
    assert r.timeline[3]["generator_cpu_pct"] == 50.0 and r.timeline[3]["edge_sessions"] == 3
    assert r.generator["cores"] == 2 and r.generator["cpu_pct_max"] == 50.0
    assert r.generator["overloaded"] is False and not r.overloaded
    lagged = build([], {}, generator_samples=[*gen, {"at": T0 + 4, "loop_lag_ms": 250.0}])
    assert lagged.overloaded and "event loop lag 250 ms" in lagged.generator["reason"]
    busy = build([], {}, generator_samples=[{"at": T0 + k, "cpu_pct": 97.0} for k in range(3)])
    assert busy.overloaded and "CPU >= 90%" in busy.generator["reason"]
    blip = build(
        [], {}, generator_samples=[{"at": T0 + k, "cpu_pct": c} for k, c in enumerate((97, 20, 97, 20))]
    )
    assert not blip.overloaded
    told = build([], {}, generator={"cores": 8, "overloaded": True, "reason": "browser workers starved"})
    assert told.overloaded and told.generator["reason"] == "browser workers starved"
    with pytest.raises(ResultError, match="no 'at' time"):
        build([make_session(0)], {}, generator_samples=[{"cpu_pct": 3.0}])


# ---------------------------------------------------------------- files


def test_save_and_load_round_trip(tmp_path):
    sessions = [
        make_session(i, dial=i, latencies=(200 + 100 * i, 300 + 100 * i), gaps=(150,)) for i in range(3)
    ]
    sessions.append(make_session(3, connected=False))
    sessions[0].errors = {"late_chunk": 2, "overflow": 1}
    steps = [{"level": 2, "started_at": T0, "ended_at": T0 + 10}]
    r = build(sessions, {"profile": "ramp", "callers": 3}, target={"url": "http://edge"},
              steps=steps, slos=["turn_latency.p95<800ms", "setup_fail_rate<1%"])  # fmt: skip
    path = save(r, tmp_path / "run")
    assert path == tmp_path / "run" / "result.json"
    back = load(tmp_path / "run")
    assert back.histograms == r.histograms
    assert [s.to_dict() for s in back.sessions] == [s.to_dict() for s in r.sessions]
    assert back.timeline == r.timeline and back.steps == r.steps and back.slo == r.slo
    assert back.totals == r.totals and back.config == r.config and back.generator == r.generator
    assert load(path).started_at == r.started_at
    with (tmp_path / "run" / "sessions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["caller"] for row in rows] == [s.caller for s in sessions]
    assert rows[0]["errors"] == "late_chunk=2;overflow=1"
    assert (
        float(rows[1]["turn_p95_ms"]) == 400.0 and rows[3]["failure"] == "setup" and rows[3]["setup_ms"] == ""
    )
    assert {"mode", "setup_ms", "first_audio_ms", "turns", "turn_p50_ms", "failure"} <= set(rows[0])


def test_load_refuses_other_schema_versions_and_junk(tmp_path):
    path = save(build([make_session(0)], {}), tmp_path)
    d = json.loads(path.read_text())
    d["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(d))
    with pytest.raises(ResultError, match=f"schema_version {SCHEMA_VERSION + 1}"):
        load(path)
    path.write_text("{not json")
    with pytest.raises(ResultError, match="not JSON"):
        load(path)
    with pytest.raises(ResultError, match="no such result file"):
        load(tmp_path / "missing")
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION}))
    with pytest.raises(ResultError, match="not a load-test result"):
        load(path)


# ---------------------------------------------------------------- merge


def _shard(index: int, n: int, overloaded: bool = False) -> results.RunResult:
    rng = np.random.default_rng(index)
    sessions = [
        make_session(i, dial=float(i % 5), shard=index, latencies=tuple(rng.uniform(200, 900, 4).round(1)))
        for i in range(n)
    ]
    gen = [{"at": T0 + k, "cpu_pct": 30.0 + 10 * index, "loop_lag_ms": 2.0} for k in range(25)]
    steps = [
        {"level": 10, "started_at": T0, "ended_at": T0 + 12},
        {"level": 20, "started_at": T0 + 12, "ended_at": T0 + 25},
    ]
    return build(sessions, {"profile": "step", "shard": f"{index}/2"}, target={"url": "http://edge"}, shards=[index],
                 generator={"cores": 2, **({"overloaded": True, "reason": "loop lag"} if overloaded else {})},
                 generator_samples=gen, steps=steps, slos=["turn_latency.p95<800ms"])  # fmt: skip


def test_merge_adds_shards_into_the_one_result_of_all_sessions():
    a, b = _shard(0, 6), _shard(1, 4, overloaded=True)
    m = merge([a, b])
    whole = build(a.sessions + b.sessions, {}, started_at=m.started_at, ended_at=m.ended_at)
    assert m.shards == [0, 1]
    assert len(m.sessions) == 10
    for name, h in whole.histograms.items():
        assert m.histograms[name] == h, name
        assert m.histograms[name] == merged([a.histograms[name], b.histograms[name]])
    assert m.totals == whole.totals
    by_at = {row["at"]: row for row in m.timeline}
    for row in a.timeline:
        other = next((x for x in b.timeline if x["at"] == row["at"]), None)
        for k in ("dials", "turns", "active_sessions", "setup_failures", "call_failures"):
            assert by_at[row["at"]][k] == row[k] + (other[k] if other else 0), k
        assert by_at[row["at"]]["generator_cpu_pct"] == 40.0  # the busier shard's
    assert m.generator["overloaded"] is True and "shard 1: loop lag" in m.generator["reason"]
    assert m.generator["cores"] == 4 and len(m.generator["per_shard"]) == 2
    assert [s["level"] for s in m.steps] == [10, 20]
    assert m.steps[0]["turns"] == a.steps[0]["turns"] + b.steps[0]["turns"]
    assert [v["spec"] for v in m.slo] == ["turn_latency.p95<800ms"]
    assert m.slo[0]["observed"] == m.histograms["turn_latency"].percentile(95)
    assert m.config["per_shard"][1]["shard"] == "1/2"


def test_merge_refuses_double_counting_and_disagreeing_steps():
    a = _shard(0, 2)
    with pytest.raises(ResultError, match="shard 0 is in results 0 and 1"):
        merge([a, a])
    b = _shard(1, 2)
    b.steps[1]["level"] = 15
    with pytest.raises(ResultError, match="step 1 is level 20 in one shard and 15"):
        merge([a, b])
    with pytest.raises(ResultError, match="nothing to merge"):
        merge([])


# ---------------------------------------------------------------- steps and capacity


def step_run(
    p95s: tuple[float, ...], levels: tuple[int, ...] = (5, 10, 20, 40), slos=("turn_latency.p95<800ms",)
):
    """One 30 s step per level; the calls of step k answer in ``p95s[k]`` ms."""
    sessions, steps = [], []
    for k, (level, lat) in enumerate(zip(levels, p95s, strict=True)):
        start = 30.0 * k
        steps.append({"level": level, "started_at": T0 + start, "ended_at": T0 + start + 30})
        sessions += [
            make_session(100 * k + i, dial=start + 0.1 * i, latencies=(lat, lat), length=25.0)
            for i in range(3)
        ]
    return build(sessions, {"profile": "step"}, steps=steps, slos=list(slos))


def test_steps_measure_each_level_window():
    r = step_run((300, 400, 700, 1200))
    assert [s["level"] for s in r.steps] == [5, 10, 20, 40]
    assert [s["turn_p95_ms"] for s in r.steps] == pytest.approx([300, 400, 700, 1200], rel=1e-3)
    assert [s["passed"] for s in r.steps] == [True, True, True, False]
    assert all(s["turns"] == 6 and s["dials"] == 3 and s["failures"] == 0 for s in r.steps)
    assert r.steps[3]["verdicts"][0]["observed"] == pytest.approx(1200, rel=1e-3)


def test_capacity_is_the_last_passing_level_before_the_first_failure():
    cap = capacity(step_run((300, 400, 700, 1200)))
    assert cap.sessions_at_slo == 20 and cap.knee_index == 2 and cap.first_failing_level == 40
    assert cap.failed_gates == ["turn_latency.p95<800ms (observed 1200 ms)"]
    # A level that passes again after a failure is noise above the knee, not capacity.
    assert capacity(step_run((300, 900, 300, 300))).sessions_at_slo == 5
    first_fails = capacity(step_run((900, 300, 300, 300)))
    assert first_fails.sessions_at_slo is None and "lowest level (5) already fails" in first_fails.reason
    assert capacity(step_run((100, 200, 300, 400))).sessions_at_slo == 40
    # Other gates than the run's; audio gaps carry no times, so they do not apply to steps.
    r = step_run((300, 400, 700, 1200))
    assert capacity(r, ["turn_latency.p95<500ms", "audio_gap.max<1ms"]).sessions_at_slo == 10
    assert capacity(r, ["audio_gap.max<1ms"]).reason == "no gate applies to steps"
    assert capacity(build([make_session(0)], {}), ["turn_latency.p95<1s"]).sessions_at_slo is None
