"""Idle: nobody says or types anything (a quiet room, or a muted microphone) while the camera shows
a slowly drifting scene. The only right behaviour is silence: a model that talks with no one talking
to it ("lemon" every two seconds) is the first thing a new user notices on the page.

Score: 100 / (1 + words said), so one stray word halves it and silence is the only 100.
"""

from __future__ import annotations

from microturn.gym.scoring import Observed, SessionScore
from microturn.gym.session import Session, SessionBuilder
from microturn.gym.tasks.base import Family, idle_scene, rng_for

NAME = "idle"
MIN_CHUNKS, MAX_CHUNKS = 30, 80  # 6-16 s


def generate(seed: int) -> Session:
    rng = rng_for(NAME, seed)
    b = SessionBuilder(NAME, seed, rng)
    muted = bool(rng.random() < 0.3)
    if muted:
        b.snr_db = float("inf")  # a muted microphone sends digital silence, not room noise
    n = int(rng.integers(MIN_CHUNKS, MAX_CHUNKS + 1))
    return b.build(n, idle_scene(rng), {"muted": muted})


def score(session: Session, obs: Observed) -> SessionScore:
    words = len(obs.words)
    return SessionScore(
        100.0 / (1 + words),
        {"words": float(words), "active": float(obs.active.mean()) if len(obs.active) else 0.0},
    )


FAMILY = Family(NAME, "Idle", "silence with no input: 100 / (1 + words said)", generate, score)
