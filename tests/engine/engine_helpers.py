"""Shared helpers for the engine tests: synthetic chunks and the full-forward reference."""

from __future__ import annotations

import numpy as np
import torch

from microturn.engine import ChunkInput, Engine
from microturn.engine.types import StepPlan, StepResult
from microturn.model import InteractionModel, ModelConfig, TurnBatch


class Recorder:
    """A step observer keeping, per slot, each live step's intermediates and the tokens it read and
    wrote: what ``full_forward_diffs`` compares with one full forward."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.by_slot: dict[int, list[dict[str, object]]] = {}
        self._pending: dict[str, torch.Tensor] = {}

    def tensor(self, name: str, value: torch.Tensor) -> None:
        self._pending[name] = value.clone()

    def step_done(self, plan: StepPlan, result: StepResult) -> None:
        cfg = self.cfg
        for i, slot in enumerate(plan.slots):
            rec: dict[str, object] = {k: v[i] for k, v in self._pending.items()}
            rec["text_in"] = torch.tensor(plan.text_in[i])
            rec["text_out"] = torch.tensor(result.text_ids[i])
            lev = torch.from_numpy(result.audio_out_levels[i]).long()
            rec["audio_out"] = lev.view(-1, cfg.frames_per_audio_token, cfg.n_mels)
            rec["has_video"] = plan.video[i] is not None
            self.by_slot.setdefault(slot, []).append(rec)
        self._pending = {}

    def of(self, engine: Engine, sid: str) -> list[dict[str, object]]:
        return self.by_slot[engine.sessions[sid].slot]


def make_chunks(
    sid: str, n: int, seed: int = 0, start: int = 0, texts: dict[int, list[str]] | None = None
) -> list[ChunkInput]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(start, start + n):
        t = np.arange(3200) / 16_000 + k * 0.2
        pcm = (3000 * np.sin(2 * np.pi * (200 + 50 * (k % 7)) * t) + rng.normal(0, 300, 3200)).astype(
            np.int16
        )
        video = rng.integers(0, 256, (1 + k % 2, 80, 80, 3), dtype=np.uint8) if k % 3 else None
        out.append(ChunkInput(sid, k, pcm, video, list((texts or {}).get(k, []))))
    return out


def full_forward_diffs(
    model: InteractionModel, engine: Engine, rec: Recorder, sid: str, chunks: list[ChunkInput]
) -> tuple[float, float]:
    """Max |difference| of text logits and flow conditions between the engine's recorded streaming run
    and one full forward over the same tokens (same sliding-window + sink mask)."""
    recs = rec.of(engine, sid)
    n, cfg = len(recs), model.cfg
    assert n == len(chunks)
    pcm = torch.from_numpy(np.concatenate([c.pcm for c in chunks]))[None]
    vid = torch.zeros(1, n, cfg.frame_size, cfg.frame_size, 3, dtype=torch.uint8)
    hv = torch.zeros(1, n, dtype=torch.bool)
    for i, c in enumerate(chunks):
        if c.video is not None and len(c.video):
            vid[0, i] = torch.from_numpy(c.video[-1])
            hv[0, i] = True
    batch = TurnBatch(
        pcm=pcm,
        video=vid,
        has_video=hv,
        text_in=torch.stack([r["text_in"] for r in recs])[None],
        text_out=torch.stack([r["text_out"] for r in recs])[None],
        audio_out=torch.stack([r["audio_out"] for r in recs])[None],
    )
    with torch.no_grad():
        ref = model(batch, with_losses=False)
    logits = torch.stack([torch.stack([r[f"logits{j}"] for j in range(cfg.n_text_out)]) for r in recs])
    cond = torch.stack([torch.stack([r[f"cond{j}"] for j in range(cfg.n_audio_tokens)]) for r in recs])
    return float((ref.text_logits[0] - logits).abs().max()), float((ref.flow_cond[0] - cond).abs().max())
