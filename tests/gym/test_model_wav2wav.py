"""A randomly initialised tiny model through the real engine and the harness; wav → wav."""

from __future__ import annotations

import subprocess
import wave

import numpy as np
import pytest

from microturn.gym import evaluate
from microturn.gym.model_responder import EngineResponder, load_model
from microturn.gym.responders import SilenceResponder
from microturn.gym.wav2wav import convert, read_wav_16k
from microturn.gym.wav2wav import main as wav2wav_main


@pytest.fixture(scope="module")
def untrained():
    model, label = load_model(None, "tiny")
    return model, label


def test_untrained_model_runs_through_harness(untrained) -> None:
    model, label = untrained
    responder = EngineResponder(model, label, num_slots=4)
    result = evaluate(responder, ["timespeak", "delegation"], [1_000_000])
    assert "untrained" in result.responder and result.model_version == "tiny-untrained"
    for fam in result.families.values():
        for ch in ("text", "speech"):
            assert 0.0 <= fam.score[ch] <= 100.0
    assert not responder.engine.sessions, "every session was closed"


def _wav(path, pcm: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


def test_wav2wav_same_length_any_rate(tmp_path, untrained) -> None:
    src = tmp_path / "in.wav"
    _wav(src, (np.sin(np.arange(22050) * 0.05) * 3000).astype(np.int16), 22050)  # 1 s at 22.05 kHz
    n = len(read_wav_16k(src))
    model, label = untrained
    out = tmp_path / "out.wav"
    info = convert(src, out, EngineResponder(model, label, num_slots=1))
    with wave.open(str(out)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (16000, 1, n)
    assert info["model_version"] == "tiny-untrained" and (tmp_path / "out.wav.json").exists()
    silent = tmp_path / "silent.wav"
    convert(src, silent, SilenceResponder())
    with wave.open(str(silent)) as w:
        assert not np.frombuffer(w.readframes(n), "<i2").any()


def test_wav2wav_bad_input(tmp_path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    with pytest.raises(SystemExit):
        wav2wav_main([str(bad), str(tmp_path / "o.wav"), "--responder", "silence"])
    with pytest.raises(SystemExit):
        wav2wav_main([str(tmp_path / "missing.wav"), str(tmp_path / "o.wav"), "--responder", "silence"])
    assert subprocess.run(["sox", "--version"], capture_output=True).returncode == 0
