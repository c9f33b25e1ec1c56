"""CueSpeak-mini: "when I say ⟨cue⟩, say ⟨word⟩", then a stream of distractor words and cues.

The target word is due the micro-turn after the cue ends (± one); a harness waiting for
end-of-turn silence is late. Score as TimeSpeak: timed words, extras count against.
"""

from __future__ import annotations

from microturn.gym.layout import sample_to_chunk
from microturn.gym.scoring import Observed, SessionScore, timed_words_score
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

NAME = "cuespeak"
CUES = ("red", "blue", "green", "orange", "silver", "window", "table", "river")


def generate(seed: int) -> Session:
    rng = rng_for(NAME, seed)
    b = SessionBuilder(NAME, seed, rng)
    word = str(rng.choice(TARGET_WORDS))
    cue, *distractors = (str(c) for c in rng.permutation(CUES)[:4])
    phrase = ["when", "i", "say", cue, "say", word]
    start = seconds(rng, 0.3, 1.0)
    if rng.random() < 0.25:
        chunk = sample_to_chunk(start)
        b.type_text(chunk, " ".join(phrase))
        at, turn = chunk_start(chunk + 1), ("text", chunk, chunk)
    else:
        placed = b.user_say(phrase, start)
        at, turn = placed[-1].end, ("speech", sample_to_chunk(start), end_chunk(placed[-1].end))
    b.reply(turn[0], turn[1], turn[2], [])
    stream = [str(rng.choice(distractors)) for _ in range(int(rng.integers(3, 6)))]
    for _ in range(int(rng.integers(1, 3))):
        stream.insert(int(rng.integers(1, len(stream) + 1)), cue)
    onsets = []
    for item in stream:
        at += seconds(rng, 0.7, 1.5)
        (w,) = b.user_say([item], at)
        at = w.end
        last = end_chunk(w.end)
        if item == cue:
            onsets.append(last + 1)
            b.model_say([word], last + 1)
        b.reply("speech", sample_to_chunk(w.start), last, [word] if item == cue else [])
    return b.build(end_chunk(at) + 8, idle_scene(rng), {"word": word, "cue": cue, "onsets": onsets})


def score(session: Session, obs: Observed) -> SessionScore:
    return timed_words_score([(session.meta["word"], k) for k in session.meta["onsets"]], obs.words)


FAMILY = Family(NAME, "CueSpeak-mini", "word right after each cue ±1 micro-turn", generate, score)
