"""The runner's decisions (overload, metrics, workers), the CLI's argument errors (EXIT_CONFIG), the
aiortc caller's measuring pieces, and one run's plumbing against an edge that is not there."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import yaml

from loadtest import aiortc_caller, cli, profiles, runner
from loadtest.onset import SpeechSpan
from loadtest.prompts import Prompt
from loadtest.records import TurnRecord
from loadtest.runner import LoadSample, overload_reason
from loadtest.scenario import Scenario, load_scenario
from loadtest.slo import EXIT_CONFIG, EXIT_OK, EXIT_SLO
from loadtest.turns import ReceivedSpeech

# ------------------------------------------------------------------ overload


def samples(values: list[tuple[float, float]], start: float = 100.0) -> list[LoadSample]:
    return [LoadSample(start + i, cpu, lag) for i, (cpu, lag) in enumerate(values)]


def test_not_overloaded_without_samples_or_with_short_bursts() -> None:
    assert overload_reason([]) == ""
    assert overload_reason(samples([(95, 0)] * 3 + [(20, 0)] + [(95, 0)] * 3)) == ""  # 2 s runs
    assert overload_reason(samples([(95, 200), (10, 1)] * 10)) == ""  # alternating


def test_sustained_cpu_is_overload() -> None:
    why = overload_reason(samples([(10, 1)] * 3 + [(95, 1)] * 5 + [(10, 1)]), max_cpu_pct=90, sustain_s=3)
    assert "generator CPU over 90%" in why and "for 4 s" in why and "event-loop" not in why


def test_sustained_loop_lag_is_overload_and_order_does_not_matter() -> None:
    run = samples([(10, 80)] * 6)
    why = overload_reason(list(reversed(run)), max_loop_lag_ms=50, sustain_s=3)
    assert "event-loop lag over 50 ms for 5 s (up to 80 ms)" in why
    assert overload_reason(run, max_loop_lag_ms=100) == ""  # under a higher limit
    assert overload_reason(run, max_loop_lag_ms=50, sustain_s=6) == ""  # not long enough


# ------------------------------------------------------------------ target metrics

METRICS = """\
# HELP microturn_edge_sessions sessions
# TYPE microturn_edge_sessions gauge
microturn_edge_sessions{edge="a"} 3
# TYPE microturn_chunk_deadline_misses_total counter
microturn_chunk_deadline_misses_total{replica="r1"} 5
microturn_chunk_deadline_misses_total{replica="r2"} 2
# TYPE microturn_tick_duration_milliseconds histogram
microturn_tick_duration_milliseconds_bucket{le="5.0"} 10
microturn_tick_duration_milliseconds_bucket{le="10.0"} 96
microturn_tick_duration_milliseconds_bucket{le="+Inf"} 100
microturn_tick_duration_milliseconds_count 100
microturn_tick_duration_milliseconds_sum 700
# TYPE other_metric gauge
other_metric 9
"""


def test_metrics_parse_to_the_timeline_numbers() -> None:
    m = runner.parse_metrics(METRICS)
    assert m["edge_sessions"] == 3 and m["deadline_misses"] == 7
    assert (m["tick_count"], m["tick_sum_ms"]) == (100, 700)
    assert runner.tick_p95({}, m) == 10.0
    later = {**m, "tick_count": 200.0, "tick_le_5.0": 110.0, "tick_le_10.0": 196.0, "tick_le_+Inf": 200.0}
    assert runner.tick_p95(m, later) == 5.0  # the last 100 ticks: all under 5 ms
    assert runner.tick_p95(m, m) is None  # no ticks in between


# ------------------------------------------------------------------ sizing


def cfg(**kw: object) -> runner.RunConfig:
    base: dict = {
        "url": "http://127.0.0.1:1",
        "scenario": load_scenario("smoke"),
        "profile": profiles.constant(10, 10),
        "out": Path("/tmp/unused"),
    }
    return runner.RunConfig(**{**base, **kw})


def test_workers_and_browsers_per_mode() -> None:
    assert runner.default_workers(cfg(), aiortc_peak=10, cores=4) == 4
    assert runner.default_workers(cfg(), aiortc_peak=2, cores=16) == 2
    assert runner.default_workers(cfg(workers=3), aiortc_peak=50, cores=2) == 3
    assert runner.browser_count(cfg()) == 0
    assert runner.browser_count(cfg(mode="browser")) == 10
    assert runner.browser_count(cfg(mode="browser", shard=profiles.Shard(1, 4))) == 3
    assert runner.browser_count(cfg(mode="mixed", browsers=2)) == 2
    assert runner.browser_count(cfg(mode="mixed", browser_share=0.1)) == 1
    assert runner.browser_count(cfg(mode="mixed", browser_share=0.25)) == 3


def test_peak_and_steps() -> None:
    events = list(profiles.plan(profiles.Profile("p", profiles.parse_stages("0s:4,5s:4,0s:2,5s:2"))))
    assert runner.peak_of(events) == 4
    step = profiles.preset("step", step_levels=[1, 3], turn_s=2.0, setup_s=1.0)
    specs = runner.step_specs(step, t0=1000.0)
    assert [(s["level"], s["started_at"]) for s in specs] == [(1, 1000.0), (3, 1007.0)]
    assert runner.step_specs(profiles.constant(2, 5), 1000.0) == []


# ------------------------------------------------------------------ the CLI


def code_of(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "usage"),
        (["frobnicate"], "invalid choice"),
        (["run"], "--url"),
        (["run", "--url", "http://x", "--scenario", "nope"], "unknown scenario 'nope'"),
        (["run", "--url", "http://x", "--stages", "30s"], "expected DURATION:TARGET"),
        (["run", "--url", "http://x", "--stages", "30s:2", "--profile", "ramp"], "not both"),
        (["run", "--url", "http://x", "--slo", "latency<3"], "unknown metric 'latency'"),
        (["run", "--url", "http://x", "--shard", "3/2"], "--shard"),
        (["run", "--url", "http://x", "--join-rate", "fast"], "--join-rate"),
        (["run", "--url", "http://x", "--max-cpu", "120%"], "--max-cpu"),
        (["run", "--url", "http://x", "--browsers", "2"], "--mode mixed"),
        (["run", "--url", "http://x", "--profile", "ramp", "--step-levels", "2,4"], "--profile step"),
        (["run", "--url", "http://x", "--callers", "0"], "--callers"),
        (["merge", "/nonexistent/dir", "--out", "/tmp/x"], "no such result"),
        (["k8s", "--image", "i", "--shards", "0", "--url", "http://e"], "--shards"),
    ],
)
def test_bad_arguments_exit_config(args: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = code_of(args, capsys)
    assert code == EXIT_CONFIG
    assert says in text, text


def test_a_bad_scenario_file_exits_config_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"name": "b", "session_s": 10, "turns": [{"say": "a", "barge_in_ms": 5}]}))
    code, text = code_of(["run", "--url", "http://x", "--scenario", str(f)], capsys)
    assert code == EXIT_CONFIG and "turns[0]" in text and "bad.yaml" in text


def test_help_teaches_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    code, text = code_of(["--help"], capsys)
    assert code == EXIT_OK and "Examples:" in text and "loadtest merge" in text
    code, text = code_of(["run", "--help"], capsys)
    assert code == EXIT_OK and "--stages 30s:10,60s:10,30s:0" in text and "turn_latency.p95<800ms" in text


def test_run_options_become_a_run_config(tmp_path: Path) -> None:
    ns = cli.build_parser().parse_args(
        ["run", "--url", "http://e:1", "--profile", "step", "--step-levels", "2,4", "--step-hold-turns", "2",
         "--shard", "1/3", "--start-at", "1767225600", "--join-rate", "60/m", "--slo", "turn_latency.p95<1s",
         "--max-loop-lag", "80ms", "--mode", "mixed", "--browser-share", "10%", "--out", str(tmp_path)]
    )  # fmt: skip
    c = cli.run_config(ns)
    assert c.profile.name == "step" and [lvl for *_, lvl in profiles.level_spans(c.profile)] == [2, 4]
    assert c.shard == profiles.Shard(1, 3) and c.start_at == 1767225600 and c.join_rate == 1.0
    assert c.max_loop_lag_ms == 80 and c.browser_share == 0.1 and c.out == tmp_path
    assert c.to_dict()["profile_hold_turns"] == 2
    smoke = cli.run_config(cli.build_parser().parse_args(["run", "--url", "http://e:1"]))
    assert smoke.profile.once and smoke.profile.peak == 1


def test_k8s_prints_manifests(capsys: pytest.CaptureFixture[str]) -> None:
    code, text = code_of(
        ["k8s", "--image", "img:1", "--shards", "2", "--url", "http://edge:8080", "--", "--profile", "ramp"],
        capsys,
    )
    assert code == EXIT_OK
    kinds = [d["kind"] for d in yaml.safe_load_all(text)]
    assert "Job" in kinds and "--profile" in text


# ------------------------------------------------------------------ the aiortc caller's pieces


def test_mic_timestamps_the_end_of_speech(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(10.0 + 0.02 * i for i in range(100))
    monkeypatch.setattr(aiortc_caller.time, "time", lambda: next(clock))
    mic = aiortc_caller.ScenarioMic(seed=1)
    u = mic.speak(Prompt("say:x", np.full(2000, 1000, np.int16), 2000))
    frames = [mic._samples() for _ in range(4)]
    assert u.started_at == 10.0
    assert u.ended_at == pytest.approx(10.04 + 80 / 48_000)  # frame 2 holds samples 1920..2879
    assert u.done is not None and u.done.is_set()
    assert all(len(f) == 960 for f in frames)
    assert frames[2][79] == 1000 and frames[2][80] == 0 and np.abs(frames[3]).max() < 1000  # then quiet


def test_received_stereo_becomes_mono() -> None:
    stereo = np.tile(np.array([100, 300], np.int16), 960).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
    mono = aiortc_caller.to_mono(frame)
    assert mono.shape == (960,) and set(mono.tolist()) == {200}


def test_stats_sample_reads_inbound_and_rtt() -> None:
    report = {
        "in": SimpleNamespace(
            type="inbound-rtp", kind="audio", packetsReceived=100, packetsLost=2, jitter=480
        ),
        "rtt": SimpleNamespace(type="remote-inbound-rtp", roundTripTime=0.025),
        "out": SimpleNamespace(type="outbound-rtp", packetsSent=99),
    }
    s = aiortc_caller.stats_sample(report, at=5.0, samples_received=96_000)
    assert (s.at, s.packets_received, s.packets_lost, s.jitter_ms, s.rtt_ms) == (5.0, 100, 2, 10.0, 25.0)
    assert (s.total_samples_received, s.concealed_samples) == (96_000, 0)


class FakeDetector:
    def __init__(self, spans: list[SpeechSpan]) -> None:
        self.spans = spans

    def first_onset_after(self, t: float) -> float | None:
        return next((s.onset for s in self.spans if s.onset >= t), None)

    def speech_spans(self) -> list[SpeechSpan]:
        return self.spans

    def flush(self) -> list[float]:
        return []


async def test_finish_settles_answers_yields_and_drops_cut_turns() -> None:
    sc = Scenario.model_validate(
        {"name": "f", "session_s": 60, "answer_timeout_s": 10, "turns": [{"say": "a"}]}
    )
    caller = aiortc_caller.AiortcCaller("http://127.0.0.1:1", sc, {}, "aiortc-0-0-0")
    try:
        now = time.time()
        onsets = ReceivedSpeech.__new__(ReceivedSpeech)
        onsets.detector = FakeDetector([SpeechSpan(now - 49.5, now - 45.0), SpeechSpan(now - 29.0, None)])
        caller.onsets = onsets
        caller.errors["UNAVAILABLE"] = 2
        caller.rec.turns = [
            TurnRecord(0, "speech", said_at=now - 52, speech_end_at=now - 50),  # answered after 500 ms
            TurnRecord(1, "barge_in", said_at=now - 46, speech_end_at=now - 45.5, barge_in_at=now - 46),
            TurnRecord(2, "text", said_at=now - 40, speech_end_at=None),  # nothing in 10 s: unanswered
            TurnRecord(3, "speech", said_at=now - 3, speech_end_at=now - 2),  # window cut by the hangup
        ]
        caller._finish()
        turns = {t.index: t for t in caller.rec.turns}
        assert sorted(turns) == [0, 1, 2]
        assert turns[0].turn_latency_ms == pytest.approx(500, abs=1)
        assert turns[1].yield_ms == pytest.approx(1000, abs=1)  # speaking at the barge-in, stopped 1 s later
        assert turns[1].turn_latency_ms is None  # the next onset came after answer_timeout_s
        assert turns[2].turn_latency_ms is None and turns[2].answer_onset_at is None
        assert caller.rec.errors == {"UNAVAILABLE": 2} and caller.rec.ended_at is not None
    finally:
        await caller.pc.close()
        await caller.http.aclose()


# ------------------------------------------------------------------ one run, no edge


def test_a_run_against_no_edge_records_setup_failures(tmp_path: Path) -> None:
    """The whole plumbing (a spawned worker, records back, result.json, gates, exit code) with
    calls that fail at once: nothing listens on the URL."""
    from microturn.localrun.ports import free_port

    sc = Scenario.model_validate(
        {"name": "typed", "session_s": 5, "turns": [{"text": "hello"}], "answer_timeout_s": 2}
    )
    out = tmp_path / "out"
    outcome = runner.run(
        runner.RunConfig(
            url=f"http://127.0.0.1:{free_port()}", scenario=sc, profile=profiles.preset("smoke", smoke_s=20),
            out=out, workers=1, quiet=True, slos=["setup_fail_rate<1%"],
        )
    )  # fmt: skip
    assert outcome.exit_code == EXIT_SLO
    assert outcome.out_dir == out and (out / "result.json").is_file() and (out / "sessions.csv").is_file()
    data = json.loads((out / "result.json").read_text())
    assert len(data["sessions"]) == 1
    s = data["sessions"][0]
    assert s["failure"].startswith("setup:") and s["connected_at"] is None and s["mode"] == "aiortc"
    assert data["slo"][0]["passed"] is False and data["generator"]["workers"] == 1


def test_calibrate_measures_the_onset_bias(capsys: pytest.CaptureFixture[str]) -> None:
    from loadtest import prompts
    from tests.need import need

    need(prompts.missing_tools(), "apt-get install espeak-ng sox")
    code, text = code_of(["calibrate", "--json", "--placements", "2"], capsys)
    assert code == EXIT_OK
    bias = json.loads(text.strip().splitlines()[-1])["onset"]
    assert bias["placements"] == 2
    assert bias["raw"]["missed"] == 0 and abs(bias["raw"]["bias_ms_median"]) < 20
    assert bias["opus"]["missed"] == 0 and bias["opus"]["bias_ms_median"] >= bias["raw"]["bias_ms_median"]
