"""Flow head: a small MLP that turns a hidden state into 50 ms of mel (one audio-out token).

Trained with (rectified) flow matching: x_t = (1 - t) x0 + t x1 with x0 ~ N(0, I), x1 the target mel block,
and the MLP regresses the velocity x1 - x0 given (x_t, t, hidden). Sampling integrates the velocity with
``flow_steps`` Euler steps from noise the caller supplies (the engine draws it from the session's seeded
generator, which is what makes sampling reproducible and batch-invariant). ``sample_`` is the engine's
allocation-free sampler into a ``FlowWorkspace``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass
class FlowWorkspace:
    """Buffers for up to ``rows`` samples, and the time projection of each Euler step (in_t of the
    step's time embedding plus in_x's bias: fixed given the weights, so computed once)."""

    tproj: Tensor  # [flow_steps, hidden]
    cpart: Tensor  # [rows * hidden]
    h1: Tensor  # [rows * hidden]
    h2: Tensor  # [rows * hidden]
    v: Tensor  # [rows * mel_dim]
    # the inputs in the workspace's dtype when it is not the caller's (a bf16 head on fp32 state: the
    # Euler state ``x`` itself stays in the caller's dtype)
    xw: Tensor | None = None  # [rows * mel_dim]
    cw: Tensor | None = None  # [rows * d_model]
    vf: Tensor | None = None  # [rows * mel_dim] the velocity cast to the caller's dtype


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

    def loss_rows(self, cond: Tensor, x1: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Flow-matching MSE per row [N] (draws t, then x0, from ``generator``). cond [N, d], x1
        [N, mel_dim] normalised target mel."""
        n = x1.shape[0]
        t = torch.rand(n, generator=generator, device=x1.device)
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        return (self.velocity(xt, cond, t).float() - (x1 - x0)).pow(2).mean(dim=1)

    def loss(self, cond: Tensor, x1: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Flow-matching MSE (mean over rows)."""
        return self.loss_rows(cond, x1, generator).mean()

    @torch.no_grad()
    def workspace(
        self, rows: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> FlowWorkspace:
        """Buffers for ``sample_`` by this head's weights, or by a copy of them cast to ``dtype``
        (bf16: the caller's state stays fp32, the matmuls run in ``dtype``)."""
        hf, m, n = self.cfg.flow_hidden, self.cfg.mel_dim, self.cfg.flow_steps
        ts = torch.arange(n, dtype=torch.float32, device=device) / n
        tproj = (self.in_t(time_embedding(ts)) + self.in_x.bias).to(dtype).contiguous()
        z = lambda k: torch.zeros(k, device=device, dtype=dtype)  # noqa: E731
        cast = dtype != torch.float32
        return FlowWorkspace(
            tproj=tproj,
            cpart=z(rows * hf),
            h1=z(rows * hf),
            h2=z(rows * hf),
            v=z(rows * m),
            xw=z(rows * m) if cast else None,
            cw=z(rows * self.cfg.d_model) if cast else None,
            vf=torch.zeros(rows * m, device=device) if cast else None,
        )

    def sample_(self, cond: Tensor, x: Tensor, ws: FlowWorkspace) -> Tensor:
        """Euler integration in place: x [N, mel_dim] holds the start noise and ends as the normalised
        mel; cond [N, d]. The workspace must come from the current weights."""
        n, hf, m = x.shape[0], self.cfg.flow_hidden, self.cfg.mel_dim
        cpart, h1, h2 = (b[: n * hf].view(n, hf) for b in (ws.cpart, ws.h1, ws.h2))
        v = ws.v[: n * m].view(n, m)
        if ws.cw is not None:
            cond = ws.cw[: cond.numel()].view(cond.shape).copy_(cond)
        torch.mm(cond, self.in_c.weight.t(), out=cpart)
        xin = x if ws.xw is None else ws.xw[: n * m].view(n, m)
        steps = self.cfg.flow_steps
        for i in range(steps):
            if ws.xw is not None:
                xin.copy_(x)
            torch.addmm(cpart, xin, self.in_x.weight.t(), out=h1)
            h1.add_(ws.tproj[i])
            F.silu(h1, inplace=True)
            torch.addmm(self.fc.bias, h1, self.fc.weight.t(), out=h2)
            F.silu(h2, inplace=True)
            torch.addmm(self.out.bias, h2, self.out.weight.t(), out=v)
            if ws.vf is None:
                x.add_(v, alpha=1.0 / steps)
            else:
                vf = ws.vf[: n * m].view(n, m)
                vf.copy_(v)
                x.add_(vf, alpha=1.0 / steps)
        return x
