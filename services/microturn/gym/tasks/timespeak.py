"""TimeSpeak-mini: "say ⟨word⟩ in N seconds" / "say ⟨word⟩ every N seconds".

A turn-based system can only answer right after the instruction, so it misses the requested time.
Score: right word at the right micro-turn (± one), extra words count against it.
"""

from __future__ import annotations

from microturn.gym.layout import SAMPLE_RATE, sample_to_chunk
from microturn.gym.scoring import ONES, Observed, SessionScore, timed_words_score
from microturn.gym.session import Session, SessionBuilder
from microturn.gym.tasks.base import (
    TARGET_WORDS,
    Family,
    chunk_start,
    end_chunk,
    idle_scene,
    rng_for,
    seconds,
)

NAME = "timespeak"
EVERY_REPEATS = 3


def generate(seed: int) -> Session:
    rng = rng_for(NAME, seed)
    b = SessionBuilder(NAME, seed, rng)
    word = str(rng.choice(TARGET_WORDS))
    every = bool(rng.random() < 0.4)
    n = int(rng.integers(1, 3)) if every else int(rng.integers(1, 5))
    phrase = ["say", word, "every" if every else "in", ONES[n], "second" if n == 1 else "seconds"]
    start = seconds(rng, 0.3, 1.0)
    if rng.random() < 0.25:  # typed instead of spoken
        chunk = sample_to_chunk(start)
        b.type_text(chunk, " ".join(phrase))
        end, turn = chunk_start(chunk + 1), ("text", chunk, chunk)
    else:
        words = b.user_say(phrase, start)
        end, turn = words[-1].end, ("speech", sample_to_chunk(start), end_chunk(words[-1].end))
    onsets = [
        sample_to_chunk(end + i * n * SAMPLE_RATE) for i in range(1, (EVERY_REPEATS if every else 1) + 1)
    ]
    for k in onsets:
        b.model_say([word], k)
    b.reply(turn[0], turn[1], turn[2], [word])
    return b.build(onsets[-1] + 6, idle_scene(rng), {"word": word, "onsets": onsets, "every": every, "n": n})


def score(session: Session, obs: Observed) -> SessionScore:
    word = session.meta["word"]
    return timed_words_score([(word, k) for k in session.meta["onsets"]], obs.words)


FAMILY = Family(NAME, "TimeSpeak-mini", "word at requested time ±1 micro-turn", generate, score)
