"""The shipped models, end to end: they load, fit the size budget, and the default one does on held-out
gym sessions, through the streaming engine, what docs/MODEL_CARD.md says it does."""

from __future__ import annotations

import pytest

from microturn.gym.eval import eval_seeds
from microturn.gym.harness import evaluate
from microturn.gym.model_responder import EngineResponder
from microturn.model import SHIPPED_CHECKPOINT, load_checkpoint

PREVIOUS = SHIPPED_CHECKPOINT.with_name("microturn-tiny-v1.safetensors")
MAX_BYTES = 30 * 1024 * 1024


@pytest.fixture(scope="module")
def shipped():
    return load_checkpoint(SHIPPED_CHECKPOINT)


def test_two_shipped_versions_load_and_fit_the_budget(shipped) -> None:
    previous = load_checkpoint(PREVIOUS)
    assert shipped.version != previous.version
    assert shipped.cfg == previous.cfg  # same shapes: one can replace the other in a running service
    for path in (SHIPPED_CHECKPOINT, PREVIOUS):
        assert path.stat().st_size <= MAX_BYTES


@pytest.fixture(scope="module")
def held_out(shipped):
    """The model card's evaluation sessions of two families, through the streaming engine."""
    responder = EngineResponder(shipped, shipped.version, num_slots=8)
    return evaluate(responder, ["simulspeech", "interruption"], eval_seeds(16)).families


def test_repeats_digits_while_the_user_is_still_saying_them(held_out) -> None:
    """Simultaneous speech: the user reads digits; the model says each one back within ~2 s, while the
    user goes on (model card, set A: 87 % of digits, 117 ms mean lag on the text channel)."""
    text = held_out["simulspeech"].metrics["text"]
    assert text["accuracy"] >= 0.6, text
    assert text["lag_ms"] <= 500, text


def test_stops_talking_when_the_user_barges_in(held_out) -> None:
    """Interruption: the model is counting aloud, the user interrupts, the model falls silent within the
    barge-in micro-turn ±1 — on the text channel and in the audio it plays (card, set A: 100 / 88)."""
    scores = held_out["interruption"].score
    assert scores["text"] >= 75, held_out["interruption"].metrics
    assert scores["speech"] >= 50, held_out["interruption"].metrics
