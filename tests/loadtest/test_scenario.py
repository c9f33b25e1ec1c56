"""Scenario files: the shipped ones load, bad ones fail naming the field; turn timing; prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from loadtest import prompts
from loadtest.scenario import (
    Scenario,
    ScenarioError,
    Turn,
    estimate_turn_s,
    load_scenario,
    parse_scenario,
    shipped_names,
    turn_start,
)
from tests.need import need

BASE = {"name": "t", "session_s": 30, "turns": [{"say": "hello there"}]}


def with_(**changes: object) -> dict:
    d = {**BASE, **changes}
    return {k: v for k, v in d.items() if v is not None}


def error_of(data: object) -> str:
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(data, "test.yaml")
    return str(exc.value)


def test_shipped_scenarios_load() -> None:
    assert {"smoke", "barge_in"} <= set(shipped_names())
    smoke = load_scenario("smoke")
    kinds = [t.kind for t in smoke.turns]
    assert kinds.count("speech") == 2 and kinds.count("text") == 1
    barge = load_scenario("barge_in")
    assert "barge_in" in [t.kind for t in barge.turns]
    assert all(t.spoken for t in barge.turns if t.kind == "barge_in")


def test_a_path_loads_like_a_name(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text(yaml.safe_dump(with_(name="mine", think_s=1.5)))
    sc = load_scenario(str(f))
    assert (sc.name, sc.think_s, sc.session_s) == ("mine", 1.5, 30)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (with_(session_s=None), "session_s"),
        (with_(session_s=-1), "session_s"),
        (with_(think_s=-0.5), "think_s"),
        (with_(sesion_s=3), "sesion_s"),
        (with_(turns=[]), "turns"),
        (with_(turns=[{"say": "a"}, {"say": "b", "text": "c"}]), "turns[1]"),
        (with_(turns=[{"say": "a"}, {}]), "turns[1]"),
        (with_(turns=[{"say": "a", "at_s": 1, "after_answer_s": 2}]), "turns[0]"),
        (with_(turns=[{"say": "a"}, {"text": "b", "barge_in_ms": 300}]), "turns[1]"),
        (with_(turns=[{"say": "a"}, {"say": "b", "barge_in_ms": -5}]), "turns[1].barge_in_ms"),
        (with_(turns=[{"say": "a", "volume": 3}]), "turns[0].volume"),
        (with_(turns=[{"say": "a", "barge_in_ms": 300}]), "turns[0]"),
    ],
)
def test_bad_scenarios_name_the_field(data: dict, field: str) -> None:
    message = error_of(data)
    assert "test.yaml" in message
    assert field in message, message


def test_missing_audio_file_names_the_turn(tmp_path: Path) -> None:
    message = error_of_file(tmp_path, with_(turns=[{"say": "a"}, {"audio": "nope.wav"}]))
    assert "turns[1].audio" in message and "nope.wav" in message


def error_of_file(tmp_path: Path, data: dict) -> str:
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ScenarioError) as exc:
        load_scenario(str(f))
    return str(exc.value)


def test_audio_paths_are_relative_to_the_yaml(tmp_path: Path) -> None:
    (tmp_path / "hi.wav").write_bytes(b"RIFF")
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(with_(turns=[{"audio": "hi.wav"}])))
    assert load_scenario(str(f)).turns[0].audio == tmp_path / "hi.wav"


def test_not_a_mapping_unknown_name_and_bad_yaml(tmp_path: Path) -> None:
    assert "mapping" in error_of(["a", "b"])
    with pytest.raises(ScenarioError, match=r"unknown scenario 'nope'.*smoke"):
        load_scenario("nope")
    f = tmp_path / "bad.yaml"
    f.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(str(f))
    with pytest.raises(ScenarioError, match="not found"):
        load_scenario(str(tmp_path / "missing.yaml"))


def test_turn_start_follows_the_previous_answer() -> None:
    sc = Scenario.model_validate(with_(think_s=2.0))
    pass_start, onset, done = 100.0, 110.0, 111.0
    assert turn_start(Turn(say="a", at_s=3), sc, pass_start, onset, done) == 103.0
    assert turn_start(Turn(say="a"), sc, pass_start, onset, done) == 112.0  # think_s after the onset
    assert turn_start(Turn(say="a", after_answer_s=0.5), sc, pass_start, onset, done) == 110.5
    assert turn_start(Turn(say="a", barge_in_ms=600), sc, pass_start, onset, done) == pytest.approx(110.6)
    # no answer came: counted from when the wait for it ended
    assert turn_start(Turn(say="a"), sc, pass_start, None, done) == 113.0
    assert turn_start(Turn(say="a", barge_in_ms=600), sc, pass_start, None, done) == 111.0


def test_estimated_turn_length_grows_with_the_pause() -> None:
    short = Scenario.model_validate(with_(think_s=1))
    long = Scenario.model_validate(with_(think_s=5))
    assert 0 < estimate_turn_s(short) < estimate_turn_s(long)
    assert estimate_turn_s(long) - estimate_turn_s(short) == pytest.approx(4.0)


def test_trim_cuts_silence_to_the_last_loud_sample() -> None:
    pcm = np.zeros(1000, np.int16)
    pcm[100] = 5000
    pcm[700] = -5000
    pcm[800] = 50  # under the threshold: silence
    out = prompts.trim(pcm)
    assert len(out) == 601 and out[0] == 5000 and out[-1] == -5000
    assert prompts.trim(np.zeros(10, np.int16)).size == 0


def test_turn_keys_tell_prompts_apart(tmp_path: Path) -> None:
    assert prompts.turn_key(Turn(say="hi")) == "say:hi"
    assert prompts.turn_key(Turn(audio=tmp_path / "a.wav")).startswith("audio:/")
    with pytest.raises(ValueError):
        prompts.turn_key(Turn(text="typed"))


def test_espeak_prompt_ends_where_the_speech_ends(tmp_path: Path) -> None:
    need(prompts.missing_tools(), "apt-get install espeak-ng sox")
    p = prompts.speak("seven times twelve")
    assert p.pcm.dtype == np.int16 and p.speech_end == len(p.pcm)
    assert abs(int(p.pcm[0])) > prompts.SILENCE_THRESHOLD
    assert abs(int(p.pcm[p.speech_end - 1])) > prompts.SILENCE_THRESHOLD
    assert 0.5 < p.speech_s < 3.0
    assert prompts.speak("seven times twelve") is p  # cached
    # a WAV with silence around it comes back trimmed to the same speech
    wav = tmp_path / "padded.wav"
    prompts.write_wav(p.pcm, wav, lead_s=0.5, tail_s=0.25)
    again = prompts.load_audio(wav)
    assert abs(again.speech_end - p.speech_end) <= 2
    smoke = prompts.render_scenario(load_scenario("smoke"))
    assert len(smoke) == 2 and all(k.startswith("say:") for k in smoke)
