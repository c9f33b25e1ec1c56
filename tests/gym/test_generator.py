"""The generator: deterministic by seed, in the micro-turn layout, targets aligned with speech."""

from __future__ import annotations

import numpy as np
import pytest

from microturn.gym import CHUNK_SAMPLES, FAMILIES, generate, training_sessions
from microturn.gym.layout import TEXT_IN_PER_CHUNK
from microturn.gym.scoring import parse_number
from microturn.gym.session import speech_activity
from microturn.model import tokens as tk
from microturn.train.data import text_in_tokens


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
    assert bool(said) == (family != "idle"), "every family but Idle has the model say something"
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
    assert request.startswith("weather ") or "*" in request or "+" in request
    update_chunks = [k for k, b in enumerate(s.background_in) if b]
    assert update_chunks[-1] == s.meta["update"] and open_chunk < update_chunks[0]
    if "*" in request or "+" in request:  # the planner's progress, then its answer
        assert update_chunks == [open_chunk + 1, s.meta["update"]]
        assert s.background_in[open_chunk + 1] == [f"Calculating {request}… "]


@pytest.mark.parametrize("seed", range(40))
def test_delegation_reacts_only_to_what_it_has_read(seed: int) -> None:
    """Typed requests and background updates are read 3 bytes per micro-turn: the delegation opens
    after the whole request is read and the result is said after the whole update is (the result is
    in it as the planner writes it: digits for arithmetic)."""
    s = generate("delegation", seed)
    tokens = text_in_tokens(s.text_in, s.background_in, TEXT_IN_PER_CHUNK)
    read_at = [k for k in range(s.num_chunks) if (tokens[k] != tk.PAD).any()]
    (open_chunk,) = s.target_delegations
    if s.meta["typed"]:
        request_read = max(k for k in read_at if k < open_chunk)
        assert open_chunk == request_read + 1 == s.meta["user_end"] + 1
        assert len(s.text_in[min(read_at)][0].encode()) > 3 * (request_read - min(read_at))  # all needed
    first_said = min(k for k, t in enumerate(s.target_text) if t.split() and t.split()[0] == s.meta["result"][0]
                     and k > s.meta["update"])  # fmt: skip
    assert first_said == max(read_at) + 1 == s.meta["read"] + 1
    (update,) = s.background_in[s.meta["update"]]
    value = parse_number(s.meta["result"])
    assert update.endswith(f" = {value}") if value is not None else update.endswith(s.meta["result"][0])


def test_delegation_has_typed_and_spoken_requests_of_every_kind() -> None:
    sessions = [generate("delegation", seed) for seed in range(64)]
    kinds = {(s.meta["typed"], next(iter(s.target_delegations.values()))[0].isdigit()) for s in sessions}
    assert kinds == {(True, True), (True, False), (False, True), (False, False)}
    assert any("+" in r for s in sessions for r in s.target_delegations.values())


def test_idle_sessions_have_no_input_and_no_target() -> None:
    sessions = [generate("idle", seed) for seed in range(20)]
    assert all(
        not any(s.target_text) and not s.target_pcm.any() and not s.target_delegations for s in sessions
    )
    assert all(not any(s.text_in) and not any(s.background_in) and not s.user_words for s in sessions)
    muted = [s for s in sessions if s.meta["muted"]]
    assert muted and all(not s.pcm_in.any() for s in muted)  # a muted microphone: digital silence
    assert all(s.pcm_in.any() for s in sessions if not s.meta["muted"])  # room noise


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
