"""Running an interaction model through the real streaming engine, many sessions per step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from microturn.gym.responders import OutChunk, _PerSession
from microturn.gym.session import Session


def default_checkpoint() -> Path | None:
    """The shipped default model (microturn.model.SHIPPED_CHECKPOINT) when present."""
    from microturn.model import SHIPPED_CHECKPOINT

    return SHIPPED_CHECKPOINT if SHIPPED_CHECKPOINT.is_file() else None


class EngineResponder(_PerSession):
    """Wraps ``microturn.engine.Engine``: each harness step is one engine tick for all sessions."""

    def __init__(
        self, model: Any, label: str, num_slots: int = 16, device: str = "cpu", precision: str = "fp32"
    ) -> None:
        from microturn.engine import Engine

        super().__init__()
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        self.engine = Engine(model, num_slots, device=device, precision=precision)
        self.max_sessions = num_slots
        self.label = label

    def open(self, session: Session) -> None:
        super().open(session)
        self.engine.open(session.session_id, seed=session.seed)

    def close(self, session_id: str) -> None:
        if session_id in self.sessions:
            self.engine.close(session_id)
        super().close(session_id)

    def step(self, inputs: list[tuple[str, int]]) -> list[OutChunk]:
        from microturn.engine import ChunkInput, DelegationOpened

        chunks = []
        for sid, k in inputs:
            pcm, video, text, background = self._session(sid).input_chunk(k)
            chunks.append(ChunkInput(sid, k, pcm, video, list(text), list(background)))
        outs = {o.session_id: o for o in self.engine.step(chunks)}
        result = []
        for sid, _ in inputs:
            o = outs[sid]
            delegations = [e.request for e in o.events if isinstance(e, DelegationOpened)]
            result.append(OutChunk(o.pcm, o.text, delegations, o.model_version))
        return result


def load_model(checkpoint: str | Path | None, preset_name: str = "tiny", seed: int = 0) -> tuple[Any, str]:
    """A model from a checkpoint, or a randomly initialised ``preset_name`` model when None.
    Returns (model, label) — the label says "untrained" for random weights."""
    from microturn.model import init_untrained, load_checkpoint

    if checkpoint is not None:
        model = load_checkpoint(checkpoint)
        return model, f"model {model.version}"
    return init_untrained(preset_name, seed), f"untrained {preset_name} model (random init)"
