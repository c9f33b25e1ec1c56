"""Delegation: a question needing a tool. The model opens a delegation, says it is checking,
and speaks the result when the background update arrives (as a background update in text-in).

Score: 50 for opening a delegation within 2 s of the user's end (the request, e.g. "weather paris",
is spelled into the text stream first), 50 for speaking the result,
in order, starting within the micro-turn after the update ± one (and not before it arrives).
"""

from __future__ import annotations

from microturn.gym.layout import sample_to_chunk
from microturn.gym.scoring import ONES, TOLERANCE, Observed, SessionScore, number_words
from microturn.gym.session import Session, SessionBuilder
from microturn.gym.tasks.base import Family, end_chunk, idle_scene, rng_for, seconds

NAME = "delegation"
OPEN_WINDOW_CHUNKS = 10  # the request is spelled at a few bytes per micro-turn before it opens
CITIES = ("paris", "london", "tokyo", "berlin", "madrid")
WEATHER = ("sunny", "rainy", "cloudy", "windy")


def generate(seed: int) -> Session:
    rng = rng_for(NAME, seed)
    b = SessionBuilder(NAME, seed, rng)
    if rng.random() < 0.5:
        city = str(rng.choice(CITIES))
        phrase, result = ["what", "is", "the", "weather", "in", city], [str(rng.choice(WEATHER))]
        request = f"weather {city}"
    else:
        x = int(rng.integers(2, 10))
        y = int(rng.integers(11, min(19, 99 // x) + 1))
        phrase, result = ["what", "is", ONES[x], "times", ONES[y]], number_words(x * y)
        request = f"{x}*{y}"
    placed = b.user_say(phrase, seconds(rng, 0.3, 1.0))
    user_end = end_chunk(placed[-1].end)
    b.delegate(user_end + 1, request)
    b.model_say(["checking"], user_end + 1)
    update = user_end + 1 + int(rng.integers(10, 21))
    b.background_update(update, "result: " + " ".join(result))
    b.model_say(result, update + 1)
    b.reply("speech", sample_to_chunk(placed[0].start), user_end, ["checking"], delegate=request)
    b.reply("background", update, update, result)
    meta = {"user_end": user_end, "update": update, "result": result}
    return b.build(update + 10, idle_scene(rng), meta)


def score(session: Session, obs: Observed) -> SessionScore:
    user_end, update, result = session.meta["user_end"], session.meta["update"], session.meta["result"]
    opened = [
        k for k, req in obs.delegations if user_end <= k <= user_end + OPEN_WINDOW_CHUNKS and req.strip()
    ]
    words = [w for w in obs.words if w.text in result or w.text in ONES]
    premature = any(w.chunk < update and w.text in result for w in obs.words)
    after = [w for w in words if w.chunk >= update]
    spoke = (
        not premature
        and [w.text for w in after[: len(result)]] == result
        and abs(after[0].chunk - (update + 1)) <= TOLERANCE
    )
    metrics = {"opened": float(bool(opened)), "result_spoken": float(spoke)}
    if opened:
        metrics["open_latency_ms"] = (opened[0] - user_end) * 200.0
    return SessionScore(50.0 * bool(opened) + 50.0 * spoke, metrics)


FAMILY = Family(NAME, "Delegation", "opens delegation ≤2 s + speaks result on update", generate, score)
