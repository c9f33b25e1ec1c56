"""The training objective: ``InteractionModel.forward`` at shifted positions, with weighted losses.

Same tokens, mask and heads as ``InteractionModel.forward`` (tested equal at offset 0 with unit weights);
three additions training needs: a position offset (sinks stay at ``0 .. S-1``, micro-turn ``k`` sits where
the engine puts chunk ``offset + k``), per-slot weights (zero on padding, larger on the rare
"start speaking" events) and a corrupted copy of the model's own audio fed back as input (see
``corrupt_feedback``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from microturn.model import InteractionModel
from microturn.model import tokens as tk
from microturn.train.data import TrainBatch


def positions(model: InteractionModel, n_turns: int, offset: int, device: torch.device) -> Tensor:
    """Absolute positions of sinks + ``n_turns`` micro-turns starting at chunk index ``offset``."""
    s, t = model.cfg.n_sinks, model.layout.turn_len
    sinks = torch.arange(s, device=device)
    return torch.cat([sinks, s + offset * t + torch.arange(n_turns * t, device=device)])


def corrupt_feedback(
    levels: Tensor, n_levels: int, max_sigma: float, replace_prob: float, generator: torch.Generator | None
) -> Tensor:
    """The audio-out levels the model reads back as input, degraded like its own generated speech.

    Teacher forcing feeds the *target* speech back, which spells out the word being said; in the engine
    the model hears its own, much rougher, flow-head output. A model trained on clean feedback learns to
    read the word from the audio and falls apart on its own (measured: continuation bytes 97 % right
    teacher-forced, garbage in the engine). So each row gets Gaussian noise of a random strength
    ``U(0, max_sigma)`` levels and each micro-turn is replaced by uniform noise with ``replace_prob``:
    the model learns to trust its text-out stream for *what* it is saying.
    """
    if max_sigma <= 0 and replace_prob <= 0:
        return levels
    b, n = levels.shape[:2]
    dev = levels.device
    sigma = torch.rand(b, generator=generator, device=dev) * max_sigma
    noise = torch.randn(levels.shape, generator=generator, device=dev) * sigma.view(
        b, *[1] * (levels.dim() - 1)
    )
    noisy = (levels.float() + noise).round().clamp(0, n_levels - 1).long()
    uniform = torch.randint(0, n_levels, levels.shape, generator=generator, device=dev)
    replace = torch.rand(b, n, generator=generator, device=dev) < replace_prob
    return torch.where(replace.view(b, n, *[1] * (levels.dim() - 2)), uniform, noisy)


def weighted_mean(x: Tensor, w: Tensor) -> Tensor:
    return (x * w).sum() / w.sum().clamp_min(1e-8)


def compute_losses(
    model: InteractionModel,
    batch: TrainBatch,
    generator: torch.Generator | None = None,
    aux_weight: float = 0.01,
    window_turns: int | None = None,
    feedback_noise: tuple[float, float] = (0.0, 0.0),
) -> dict[str, Tensor]:
    """``text_ce`` (weighted), ``flow`` (weighted flow matching), ``moe_aux`` and ``total``.
    ``feedback_noise`` = (max_sigma, replace_prob) of ``corrupt_feedback`` (the targets stay clean)."""
    cfg, lay, tb = model.cfg, model.layout, batch.turns
    fed = corrupt_feedback(tb.audio_out, cfg.n_levels, *feedback_noise, generator)
    x = model.embed(tb if fed is tb.audio_out else dataclasses.replace(tb, audio_out=fed))
    b, n = tb.text_out.shape[:2]
    pos = positions(model, n, batch.pos_offset, x.device)
    _, logits, cond, aux = model.heads(x, pos, window_turns)
    logits = logits.float()
    ce = F.cross_entropy(logits.reshape(-1, tk.VOCAB_SIZE), tb.text_out.reshape(-1), reduction="none")
    text_ce = weighted_mean(ce, batch.text_weight.reshape(-1))
    # flow matching, as FlowHead.loss (same draws from the generator) but per row, then weighted
    x1 = model.flow.normalize(model.dmel.dequantize(tb.audio_out)).reshape(-1, cfg.mel_dim)
    rows = x1.shape[0]
    t = torch.rand(rows, generator=generator, device=x1.device)
    x0 = torch.randn(x1.shape, generator=generator, device=x1.device)
    xt = (1 - t[:, None]) * x0 + t[:, None] * x1
    v = model.flow.velocity(xt, cond.reshape(-1, cfg.d_model), t).float()
    mse = (v - (x1 - x0)).pow(2).mean(dim=1)
    fw = batch.flow_weight[:, :, None].expand(b, n, lay.n_audio_out).reshape(-1)
    flow = weighted_mean(mse, fw)
    aux = aux.float()
    return {"text_ce": text_ce, "flow": flow, "moe_aux": aux, "total": text_ce + flow + aux_weight * aux}
