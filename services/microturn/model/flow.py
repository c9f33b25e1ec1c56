"""Flow head: a small MLP that turns a hidden state into 50 ms of mel (one audio-out token).

Trained with (rectified) flow matching: x_t = (1 - t) x0 + t x1 with x0 ~ N(0, I), x1 the target mel block,
and the MLP regresses the velocity x1 - x0 given (x_t, t, hidden). Sampling integrates the velocity with
``flow_steps`` Euler steps from noise the caller supplies (the engine draws it from the session's seeded
generator, which is what makes sampling reproducible and batch-invariant).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from microturn.model.config import ModelConfig

T_EMB = 32


def time_embedding(t: Tensor) -> Tensor:
    """t [N] in [0, 1] -> sinusoidal [N, T_EMB]."""
    half = T_EMB // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = t.float()[:, None] * 1000.0 * freqs[None]
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1)


class FlowHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        hf, m = cfg.flow_hidden, cfg.mel_dim
        self.in_x = nn.Linear(m, hf)
        self.in_c = nn.Linear(cfg.d_model, hf, bias=False)
        self.in_t = nn.Linear(T_EMB, hf, bias=False)
        self.fc = nn.Linear(hf, hf)
        self.out = nn.Linear(hf, m)
        self.center = (cfg.log_min + cfg.log_max) / 2
        self.half = (cfg.log_max - cfg.log_min) / 2

    def normalize(self, logmel: Tensor) -> Tensor:
        return (logmel - self.center) / self.half

    def denormalize(self, x: Tensor) -> Tensor:
        return x * self.half + self.center

    def velocity(self, x: Tensor, cond: Tensor, t: Tensor) -> Tensor:
        """x [N, mel_dim], cond [N, d], t [N] -> v [N, mel_dim]."""
        h = F.silu(self.in_x(x) + self.in_c(cond) + self.in_t(time_embedding(t)))
        return self.out(F.silu(self.fc(h)))

    def loss(self, cond: Tensor, x1: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Flow-matching MSE. cond [N, d], x1 [N, mel_dim] normalised target mel."""
        n = x1.shape[0]
        t = torch.rand(n, generator=generator, device=x1.device)
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        return F.mse_loss(self.velocity(xt, cond, t), x1 - x0)

    @torch.no_grad()
    def sample(self, cond: Tensor, noise: Tensor) -> Tensor:
        """Euler integration from ``noise`` [N, mel_dim] -> normalised mel [N, mel_dim]."""
        x = noise.clone()
        n_steps = self.cfg.flow_steps
        for i in range(n_steps):
            t = torch.full((x.shape[0],), i / n_steps, device=x.device)
            x = x + self.velocity(x, cond, t) / n_steps
        return x
