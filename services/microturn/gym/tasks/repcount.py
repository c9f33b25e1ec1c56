"""RepCount-mini: count the bounces of a shape aloud while watching it.

Each completed repetition is due as a spoken number the micro-turn after the frame that shows it.
Score (as RepCount-A): off-by-one accuracy of the last number said; exact accuracy also reported.
"""

from __future__ import annotations

from microturn.gym.layout import sample_to_chunk
from microturn.gym.scoring import Observed, SessionScore, number_words, parse_number
from microturn.gym.session import Session, SessionBuilder
from microturn.gym.tasks.base import Family, end_chunk, rng_for, seconds
from microturn.gym.video import COLORS, SHAPES, Scene, Shape, drift, frame_chunk, oscillate

NAME = "repcount"


def generate(seed: int) -> Session:
    rng = rng_for(NAME, seed)
    b = SessionBuilder(NAME, seed, rng)
    kind, other = (str(s) for s in rng.permutation(SHAPES)[:2])
    color = str(rng.choice(list(COLORS)))
    placed = b.user_say(["count", "the", "bounces", "of", "the", kind], seconds(rng, 0.3, 1.0))
    end = placed[-1].end
    reps = int(rng.integers(2, 10))
    period_ms = float(rng.uniform(800, 1400))
    start_ms = end / 16 + float(rng.uniform(600, 1500))
    scene = Scene(tuple(int(c) for c in rng.integers(10, 70, 3)), int(rng.integers(1 << 30)))
    x, y = float(rng.uniform(20, 60)), float(rng.uniform(45, 65))
    scene.shapes.append(
        Shape(kind, color, int(rng.integers(12, 18)), oscillate(x, y, start_ms, period_ms, reps, 22))
    )
    scene.shapes.append(
        Shape(
            other, str(rng.choice(list(COLORS))), 10, drift(*rng.uniform(15, 65, 2), *rng.uniform(-4, 4, 2))
        )
    )
    onsets = []
    for i in range(1, reps + 1):
        k = frame_chunk(start_ms + i * period_ms) + 1
        onsets.append(k)
        b.model_say(number_words(i), k)
    b.reply("speech", sample_to_chunk(placed[0].start), end_chunk(end), [])
    return b.build(onsets[-1] + 6, scene, {"reps": reps, "onsets": onsets, "period_ms": period_ms})


def score(session: Session, obs: Observed) -> SessionScore:
    reps = session.meta["reps"]
    counts = [n for w in obs.words if (n := parse_number([w.text])) is not None]
    if not counts:
        return SessionScore(0.0, {"obo": 0.0, "exact": 0.0, "said_count": 0.0})
    last = counts[-1]
    return SessionScore(
        100.0 * (abs(last - reps) <= 1),
        {"obo": float(abs(last - reps) <= 1), "exact": float(last == reps), "said_count": 1.0},
    )


FAMILY = Family(NAME, "RepCount-mini", "off-by-one accuracy of the final count", generate, score)
