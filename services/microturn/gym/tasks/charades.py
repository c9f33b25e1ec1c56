"""Charades-mini: say "start" when a shape starts moving and "stop" when it stops.

The reference interval runs from the micro-turn after the first frame showing motion to the
micro-turn after the first frame showing it still (the earliest a causal model can react).
Score: IoU of the spoken [start, stop) interval with the reference, averaged (mIoU).
"""

from __future__ import annotations

import numpy as np

from microturn.gym.layout import sample_to_chunk
from microturn.gym.scoring import Observed, SessionScore, interval_iou
from microturn.gym.session import Session, SessionBuilder
from microturn.gym.tasks.base import Family, end_chunk, rng_for, seconds
from microturn.gym.video import COLORS, SHAPES, Scene, Shape, drift, frame_chunk, move_between

NAME = "charades"


def generate(seed: int) -> Session:
    rng = rng_for(NAME, seed)
    b = SessionBuilder(NAME, seed, rng)
    kind, other = (str(s) for s in rng.permutation(SHAPES)[:2])
    phrase = ["say", "start", "when", "the", kind, "moves", "and", "stop", "when", "it", "stops"]
    placed = b.user_say(phrase, seconds(rng, 0.3, 1.0))
    end = placed[-1].end
    start_ms = end / 16 + float(rng.uniform(800, 2500))
    stop_ms = start_ms + float(rng.uniform(1200, 3500))
    scene = Scene(tuple(int(c) for c in rng.integers(10, 70, 3)), int(rng.integers(1 << 30)))
    path = move_between(
        *rng.uniform(20, 60, 2),
        start_ms,
        stop_ms,
        float(rng.uniform(40, 70)),
        float(rng.uniform(0, 2 * np.pi)),
    )
    scene.shapes.append(Shape(kind, str(rng.choice(list(COLORS))), int(rng.integers(12, 18)), path))
    scene.shapes.append(Shape(other, str(rng.choice(list(COLORS))), 10, drift(*rng.uniform(15, 65, 2), 0, 0)))
    k_start, k_stop = frame_chunk(start_ms) + 1, frame_chunk(stop_ms) + 1
    b.model_say(["start"], k_start)
    b.model_say(["stop"], k_stop)
    b.reply("speech", sample_to_chunk(placed[0].start), end_chunk(end), [])
    return b.build(k_stop + 6, scene, {"interval": [k_start, k_stop]})


def score(session: Session, obs: Observed) -> SessionScore:
    said_start = next((w.chunk for w in obs.words if w.text == "start"), None)
    said_stop = None
    if said_start is not None:
        said_stop = next((w.chunk for w in obs.words if w.text == "stop" and w.chunk > said_start), None)
    if said_start is None or said_stop is None:
        return SessionScore(0.0, {"iou": 0.0})
    iou = interval_iou((said_start, said_stop), tuple(session.meta["interval"]))
    return SessionScore(100.0 * iou, {"iou": iou})


FAMILY = Family(NAME, "Charades-mini", "mIoU of the spoken start/stop interval", generate, score)
