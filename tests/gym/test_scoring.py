"""Scorers on hand-built outputs: the ± one micro-turn rule, extras, and each family's rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from microturn.gym import generate, get_family
from microturn.gym.scoring import (
    Observed,
    TimedWord,
    interval_iou,
    match_timed,
    number_words,
    parse_number,
    timed_words_score,
)


def obs(session, words: list[tuple[str, int]], delegations=(), active: list[int] | None = None) -> Observed:
    timed = [TimedWord(w, k, k * 3200) for w, k in words]
    act = np.zeros(session.num_chunks, bool)
    for k in active if active is not None else [k for _, k in words]:
        act[k] = True
    return Observed("text", timed, act, list(delegations))


@pytest.mark.parametrize("shift,expected", [(-2, 0.0), (-1, 100.0), (0, 100.0), (1, 100.0), (2, 0.0)])
def test_off_by_one_timing(shift: int, expected: float) -> None:
    assert timed_words_score([("apple", 10)], [TimedWord("apple", 10 + shift, 0)]).score == expected


def test_wrong_word_and_extra_words_count_against() -> None:
    assert timed_words_score([("apple", 10)], [TimedWord("lemon", 10, 0)]).score == 0.0
    extra = [TimedWord("apple", 10, 0), TimedWord("apple", 20, 0)]
    assert timed_words_score([("apple", 10)], extra).score == 50.0
    matched, unmatched, errors = match_timed([("a", 5), ("a", 6)], [TimedWord("a", 6, 0)])
    assert (matched, unmatched, errors) == (1, 0, [1])


def test_numbers_and_iou() -> None:
    for n in (0, 7, 13, 20, 51, 99):
        assert parse_number(number_words(n)) == n
    assert parse_number(["apple"]) is None
    with pytest.raises(ValueError):
        number_words(100)
    assert interval_iou((0, 10), (0, 10)) == 1.0
    assert interval_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert interval_iou((0, 2), (3, 5)) == 0.0


def test_timespeak_scorer_uses_requested_onsets() -> None:
    s = generate("timespeak", 4)
    fam, word, onsets = get_family("timespeak"), s.meta["word"], s.meta["onsets"]
    assert fam.score(s, obs(s, [(word, k + 1) for k in onsets])).score == 100.0
    assert fam.score(s, obs(s, [(word, k + 2) for k in onsets])).score == 0.0


def test_cuespeak_scorer() -> None:
    s = generate("cuespeak", 4)
    fam, word = get_family("cuespeak"), s.meta["word"]
    assert fam.score(s, obs(s, [(word, k - 1) for k in s.meta["onsets"]])).score == 100.0
    early = [(word, 0)] + [(word, k) for k in s.meta["onsets"]]
    assert 0 < fam.score(s, obs(s, early)).score < 100


def test_repcount_off_by_one() -> None:
    s = generate("repcount", 4)
    fam, reps = get_family("repcount"), s.meta["reps"]
    for said, ok in [(reps, True), (reps + 1, True), (reps - 1, True), (reps + 2, False)]:
        words = [(w, 30) for w in number_words(said)]
        assert fam.score(s, obs(s, words)).score == (100.0 if ok else 0.0)


def test_charades_iou() -> None:
    s = generate("charades", 4)
    fam = get_family("charades")
    a, b = s.meta["interval"]
    assert fam.score(s, obs(s, [("start", a), ("stop", b)])).score == 100.0
    half = fam.score(s, obs(s, [("start", a), ("stop", a + (b - a) // 2)])).score
    assert half == pytest.approx(100 * ((b - a) // 2) / (b - a))
    assert fam.score(s, obs(s, [("stop", b)])).score == 0.0


def test_turntaking_takeover_and_latency() -> None:
    s = generate("turntaking", 4)
    fam, (first, last) = get_family("turntaking"), s.meta["turn"]
    answer = [(w, last + 1 + i) for i, w in enumerate(s.meta["answer"])]
    assert fam.score(s, obs(s, answer)).score == 100.0
    assert fam.score(s, obs(s, answer, active=[first + 1] + [k for _, k in answer])).score == 0.0
    late = [(w, k + 6) for w, k in answer]
    r = fam.score(s, obs(s, late))
    assert r.score == 0.0 and r.metrics["latency_ms"] > 1000


def test_interruption_yield() -> None:
    s = generate("interruption", 4)
    fam, k = get_family("interruption"), s.meta["barge_chunk"]
    talking = list(range(k - 4, k + 1))
    assert fam.score(s, obs(s, [], active=talking)).score == 100.0
    # target: silent from k + 1; one micro-turn late (still sounding in k + 1) is within tolerance
    assert fam.score(s, obs(s, [], active=[*talking, k + 1])).score == 100.0
    assert fam.score(s, obs(s, [], active=[*talking, k + 1, k + 2])).score == 0.0
    assert fam.score(s, obs(s, [], active=[])).score == 0.0  # never spoke: nothing to yield


def test_simulspeech_lag_and_order() -> None:
    s = generate("simulspeech", 4)
    fam, digits, onsets = get_family("simulspeech"), s.meta["targets"], s.meta["onsets"]
    assert fam.score(s, obs(s, list(zip(digits, onsets, strict=True)))).score == 100.0
    first_end = s.meta["user_ends"][0] // 3200
    late = fam.score(s, obs(s, [(digits[0], first_end + 11)]))  # 2.2 s after the digit ended
    assert late.score == 0.0 and late.metrics["extra_words"] == 1.0
    on_time = fam.score(s, obs(s, [(digits[0], first_end + 10)]))
    assert on_time.score == pytest.approx(100 / len(digits))
    backwards = list(zip(reversed(digits), onsets, strict=True))
    assert fam.score(s, obs(s, backwards)).score < 100.0


def test_simulspeech_translate_variant_wants_the_transformed_numbers() -> None:
    seed = next(k for k in range(100) if generate("simulspeech", k).meta["add"])
    s = generate("simulspeech", seed)
    fam, heard, onsets = get_family("simulspeech"), s.meta["digits"], s.meta["onsets"]
    assert all(
        parse_number([t]) == parse_number([d]) + 1 for d, t in zip(heard, s.meta["targets"], strict=True)
    )
    assert fam.score(s, obs(s, list(zip(s.meta["targets"], onsets, strict=True)))).score == 100.0
    assert fam.score(s, obs(s, list(zip(heard, onsets, strict=True)))).score < 100.0  # echoing is wrong


def test_delegation_half_credit() -> None:
    s = generate("delegation", 4)
    fam, end, result = get_family("delegation"), s.meta["user_end"], s.meta["result"]
    spoken = [(w, s.meta["read"] + 1 + i) for i, w in enumerate(result)]
    assert fam.score(s, obs(s, spoken, [(end + 1, "weather")])).score == 100.0
    assert fam.score(s, obs(s, spoken)).score == 50.0
    assert fam.score(s, obs(s, [], [(end + 1, "weather")])).score == 50.0
    premature = [(w, end + 2) for w in result] + spoken
    assert fam.score(s, obs(s, premature, [(end + 1, "weather")])).score == 50.0
    # said as the update arrives, before it could be read: too early
    early = [(w, s.meta["update"] + 1 + i) for i, w in enumerate(result)]
    assert s.meta["read"] - s.meta["update"] > 2
    assert fam.score(s, obs(s, early, [(end + 1, "weather")])).score == 50.0


def test_idle_wants_silence() -> None:
    s = generate("idle", 3)
    fam = get_family("idle")
    assert fam.score(s, obs(s, [])).score == 100.0
    assert fam.score(s, obs(s, [("lemon", 5)])).score == 50.0
    assert fam.score(s, obs(s, [("lemon", 5), ("lemon", 15), ("lemon", 25)])).score == 25.0


def test_scorer_rejects_other_family() -> None:
    s = generate("timespeak", 1)
    with pytest.raises(ValueError, match="not a charades session"):
        get_family("charades").score(s, obs(s, []))


@given(
    st.lists(st.sampled_from(["one", "banana", "seventeen", "stop"]), min_size=1, max_size=6),
    st.lists(st.integers(0, 3), min_size=40, max_size=40),
)
def test_text_stream_words_survive_any_chunking(words: list[str], sizes: list[int]) -> None:
    """However the model splits its text over micro-turns, words and first-character chunks hold."""
    from microturn.gym.harness import text_words

    stream = "".join(w + " " for w in words)
    chunks, firsts, at = [], [], 0
    for size in sizes:
        chunks.append(stream[at : at + size])
        at += size
    chunks.append(stream[at:])
    pos = 0
    for w in words:
        firsts.append(next(k for k in range(len(chunks)) if sum(map(len, chunks[: k + 1])) > pos))
        pos += len(w) + 1
    got = text_words(chunks)
    assert [(t.text, t.chunk) for t in got] == list(zip(words, firsts, strict=True))
