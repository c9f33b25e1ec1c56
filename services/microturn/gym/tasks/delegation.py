"""Delegation: a question needing a tool, spoken or typed (as people use the page: "what is two
plus three" in the text box). The model opens a delegation, says it is checking, and speaks the
result when the background update arrives (as a background update in text-in).

Background updates read like the real background service's: its planner answers "what is six times
nine" with a partial "Calculating 6*9… " and then "6*9 = 54", so the model must say "fifty four" from
digits. An update (like typed text) is
read 3 bytes per micro-turn, so the result can be said only once the update has been read.

Score: 50 for opening a delegation within 2 s of the user's end (a spoken request's last word, a typed
one's last byte read; the request, e.g. "6*9", is spelled into the text stream first), 50 for speaking
the result, in order, starting in the micro-turn after the update has been read ± one (and not
before it arrives).
"""

from __future__ import annotations

from microturn.gym.layout import read_by, sample_to_chunk
from microturn.gym.scoring import ONES, TOLERANCE, Observed, SessionScore, number_words
from microturn.gym.session import Session, SessionBuilder
from microturn.gym.tasks.base import Family, end_chunk, idle_scene, rng_for, seconds

NAME = "delegation"
OPEN_WINDOW_CHUNKS = 10  # the request is spelled at a few bytes per micro-turn before it opens
CITIES = ("paris", "london", "tokyo", "berlin", "madrid")
WEATHER = ("sunny", "rainy", "cloudy", "windy")
TYPED = 0.4  # the share of requests typed instead of spoken


def generate(seed: int) -> Session:
    rng = rng_for(NAME, seed)
    b = SessionBuilder(NAME, seed, rng)
    kind = rng.random()
    if kind < 0.4:
        city = str(rng.choice(CITIES))
        weather = str(rng.choice(WEATHER))
        phrase, result = ["what", "is", "the", "weather", "in", city], [weather]
        request, answer = f"weather {city}", f"{city}: {weather}"
        progress = ""
    else:  # the background's planner answers arithmetic as "6*9 = 54"
        if kind < 0.7:
            x = int(rng.integers(2, 10))
            y = int(rng.integers(11, min(19, 99 // x) + 1))
            phrase, value, request = ["what", "is", ONES[x], "times", ONES[y]], x * y, f"{x}*{y}"
        else:
            x, y = (int(v) for v in rng.integers(2, 20, 2))
            phrase, value, request = ["what", "is", ONES[x], "plus", ONES[y]], x + y, f"{x}+{y}"
        result, answer = number_words(value), f"{request} = {value}"
        progress = f"Calculating {request}… "  # the planner's partial update, before the tool answers
    start = seconds(rng, 0.3, 1.0)
    if rng.random() < TYPED:
        asked = sample_to_chunk(start)
        typed = " ".join(phrase)
        b.type_text(asked, typed)
        user_end, trigger = read_by(asked, len(typed.encode())), "text"
    else:
        placed = b.user_say(phrase, start)
        asked, user_end, trigger = sample_to_chunk(placed[0].start), end_chunk(placed[-1].end), "speech"
    b.delegate(user_end + 1, request)
    b.model_say(["checking"], user_end + 1)
    if progress:
        b.background_update(user_end + 2, progress)
    update = max(
        user_end + 1 + int(rng.integers(10, 21)), read_by(user_end + 2, len(progress.encode()) + 2) + 1
    )
    b.background_update(update, answer)
    read = read_by(update, len(answer.encode()) + 2)  # with the update's two markers
    b.model_say(result, read + 1)
    b.reply(trigger, asked, user_end, ["checking"], delegate=request)
    b.reply("background", update, read, result)
    meta = {
        "user_end": user_end,
        "update": update,
        "read": read,
        "result": result,
        "typed": trigger == "text",
    }
    return b.build(read + 10, idle_scene(rng), meta)


def score(session: Session, obs: Observed) -> SessionScore:
    user_end, update, result = session.meta["user_end"], session.meta["update"], session.meta["result"]
    speak = session.meta["read"] + 1  # once the whole update has been read
    opened = [
        k for k, req in obs.delegations if user_end <= k <= user_end + OPEN_WINDOW_CHUNKS and req.strip()
    ]
    words = [w for w in obs.words if w.text in result or w.text in ONES]
    premature = any(w.chunk < update and w.text in result for w in obs.words)
    after = [w for w in words if w.chunk >= update]
    spoke = (
        not premature
        and [w.text for w in after[: len(result)]] == result
        and abs(after[0].chunk - speak) <= TOLERANCE
    )
    metrics = {"opened": float(bool(opened)), "result_spoken": float(spoke)}
    if opened:
        metrics["open_latency_ms"] = (opened[0] - user_end) * 200.0
    return SessionScore(50.0 * bool(opened) + 50.0 * spoke, metrics)


FAMILY = Family(
    NAME, "Delegation", "opens delegation ≤2 s + speaks result once the update is read", generate, score
)
