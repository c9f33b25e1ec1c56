"""The interaction gym: synthetic time-aligned sessions, nine task families, an evaluation harness
and a turn-based baseline. See docs/GYM.md."""

from collections.abc import Iterator

from microturn.gym.harness import OutputTrack, RunResult, evaluate, observe, run_sessions
from microturn.gym.layout import CHUNK_MS, CHUNK_SAMPLES, SAMPLE_RATE
from microturn.gym.responders import (
    OracleResponder,
    OutChunk,
    Responder,
    SilenceResponder,
    TurnBasedResponder,
)
from microturn.gym.session import Session, TrainingChunk
from microturn.gym.tasks import FAMILIES, MODEL_VOCAB, get_family


def generate(family: str, seed: int) -> Session:
    """One session of ``family``, deterministic by ``seed``."""
    return get_family(family).generate(seed)


def training_sessions(families: list[str] | None, seeds: range) -> Iterator[Session]:
    """Sessions for training, round-robin over families. Keep seeds below eval.EVAL_SEED_BASE."""
    from microturn.gym.eval import EVAL_SEED_BASE

    if seeds.stop > EVAL_SEED_BASE:
        raise ValueError(f"training seeds must stay below {EVAL_SEED_BASE} (held out for eval)")
    names = list(FAMILIES) if families is None else families
    for seed in seeds:
        for name in names:
            yield generate(name, seed)


__all__ = [
    "CHUNK_MS",
    "CHUNK_SAMPLES",
    "FAMILIES",
    "MODEL_VOCAB",
    "SAMPLE_RATE",
    "OracleResponder",
    "OutChunk",
    "OutputTrack",
    "Responder",
    "RunResult",
    "Session",
    "SilenceResponder",
    "TrainingChunk",
    "TurnBasedResponder",
    "evaluate",
    "generate",
    "get_family",
    "observe",
    "run_sessions",
    "training_sessions",
]
