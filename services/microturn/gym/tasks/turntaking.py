"""Turn-taking: answer a question right after the user finishes; stay silent through pauses.

Many questions carry a mid-sentence pause (0.6–1.2 s) that an end-of-turn VAD mistakes for the end.
Measured as FD-bench does: latency (first answer word − user end) and pause take-over rate.
Score: 100 when the first word after the question is the answer, it starts within 1 s of the user's
end, and the model made no output before the user finished (text words, or any sound on the speech
channel).
"""

from __future__ import annotations

from microturn.gym.layout import sample_to_chunk
from microturn.gym.scoring import ONES, Observed, SessionScore, number_words
from microturn.gym.session import Session, SessionBuilder
from microturn.gym.tasks.base import Family, end_chunk, idle_scene, rng_for, seconds

NAME = "turntaking"
ANSWER_WINDOW_CHUNKS = 5


def generate(seed: int) -> Session:
    rng = rng_for(NAME, seed)
    b = SessionBuilder(NAME, seed, rng)
    if rng.random() < 0.5:
        x, y = int(rng.integers(1, 10)), int(rng.integers(1, 10))
        phrase, answer = ["what", "is", ONES[x], "plus", ONES[y]], x + y
    else:
        x = int(rng.integers(1, 19))
        phrase, answer = ["what", "number", "comes", "after", ONES[x]], x + 1
    pause_at = int(rng.integers(2, len(phrase))) if rng.random() < 0.7 else None
    at = start = seconds(rng, 0.3, 1.0)
    pause: tuple[int, int] | None = None
    parts = [phrase] if pause_at is None else [phrase[:pause_at], phrase[pause_at:]]
    for i, part in enumerate(parts):
        if i:
            gap = seconds(rng, 0.6, 1.2)
            pause = (at, at + gap)
            at += gap
        at = b.user_say(part, at)[-1].end
    user_end = end_chunk(at)
    b.model_say(number_words(answer), user_end + 1)
    b.reply("speech", sample_to_chunk(start), user_end, number_words(answer))
    meta = {
        "answer": number_words(answer),
        "turn": [sample_to_chunk(start), user_end],
        "user_end_sample": at,
        "pause": None if pause is None else [sample_to_chunk(pause[0]), end_chunk(pause[1])],
    }
    return b.build(user_end + 12, idle_scene(rng), meta)


def score(session: Session, obs: Observed) -> SessionScore:
    first, last = session.meta["turn"]
    answer = session.meta["answer"]
    took_over = bool(obs.active[first:last].any())
    after = obs.words_between(last, session.num_chunks)
    metrics: dict[str, float] = {"takeover": float(took_over)}
    if session.meta["pause"] is not None:
        p0, p1 = session.meta["pause"]
        metrics["pause_takeover"] = float(bool(obs.active[p0 : p1 + 1].any()))
    if after:
        metrics["latency_ms"] = (after[0].sample - session.meta["user_end_sample"]) / 16
    said = [w.text for w in after[: len(answer)]]
    ok = not took_over and said == answer and after[0].chunk - last <= ANSWER_WINDOW_CHUNKS
    return SessionScore(100.0 * ok, metrics)


FAMILY = Family(NAME, "Turn-taking", "answer ≤1 s after user end, no take-over", generate, score)
