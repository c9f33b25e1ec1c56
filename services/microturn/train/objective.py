"""The training objective: ``InteractionModel.forward`` at shifted positions, with weighted losses.

The loss is computed by the model's own forward (``pos_offset``, ``text_weight``, ``flow_weight``); this
module only decides what training feeds it: a position offset (sinks stay at ``0 .. S-1``, micro-turn
``k`` sits where the engine puts chunk ``offset + k``), per-slot weights (zero on padding, larger on the
rare "start speaking" events) and a corrupted copy of the model's own audio fed back as input (see
``corrupt_feedback``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from microturn.model import InteractionModel
from microturn.train.data import TrainBatch


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
    tb = batch.turns
    fed = corrupt_feedback(tb.audio_out, model.cfg.n_levels, *feedback_noise, generator)
    turns = tb if fed is tb.audio_out else dataclasses.replace(tb, audio_out_fed=fed)
    out = model(
        turns,
        window_turns=window_turns,
        generator=generator,
        aux_weight=aux_weight,
        pos_offset=batch.pos_offset,
        text_weight=batch.text_weight,
        flow_weight=batch.flow_weight,
    )
    return out.losses
