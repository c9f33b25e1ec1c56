"""The Chromium caller fleet: the page's numbers turned into records (no browser), and real calls
from two pages of one headless Chromium against the real edge and interaction core."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest

from loadtest.browser_caller import CHROMIUM, BrowserCall, chromium_args, run_browser_callers, stats_sample
from loadtest.records import SessionRecord
from loadtest.scenario import Scenario, Turn

from ..edge.conftest import edge_stack, wait_until  # noqa: F401  (the real edge + core fixture)
from ..need import need

TYPED = "what is four times sixteen"
LOUD_RMS = 1000.0  # int16 RMS of espeak-ng speech at the model; Opus-coded silence is far below


def raw_stats(t_ms: float, **kw: float) -> dict[str, float | None]:
    base: dict[str, float | None] = {
        "t": t_ms, "packetsReceived": 0, "packetsLost": 0, "jitter": None, "jitterBufferDelay": 0.0,
        "jitterBufferEmittedCount": 0, "concealedSamples": 0, "silentConcealedSamples": 0,
        "totalSamplesReceived": 0, "bytesReceived": 0, "rtt": None,
    }  # fmt: skip
    base.update(kw)
    return base


def test_stats_sample_rates_are_over_the_period():
    prev = raw_stats(1000.0, jitterBufferDelay=4.8, jitterBufferEmittedCount=48_000, bytesReceived=1000)
    cur = raw_stats(
        3000.0, packetsReceived=100, packetsLost=2, jitter=0.004, jitterBufferDelay=9.6,
        jitterBufferEmittedCount=144_000, bytesReceived=9000, rtt=0.012, concealedSamples=480,
    )  # fmt: skip
    s = stats_sample(cur, prev)
    assert s.at == 3.0 and (s.packets_received, s.packets_lost, s.concealed_samples) == (100, 2, 480)
    assert s.jitter_ms == pytest.approx(4.0) and s.rtt_ms == pytest.approx(12.0)
    assert s.jitter_buffer_delay_ms == pytest.approx(4.8 / 96_000 * 1000)  # 0.05 ms per sample
    assert s.bitrate_kbps == pytest.approx(8000 * 8 / 2.0 / 1000)  # 32 kb/s
    first = stats_sample(cur, None)
    assert first.jitter_buffer_delay_ms is None and first.bitrate_kbps is None


def test_a_drain_fills_the_record():
    rec = SessionRecord(caller="browser-0-0", mode="browser", scenario="t", dialed_at=100.0)
    sc = Scenario(name="t", session_s=10, turns=[Turn(text="hi")])
    call = BrowserCall(None, "http://127.0.0.1:1", sc, {}, rec)
    call._live = True
    call._absorb({
        "connected_at_ms": 100_250.0, "first_audio_at_ms": 100_400.0, "dropped_chunks": 0, "tap": "worklet",
        "stats": [raw_stats(101_000.0), raw_stats(102_000.0, concealedSamples=9600, silentConcealedSamples=10),
                  raw_stats(103_000.0, concealedSamples=9700, silentConcealedSamples=10)],
        "events": [{"type": "model_version", "model_version": "v1", "t": 1.0},
                   {"type": "error", "code": "E_X", "t": 1.0}, {"type": "error", "code": "E_X", "t": 1.0}],
    })  # fmt: skip
    assert rec.connected_at == pytest.approx(100.25) and rec.setup_ms == pytest.approx(250.0)
    assert rec.first_audio_ms == pytest.approx(400.0)
    assert len(rec.stats) == 3 and rec.audio_gaps_ms == [200.0] and rec.underruns == 1
    assert rec.model_version == "v1" and rec.errors == {"E_X": 2} and not rec.failure
    call._absorb({"events": [{"type": "state", "state": "closed", "detail": "reaped", "t": 2.0}]})
    assert rec.failure == "dropped: edge closed the call: reaped" and call._ended.is_set()


def test_chromium_flags_allow_audio_and_loopback():
    args = chromium_args()
    for flag in ("--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", "--no-sandbox"):  # fmt: skip
        assert flag in args


def leftover_browsers() -> list[int]:
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any("microturn-lt-browser" in a for a in p.info["cmdline"] or []):
            out.append(p.info["pid"])
    return out


class Responder:
    """Stands in for the model's voice on top of the real engine: once the caller's speech (loud
    input) has stopped for ``end_chunks`` micro-turns, or text is typed, the next output chunks play a
    spoken answer; loud input while answering (a barge-in) silences it at once. So answers and yields
    are there to be measured. One quiet chunk is not the end of a turn: under load a chunk can hold
    only the short pause between two words, and answering into it would run the answer into the
    caller's next word with no silence between (the caller would hear no new onset)."""

    def __init__(self, step, answer16k: np.ndarray, end_chunks: int = 2) -> None:
        self.step = step
        self.answer = answer16k
        self.end_chunks = end_chunks
        self.quiet: dict[str, int | None] = {}  # quiet chunks since the caller's speech (None: none heard)
        self.pos: dict[str, int | None] = {}
        self.started: dict[str, int] = {}  # answers begun per session

    def __call__(self, inputs):
        outs = self.step(inputs)
        by_id = {c.session_id: c for c in inputs}
        return [self._voice(o, by_id[o.session_id]) if hasattr(o, "pcm") else o for o in outs]

    def _voice(self, out, chunk):
        sid, n = chunk.session_id, len(out.pcm)
        quiet = self.quiet.get(sid)
        if float(np.sqrt(np.mean(chunk.pcm.astype(np.float64) ** 2))) > LOUD_RMS:
            self.quiet[sid], self.pos[sid] = 0, None
        elif chunk.text or (quiet is not None and quiet + 1 >= self.end_chunks):
            self.quiet[sid], self.pos[sid] = None, 0
            self.started[sid] = self.started.get(sid, 0) + 1
        elif quiet is not None:
            self.quiet[sid] = quiet + 1
        pos = self.pos.get(sid)
        pcm = np.zeros(n, np.int16)
        if pos is not None:
            part = self.answer[pos : pos + n]
            pcm[: len(part)] = part
            self.pos[sid] = pos + n if pos + n < len(self.answer) else None
        return replace(out, pcm=pcm)


@pytest.mark.slow
async def test_two_pages_call_the_real_edge(edge_stack):  # noqa: F811
    from scipy.signal import resample_poly

    from loadtest import prompts as prompt_mod

    need(prompt_mod.missing_tools() + ([] if Path(CHROMIUM).exists() else [CHROMIUM]), "make system-deps")
    scenario = Scenario(
        name="browser-test", session_s=60, think_s=0.5, answer_timeout_s=15,
        turns=[Turn(say="hello there how are you", at_s=0.5), Turn(say="wait stop", barge_in_ms=400),
               Turn(text=TYPED, after_answer_s=2.5)],  # typed once the (1.3 s) answer has ended
    )  # fmt: skip
    prompts = prompt_mod.render_scenario(scenario)
    speech = prompts[prompt_mod.turn_key(scenario.turns[0])]
    answer = prompt_mod.speak("the answer is sixty four").pcm
    responder = Responder(edge_stack.core.engine.step_isolated, resample_poly(answer, 1, 3).astype(np.int16))
    edge_stack.core.engine.step_isolated = responder
    seen: list[str] = []

    records = await run_browser_callers(
        edge_stack.url, scenario, count=2, pages_per_browser=2, on_record=lambda r: seen.append(r.caller),
        prompts=prompts, max_passes=1,
    )  # fmt: skip
    diag = json.dumps([r.to_dict() | {"stats": r.stats[-2:]} for r in records], default=str)[:6000]

    assert [r.caller for r in records] == ["browser-0-0", "browser-0-1"], diag
    assert sorted(seen) == ["browser-0-0", "browser-0-1"]
    await wait_until(lambda: not edge_stack.edge.sessions, 10, "the edge to release both sessions")
    assert leftover_browsers() == []
    for r in records:
        assert r.failure == "" and r.mode == "browser" and r.session_id, diag
        assert r.connected_at is not None and r.first_audio_at is not None and r.ended_at is not None, diag
        assert r.dialed_at < r.connected_at <= r.ended_at and r.setup_ms is not None and r.setup_ms > 0, diag
        assert r.model_version == "tiny-test", diag
        assert not [code for code in r.errors if code.startswith("CLIENT_")], diag
        # the page's getStats(): audio came in, counters only grow
        assert r.stats and max(s.packets_received for s in r.stats) > 0, diag
        counts = [s.packets_received for s in r.stats]
        assert counts == sorted(counts), diag
        assert any(s.rtt_ms is not None for s in r.stats) and any(s.bitrate_kbps for s in r.stats), diag
        # the tapped PCM arrived (seconds of it), the page and its peer connection closed cleanly
        m = r.caller_metrics
        assert m["received_audio_s"] > 1.0 and m["tap_worklet"] == 1.0 and m["page_closed"] == 1.0, diag
        assert m["browser_pss_mb"] > 0 and m["pages_in_browser"] == 2 and m["cpu_s"] >= 0, diag

        # the turns: spoken ones whose end of speech is their prompt's exact length, a typed one
        assert [t.kind for t in r.turns] == ["speech", "barge_in", "text"], diag
        spoken, barge, typed = r.turns
        assert spoken.said_at >= r.connected_at and barge.said_at > spoken.speech_end_at, diag
        assert spoken.speech_end_at - spoken.said_at == pytest.approx(speech.speech_end / 48_000, abs=1e-6)
        assert typed.speech_end_at is None and typed.said_at > barge.speech_end_at, diag
        for t in r.turns:
            ref = t.speech_end_at if t.speech_end_at is not None else t.said_at
            if t.answer_onset_at is None:  # a clear "no answer": nothing half-filled
                assert t.turn_latency_ms is None, diag
            else:
                assert ref <= t.answer_onset_at <= ref + scenario.answer_timeout_s, diag
                assert t.turn_latency_ms == pytest.approx((t.answer_onset_at - ref) * 1000, abs=0.1), diag
        # the responder answers every turn: the onset of its voice was heard after each one,
        # and it fell silent when talked over
        assert all(t.answer_onset_at is not None for t in r.turns), diag
        assert barge.barge_in_at == barge.said_at and barge.said_at > spoken.answer_onset_at, diag
        assert barge.yield_ms is not None and barge.yield_ms >= 0, diag

        # what the model got from this page: the WebAudio mic's speech, and the typed turn, once
        chunks = edge_stack.inputs[r.session_id]
        energies = [float(np.sqrt(np.mean(c.pcm.astype(np.float64) ** 2))) for c in chunks]
        assert max(energies) > LOUD_RMS, diag
        assert sum(text == TYPED for c in chunks for text in c.text) == 1, diag
        assert responder.started[r.session_id] >= 3, diag  # more if it heard a pause as the end


@pytest.mark.slow
async def test_an_unreachable_edge_fails_the_record_without_raising():
    need([] if Path(CHROMIUM).exists() else [CHROMIUM], "make system-deps")
    from microturn.localrun.ports import free_port

    scenario = Scenario(name="typed", session_s=5, turns=[Turn(text="hello")])
    records = await run_browser_callers(f"http://127.0.0.1:{free_port()}", scenario, count=1, prompts={})
    [r] = records
    assert r.failure.startswith("setup: ") and r.connected_at is None and r.ended_at is not None, r
    assert r.caller_metrics["page_closed"] == 1.0 and r.turns == [], r
    assert leftover_browsers() == []
