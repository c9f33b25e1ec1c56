"""Simultaneous speech: repeat (or "translate": add one to) a digit stream while the user keeps talking.

The user reads digits with short gaps (often shorter than an end-of-turn VAD's silence), so a
turn-based system waits for the whole stream. Target: each digit's answer the micro-turn after the
digit ends. An answer counts if it is in order and starts at most 2 s after the user's digit ends.
Score: 100 × matched / (digits + extra words); lag reported.
"""

from __future__ import annotations

from microturn.gym.layout import sample_to_chunk
from microturn.gym.scoring import ONES, Observed, SessionScore
from microturn.gym.session import Session, SessionBuilder
from microturn.gym.tasks.base import Family, end_chunk, idle_scene, rng_for, seconds

NAME = "simulspeech"
MAX_LAG_CHUNKS = 10


def generate(seed: int) -> Session:
    rng = rng_for(NAME, seed)
    b = SessionBuilder(NAME, seed, rng)
    add = int(rng.random() < 0.3)
    instruction = ["say", "each", "number", "plus", "one"] if add else ["repeat", "after", "me"]
    placed = b.user_say(instruction, seconds(rng, 0.3, 1.0))
    b.reply("speech", sample_to_chunk(placed[0].start), end_chunk(placed[-1].end), [])
    at = placed[-1].end + seconds(rng, 0.5, 1.0)
    numbers = [int(d) for d in rng.integers(0, 10, int(rng.integers(5, 9)))]
    digits, targets = [ONES[d] for d in numbers], [ONES[d + add] for d in numbers]
    user_ends, onsets = [], []
    next_free = 0
    for d, t in zip(digits, targets, strict=True):
        (w,) = b.user_say([d], at)
        k = max(end_chunk(w.end) + 1, next_free)
        (m,) = b.model_say([t], k)
        next_free = end_chunk(m.end + 2400) + 1
        user_ends.append(w.end)
        onsets.append(k)
        at = w.end + seconds(rng, 0.25, 0.5)
    first = sample_to_chunk(b.user_words[len(instruction)].start)
    b.reply("speech", first, end_chunk(user_ends[-1]), targets)
    meta = {"digits": digits, "targets": targets, "add": add, "user_ends": user_ends, "onsets": onsets}
    return b.build(max(onsets[-1], end_chunk(user_ends[-1])) + 8, idle_scene(rng), meta)


def score(session: Session, obs: Observed) -> SessionScore:
    digits, ends = session.meta["targets"], session.meta["user_ends"]
    end_chunks = [end_chunk(e) for e in ends]
    words = obs.words_between(end_chunks[0] - 1, session.num_chunks)
    i = matched = 0
    lags = []
    for w in words:  # in-order greedy: a word matches the next digit it can still be a repeat of
        j = i
        while j < len(digits) and not (
            w.text == digits[j] and end_chunks[j] - 1 <= w.chunk <= end_chunks[j] + MAX_LAG_CHUNKS
        ):
            j += 1
        if j < len(digits):
            matched += 1
            lags.append((w.sample - ends[j]) / 16)
            i = j + 1
    extra = len(obs.words) - matched
    metrics = {"accuracy": matched / len(digits), "extra_words": float(extra)}
    if lags:
        metrics["lag_ms"] = sum(lags) / len(lags)
    return SessionScore(100.0 * matched / (len(digits) + extra), metrics)


FAMILY = Family(NAME, "Simultaneous speech", "digits repeated (or +1) in order ≤2 s lag", generate, score)
