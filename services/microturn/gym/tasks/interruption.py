"""Interruption: the user barges in while the model is counting aloud; the model must yield.

Target: the model's speech ends with the micro-turn in which the barge-in starts.
Metric: yield time = end of the model's last output (from the barge-in on) − barge-in onset.
Score: 100 when the model was speaking just before the barge-in and yielded within the barge-in
micro-turn ± one.
"""

from __future__ import annotations

from microturn.gym.layout import CHUNK_SAMPLES, sample_to_chunk
from microturn.gym.scoring import TOLERANCE, Observed, SessionScore, number_words
from microturn.gym.session import Session, SessionBuilder
from microturn.gym.tasks.base import Family, end_chunk, idle_scene, rng_for, seconds

NAME = "interruption"
BARGE_INS = (["stop"], ["wait"], ["hold", "on"], ["okay", "stop", "please"], ["sorry", "wait"])
SPOKE_BEFORE_CHUNKS = 4


def generate(seed: int) -> Session:
    rng = rng_for(NAME, seed)
    b = SessionBuilder(NAME, seed, rng)
    upto = int(rng.integers(12, 20))
    placed = b.user_say(["count", "to", *number_words(upto)], seconds(rng, 0.3, 1.0))
    user_end = end_chunk(placed[-1].end)
    counted = b.model_say([w for i in range(1, upto + 1) for w in number_words(i)], user_end + 1)
    i = int(rng.integers(3, 7))
    barge = counted[i].start + int(rng.uniform(0.2, 0.9) * (counted[i].end - counted[i].start))
    barge_chunk = sample_to_chunk(barge)
    b.cut_model_speech((barge_chunk + 1) * CHUNK_SAMPLES)
    words = BARGE_INS[int(rng.integers(len(BARGE_INS)))]
    barge_words = b.user_say(list(words), barge)
    b.reply("speech", sample_to_chunk(placed[0].start), user_end, [w.text for w in counted])
    b.reply("speech", barge_chunk, end_chunk(barge_words[-1].end), [])
    meta = {"barge_chunk": barge_chunk, "barge_sample": barge}
    return b.build(end_chunk(barge_words[-1].end) + 8, idle_scene(rng), meta)


def score(session: Session, obs: Observed) -> SessionScore:
    k = session.meta["barge_chunk"]
    spoke_before = bool(obs.active[max(0, k - SPOKE_BEFORE_CHUNKS) : k].any())
    active_after = [j for j in range(k, session.num_chunks) if obs.active[j]]
    yield_chunk = active_after[-1] + 1 if active_after else k
    metrics = {"spoke_before": float(spoke_before)}
    if spoke_before:
        metrics["yield_ms"] = max(0.0, (yield_chunk * CHUNK_SAMPLES - session.meta["barge_sample"]) / 16)
    ok = spoke_before and yield_chunk <= k + 1 + TOLERANCE
    return SessionScore(100.0 * ok, metrics)


FAMILY = Family(NAME, "Interruption", "yields within the barge-in micro-turn ±1", generate, score)
