"""The harness end to end: oracle 100, silence 0, the turn-based baseline runs, output aligned."""

from __future__ import annotations

import json

import numpy as np
import pytest

from microturn.gym import FAMILIES, OracleResponder, SilenceResponder, TurnBasedResponder, evaluate, generate
from microturn.gym.eval import main as eval_main
from microturn.gym.harness import run_sessions, text_words
from microturn.gym.responders import OutChunk, _PerSession

SEEDS = [1_000_000]


@pytest.fixture(scope="module")
def oracle_result():
    return evaluate(OracleResponder(), seeds=SEEDS)


def test_oracle_scores_100_on_every_family_and_channel(oracle_result) -> None:
    assert set(oracle_result.families) == set(FAMILIES)
    for name, fam in oracle_result.families.items():
        assert fam.score == {"text": 100.0, "speech": 100.0}, name


def test_oracle_through_the_models_text_budget_still_scores_100() -> None:
    from microturn.gym.responders import StreamOracleResponder
    from microturn.model import preset

    result = evaluate(StreamOracleResponder(preset("tiny").n_text_out), seeds=SEEDS)
    for name, fam in result.families.items():
        assert fam.score["text"] == 100.0, name


def test_silence_scores_0_everywhere_but_on_idle() -> None:
    result = evaluate(SilenceResponder(), seeds=SEEDS)
    for name, fam in result.families.items():
        want = 100.0 if name == "idle" else 0.0
        assert fam.score == {"text": want, "speech": want}, name
    assert result.agreement() == (0, 0)


def test_the_recogniser_hears_what_the_oracle_says_through_the_models_audio_path() -> None:
    """The calibration of the speech score: pocketsphinx (not written here, constrained to the gym's
    vocabulary) on the targets rendered through the tiny model's audio path (dMel levels, Griffin-Lim)
    hears most of the words written on the text channel; what it misses there no model can score."""
    from microturn.gym.responders import CodecOracleResponder

    families = ["timespeak", "repcount", "simulspeech", "delegation"]
    result = evaluate(CodecOracleResponder("tiny"), families, [1_000_000, 1_000_001], "sphinx")
    heard, written = result.agreement()
    assert written >= 20 and heard / written >= 0.75, (heard, written)
    silent = evaluate(SilenceResponder(), families, [1_000_000], "sphinx")
    assert silent.agreement() == (0, 0)


def test_baseline_runs_end_to_end() -> None:
    result = evaluate(TurnBasedResponder(), ["turntaking", "interruption", "delegation"], SEEDS)
    for fam in result.families.values():
        for ch in ("text", "speech"):
            assert 0.0 <= fam.score[ch] <= 100.0
        assert len(fam.per_session) == len(SEEDS)
    # the baseline speaks only after its VAD decides the turn ended: never before the user starts
    s = generate("turntaking", SEEDS[0])
    (track,) = run_sessions(TurnBasedResponder(), [s])
    first_word = next(k for k, t in enumerate(track.text) if t)
    assert first_word > s.meta["turn"][0]


def test_baseline_answers_typed_requests_and_updates_once_read() -> None:
    """Content for free, but not before it has arrived: a typed request is delegated once its last
    byte is read, the result said once the update is, which is what the Delegation family scores."""
    seeds = [s for s in range(1_000, 1_040) if generate("delegation", s).meta["typed"]][:4]
    result = evaluate(TurnBasedResponder(), ["delegation"], seeds)
    assert [r["text"]["score"] for r in result.families["delegation"].per_session] == [100.0] * len(seeds)


def test_baseline_waits_for_vad_silence_before_answering() -> None:
    seed = next(s for s in range(1_000, 1_100) if generate("turntaking", s).meta["pause"] is None)
    result = evaluate(TurnBasedResponder(min_silence_ms=500), ["turntaking"], [seed])
    text = result.families["turntaking"].per_session[0]["text"]
    assert text["takeover"] == 0.0
    assert text["latency_ms"] >= 500 - 200  # its VAD needs 500 ms of silence (one chunk of slack)
    session = generate("turntaking", seed)
    (track,) = run_sessions(TurnBasedResponder(), [session])
    assert [w.text for w in text_words(track.text)] == session.meta["answer"]


def test_output_is_sample_aligned_and_batched() -> None:
    sessions = [generate(f, 5) for f in ("timespeak", "charades", "delegation")]
    seen_batches: list[int] = []

    class Counting(OracleResponder):
        max_sessions = 2

        def step(self, inputs):
            seen_batches.append(len(inputs))
            return super().step(inputs)

    tracks = run_sessions(Counting(), sessions)
    for s, t in zip(sessions, tracks, strict=True):
        assert np.array_equal(t.pcm, s.target_pcm) and t.text == s.target_text
    assert max(seen_batches) == 2 and 1 in seen_batches


def test_malformed_responder_output_is_an_error() -> None:
    class Broken(_PerSession):
        label = "broken"

        def step(self, inputs):
            return [OutChunk(np.zeros(100, np.int16)) for _ in inputs]

    with pytest.raises(RuntimeError, match="int16 \\[3200\\]"):
        run_sessions(Broken(), [generate("timespeak", 1)])


def test_eval_cli_writes_json_and_markdown(tmp_path, capsys) -> None:
    out = tmp_path / "eval"
    args = [
        "--seeds",
        "1",
        "--families",
        "charades",
        "--responders",
        "oracle,silence",
        "--asr",
        "template",
        "--out",
    ]
    assert eval_main([*args, str(out)]) == 0
    payload = json.loads((out / "results.json").read_text())
    rows = {r["responder"]: r for r in payload["results"]}
    assert rows["oracle"]["families"]["charades"]["score"]["text"] == 100.0
    assert rows["silence"]["mean"]["speech"] == 0.0
    table = (out / "results.md").read_text()
    assert "| oracle | 100 / 100" in table
    printed = capsys.readouterr().out
    assert all(line in printed for line in table.splitlines())


def test_eval_cli_rejects_bad_arguments(tmp_path) -> None:
    with pytest.raises(SystemExit):
        eval_main(["--families", "nope"])
    with pytest.raises(SystemExit):
        eval_main(["--checkpoint", str(tmp_path / "missing.safetensors")])
