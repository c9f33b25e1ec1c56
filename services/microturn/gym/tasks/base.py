"""A task family: a seeded generator of sessions plus a scorer, and helpers they share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from microturn.gym.layout import CHUNK_SAMPLES, SAMPLE_RATE, sample_to_chunk
from microturn.gym.scoring import NUMBER_WORDS, Observed, SessionScore
from microturn.gym.session import Session, family_rng
from microturn.gym.video import COLORS, SHAPES, Scene, Shape, drift

# Every word a model may need to say in the gym: the recogniser's vocabulary.
TARGET_WORDS = ("apple", "banana", "cherry", "lemon", "tiger", "piano", "rocket", "garden")
MODEL_VOCAB = (*NUMBER_WORDS, *TARGET_WORDS, "start", "stop", "checking", "sunny", "rainy", "cloudy", "windy")


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    metric: str  # what the score measures, for the table and docs
    generate_fn: Callable[[int], Session]
    score_fn: Callable[[Session, Observed], SessionScore]

    def generate(self, seed: int) -> Session:
        return self.generate_fn(seed)

    def score(self, session: Session, observed: Observed) -> SessionScore:
        if session.family != self.name:
            raise ValueError(f"session {session.session_id} is not a {self.name} session")
        return self.score_fn(session, observed)


def rng_for(name: str, seed: int) -> np.random.Generator:
    return family_rng(name, seed)


def seconds(rng: np.random.Generator, lo: float, hi: float) -> int:
    """A random duration in samples."""
    return int(rng.uniform(lo, hi) * SAMPLE_RATE)


def end_chunk(sample_end: int) -> int:
    """The chunk holding the last sample of something that ends (exclusively) at ``sample_end``."""
    return sample_to_chunk(sample_end - 1)


def chunk_start(chunk: int) -> int:
    return chunk * CHUNK_SAMPLES


def idle_scene(rng: np.random.Generator) -> Scene:
    """A scene with one or two slowly drifting shapes: something to look at, nothing to react to."""
    scene = Scene(tuple(int(c) for c in rng.integers(10, 70, 3)), int(rng.integers(1 << 30)))
    for _ in range(int(rng.integers(1, 3))):
        scene.shapes.append(
            Shape(
                str(rng.choice(SHAPES)),
                str(rng.choice(list(COLORS))),
                int(rng.integers(10, 20)),
                drift(*rng.uniform(15, 65, 2), *rng.uniform(-6, 6, 2)),
            )
        )
    return scene
