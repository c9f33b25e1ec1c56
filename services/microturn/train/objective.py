"""The training objective: ``InteractionModel.forward`` at shifted positions, with weighted losses.

Same tokens, mask and heads as ``InteractionModel.forward`` (tested equal at offset 0 with unit weights);
two additions training needs: a position offset (sinks stay at ``0 .. S-1``, micro-turn ``k`` sits where
the engine puts chunk ``offset + k``) and per-slot weights (zero on padding, larger on the rare
"start speaking" events).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from microturn.model import InteractionModel
from microturn.model import tokens as tk
from microturn.model.transformer import window_sink_mask
from microturn.train.data import TrainBatch


def positions(model: InteractionModel, n_turns: int, offset: int, device: torch.device) -> Tensor:
    """Absolute positions of sinks + ``n_turns`` micro-turns starting at chunk index ``offset``."""
    s, t = model.cfg.n_sinks, model.layout.turn_len
    sinks = torch.arange(s, device=device)
    return torch.cat([sinks, s + offset * t + torch.arange(n_turns * t, device=device)])


def weighted_mean(x: Tensor, w: Tensor) -> Tensor:
    return (x * w).sum() / w.sum().clamp_min(1e-8)


def compute_losses(
    model: InteractionModel,
    batch: TrainBatch,
    generator: torch.Generator | None = None,
    aux_weight: float = 0.01,
    window_turns: int | None = None,
) -> dict[str, Tensor]:
    """``text_ce`` (weighted), ``flow`` (weighted flow matching), ``moe_aux`` and ``total``."""
    cfg, lay, tb = model.cfg, model.layout, batch.turns
    x = model.embed(tb)
    b, n = tb.text_out.shape[:2]
    pos = positions(model, n, batch.pos_offset, x.device)
    w = cfg.window_turns if window_turns is None else window_turns
    mask = window_sink_mask(pos, cfg.n_sinks, w * lay.turn_len)
    hidden, aux = model.transformer(x, pos, mask)
    turns = hidden[:, cfg.n_sinks :].view(b, n, lay.turn_len, -1)
    text_h = turns[:, :, lay.out_marker : lay.out_marker + lay.n_text_out]
    cond = turns[:, :, lay.audio_out - 1 : lay.audio_out - 1 + lay.n_audio_out]
    logits = model.lm_head(text_h).float()
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
