"""The generator: deterministic by seed, in the micro-turn layout, targets aligned with speech."""

from __future__ import annotations

import numpy as np
import pytest

from microturn.gym import CHUNK_SAMPLES, FAMILIES, generate, training_sessions
from microturn.gym.scoring import parse_number
from microturn.gym.session import speech_activity


@pytest.mark.parametrize("family", list(FAMILIES))
def test_same_seed_same_session_other_seed_differs(family: str) -> None:
    a, b, c = generate(family, 7), generate(family, 7), generate(family, 8)
    assert np.array_equal(a.pcm_in, b.pcm_in) and np.array_equal(a.video, b.video)
    assert np.array_equal(a.target_pcm, b.target_pcm)
    assert (a.target_text, a.text_in, a.background_in, a.meta) == (
        b.target_text,
        b.text_in,
        b.background_in,
        b.meta,
    )
    assert a.pcm_in.shape != c.pcm_in.shape or not np.array_equal(a.pcm_in, c.pcm_in)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_layout_and_aligned_targets(family: str) -> None:
    s = generate(family, 3)
    n = s.num_chunks
    assert s.pcm_in.shape == s.target_pcm.shape == (n * CHUNK_SAMPLES,)
    assert s.pcm_in.dtype == s.target_pcm.dtype == np.int16
    assert s.video.shape == (n, 1, 80, 80, 3) and s.video.dtype == np.uint8
    assert len(s.text_in) == len(s.background_in) == len(s.target_text) == n
    chunks = s.training_chunks()
    assert [c.index for c in chunks] == list(range(n))
    speaking = speech_activity(s.target_pcm)
    said = [k for k, c in enumerate(chunks) if c.text_out]
    assert said, "every family has the model say something"
    for k in said:  # a word's text sits in the chunk where its sound starts
        assert speaking[k]
        assert chunks[k].speaking
    assert np.array_equal(np.concatenate([c.pcm_out for c in chunks]), s.target_pcm)
    arrays = s.arrays()
    assert arrays["pcm_in"].shape == (n, CHUNK_SAMPLES) and arrays["speaking"].shape == (n,)


def test_user_speech_is_audible_and_video_moves() -> None:
    s = generate("repcount", 5)
    assert speech_activity(s.pcm_in).any()
    diffs = np.abs(np.diff(s.video.astype(np.int16), axis=0)).reshape(s.num_chunks - 1, -1).max(axis=1)
    assert (diffs > 100).any(), "the counted shape moves between frames"


def test_repcount_targets_count_up_to_the_repetitions() -> None:
    s = generate("repcount", 11)
    counts = [parse_number(t.split()) for t in s.target_text if t]
    assert counts == list(range(1, s.meta["reps"] + 1))


def test_delegation_targets_event_and_background_update() -> None:
    s = generate("delegation", 2)
    (open_chunk,) = s.target_delegations
    request = s.target_delegations[open_chunk]
    assert request.startswith("weather ") or "*" in request
    update_chunks = [k for k, b in enumerate(s.background_in) if b]
    assert update_chunks == [s.meta["update"]] and open_chunk < s.meta["update"]
    assert " ".join(s.meta["result"]) in s.background_in[s.meta["update"]][0]


def test_bad_requests_fail_clearly() -> None:
    with pytest.raises(ValueError, match="unknown task family"):
        generate("nonsense", 1)
    with pytest.raises(ValueError, match="non-negative"):
        generate("timespeak", -1)
    with pytest.raises(ValueError, match="held out"):
        next(training_sessions(None, range(999_999, 1_000_001)))


def test_training_sessions_round_robin() -> None:
    got = [(s.family, s.seed) for s in training_sessions(["timespeak", "cuespeak"], range(2))]
    assert got == [("timespeak", 0), ("cuespeak", 0), ("timespeak", 1), ("cuespeak", 1)]


def test_text_out_tokens_spell_the_targets_in_order_never_early() -> None:
    from microturn.gym.harness import text_words
    from microturn.model import tokens as tk

    s = generate("delegation", 6)
    toks = s.text_out_tokens(2)
    assert len(toks) == s.num_chunks and all(len(t) == 2 for t in toks)
    flat = [t for chunk in toks for t in chunk if t != tk.SIL]
    start, end = flat.index(tk.DELEG_START), flat.index(tk.DELEG_END)
    assert bytes(flat[start + 1 : end]).decode() == next(iter(s.target_delegations.values()))
    assert bytes(flat[:start] + flat[end + 1 :]).decode() == "".join(s.target_text)

    s = generate("interruption", 6)
    streamed = text_words(
        [bytes(t for t in chunk if t < tk.N_BYTES).decode() for chunk in s.text_out_tokens(3)]
    )
    target = text_words(s.target_text)
    assert [w.text for w in streamed] == [w.text for w in target]
    assert all(a.chunk >= b.chunk for a, b in zip(streamed, target, strict=True))
    with pytest.raises(ValueError):
        s.text_out_tokens(0)
