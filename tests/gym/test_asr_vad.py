"""The independent recogniser and the baseline's VAD on rendered speech."""

from __future__ import annotations

import numpy as np
import pytest

from microturn.gym.asr import SphinxRecognizer, TemplateRecognizer, through_model_codec
from microturn.gym.responders import StreamingVad
from microturn.gym.speech import MODEL_VOICE, Voice, place_words
from microturn.gym.tasks import MODEL_VOCAB


def test_template_recognizer_finds_words_at_their_chunks() -> None:
    track = np.zeros(16000 * 6, np.int16)
    placed = place_words(track, ["seven", "banana"], 3200 * 3 + 640, MODEL_VOICE, gap=2400)
    placed += place_words(track, ["stop"], 3200 * 20 + 640, MODEL_VOICE)
    got = TemplateRecognizer(MODEL_VOCAB).recognize(track)
    assert [(w.text, w.chunk) for w in got] == [(p.text, p.start // 3200) for p in placed]


def test_template_recognizer_rejects_noise_and_other_voices_words_outside_vocab() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 2000, 16000).astype(np.int16)
    rec = TemplateRecognizer(("apple", "lemon"))
    assert rec.recognize(noise) == []
    track = np.zeros(16000 * 2, np.int16)
    place_words(track, ["seventeen"], 1000, MODEL_VOICE)
    assert rec.recognize(track) == []


def test_template_recognizer_hears_words_the_way_a_model_reproduces_them() -> None:
    """Words through the model's audio path (dMel + Griffin-Lim) at another offset than the templates'
    are recognised; noise and scrambled speech through the same path are not, and clean-only templates
    miss reproduced words (why the codec templates exist)."""
    track = np.zeros(16000 * 5, np.int16)
    placed = place_words(track, ["cherry", "twelve", "checking"], 3200 * 2 + 1900, MODEL_VOICE, gap=3000)
    coded = through_model_codec(track, "tiny")
    want = [(p.text, p.start // 3200) for p in placed]
    assert [(w.text, w.chunk) for w in TemplateRecognizer(MODEL_VOCAB).recognize(coded)] == want
    assert len(TemplateRecognizer(MODEL_VOCAB, codec_preset=None).recognize(coded)) < len(want)

    rng = np.random.default_rng(1)
    noise = through_model_codec(rng.normal(0, 1500, 16000).astype(np.int16), "tiny")
    word = track[placed[0].start : placed[0].start + 6400].copy()
    blocks = word.reshape(-1, 800)
    rng.shuffle(blocks)
    scrambled = through_model_codec(blocks.reshape(-1), "tiny")
    rec = TemplateRecognizer(MODEL_VOCAB)
    assert rec.recognize(noise) == [] and rec.recognize(scrambled) == []


def test_sphinx_recognizer_returns_vocabulary_words() -> None:
    track = np.zeros(16000 * 3, np.int16)
    place_words(track, ["apple"], 8000, MODEL_VOICE)
    words = SphinxRecognizer(("apple", "banana", "start")).recognize(track)
    assert all(w.text in ("apple", "banana", "start") for w in words)


def test_vad_sees_speech_start_and_end_of_turn() -> None:
    track = np.zeros(16000 * 3, np.int16)
    place_words(track, ["what", "is", "seven"], 3200, Voice("en-us", 160, 50))
    vad = StreamingVad(min_silence_ms=500)
    events = [vad.feed(track[i : i + 3200]) for i in range(0, len(track), 3200)]
    starts = [k for k, (s, _) in enumerate(events) if s]
    ends = [k for k, (_, e) in enumerate(events) if e]
    assert len(starts) == 1 and len(ends) == 1 and starts[0] <= 2 < ends[0]
    quiet = StreamingVad()
    assert not any(any(quiet.feed(np.zeros(3200, np.int16))) for _ in range(5))


def test_missing_espeak_is_a_clear_error(monkeypatch, tmp_path) -> None:
    from microturn.gym import speech

    monkeypatch.setenv("MICROTURN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(speech.shutil, "which", lambda _: None)
    speech._espeak_version.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="espeak-ng is not installed"):
            speech.render_word("apple", speech.MODEL_VOICE)
    finally:
        speech._espeak_version.cache_clear()
    with pytest.raises(ValueError, match="cannot render"):
        speech.render_word("", speech.MODEL_VOICE)
