"""SwiGLU feed-forward: dense, and a top-k mixture of experts with three equivalent execution paths.

* ``forward`` / ``dispatch``: training path. Tokens are grouped by expert (sort), each expert runs a
  GEMM on its tokens, results are scattered back weighted. Also returns the load-balance loss.
* ``gather_gemv_``: decode path. Per token, gather its k experts' weight matrices and do matrix-vector
  products. Per-tick decode batches are small and latency-bound, so reading only the routed experts'
  weights beats grouped GEMM (and has no data-dependent shapes).
* ``dense_all_``: every expert on every token, combined with a dense gate matrix (zeros except the top-k).
  Used by the engine for prefill, where per-token weight gathers would be too much copying.

All three compute the same function (tested). The ``_`` methods are the engine's streaming steps: they
write into a preallocated ``MoEWorkspace`` and allocate nothing. Expert weights are stored [E, d_ff, d]
for gate, up and down so each expert's matrices are contiguous rows for gathering and
``view(E * d_ff, d)`` gives the all-experts matrix without a copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from microturn.model.config import ModelConfig


class SwiGLU(nn.Module):
    def __init__(self, d: int, d_ff: int):
        super().__init__()
        self.w_gate = nn.Linear(d, d_ff, bias=False)
        self.w_up = nn.Linear(d, d_ff, bias=False)
        self.w_down = nn.Linear(d_ff, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))

    def step_(self, x: Tensor, out: Tensor, a: Tensor, b: Tensor) -> Tensor:
        """Allocation-free ``forward``: x [N, d] -> out [N, d]; a, b [N, d_ff] work buffers."""
        torch.mm(x, self.w_gate.weight.t(), out=a)
        torch.mm(x, self.w_up.weight.t(), out=b)
        F.silu(a, inplace=True)
        a.mul_(b)
        return torch.mm(a, self.w_down.weight.t(), out=out)


@dataclass
class MoEWorkspace:
    """Buffers of the MoE streaming steps, flat, cut to each call's token count (shared by all layers)."""

    router: Tensor  # [N * E]
    topv: Tensor  # [N * k]
    topw: Tensor  # [N * k]
    topi: Tensor  # long [N * k]
    gate: Tensor  # [N * E]
    a: Tensor  # [N * E * d_ff]
    b: Tensor  # [N * E * d_ff]
    xr: Tensor  # [G * k * d]       (gather + GEMV, up to G tokens)
    wg: Tensor  # [G * k * d_ff * d]
    wu: Tensor
    wd: Tensor
    hg: Tensor  # [G * k * d_ff]
    hu: Tensor
    yg: Tensor  # [G * k * d]
    # fp32 gate scratch of a low-precision workspace (scatter_ into bf16 allocates on a CPU)
    topw32: Tensor | None = None  # [N * k]
    gate32: Tensor | None = None  # [N * E]


def _cut(buf: Tensor, *shape: int) -> Tensor:
    return buf[: math.prod(shape)].view(*shape)


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_experts, self.top_k, self.d_ff, self.d = cfg.n_experts, cfg.top_k, cfg.d_ff_expert, cfg.d_model
        e, f, d = cfg.n_experts, cfg.d_ff_expert, cfg.d_model
        self.router = nn.Linear(d, e, bias=False)
        self.w_gate = nn.Parameter(torch.randn(e, f, d) * d**-0.5)
        self.w_up = nn.Parameter(torch.randn(e, f, d) * d**-0.5)
        self.w_down = nn.Parameter(torch.randn(e, f, d) * f**-0.5)

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [N, d] -> (top-k weights [N, k] (softmax over the chosen logits), expert ids [N, k], router
        probabilities [N, E] for the load-balance loss)."""
        logits = self.router(x)
        top, idx = torch.topk(logits, self.top_k, dim=-1)
        return torch.softmax(top, dim=-1), idx, torch.softmax(logits, dim=-1)

    def load_balance_loss(self, idx: Tensor, probs: Tensor) -> Tensor:
        """Switch-style: E * sum_e (fraction of routed slots to e) * (mean router probability of e)."""
        counts = torch.zeros(self.n_experts, device=idx.device).index_add_(
            0, idx.reshape(-1), torch.ones(idx.numel(), device=idx.device)
        )
        frac = counts / idx.numel()
        return self.n_experts * (frac * probs.mean(0)).sum()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [..., d] -> (y [..., d], load-balance loss)."""
        shape = x.shape
        flat = x.reshape(-1, self.d)
        w, idx, probs = self.route(flat)
        return self.dispatch(flat, w, idx).view(shape), self.load_balance_loss(idx, probs)

    def dispatch(self, x: Tensor, w: Tensor, idx: Tensor) -> Tensor:
        """Training path: group token slots by expert, one GEMM per expert, weighted scatter-add."""
        n = x.shape[0]
        flat_e = idx.reshape(-1)
        order = torch.argsort(flat_e, stable=True)
        tok = order // self.top_k
        counts = torch.bincount(flat_e, minlength=self.n_experts).tolist()
        out = torch.zeros_like(x)
        start = 0
        for e, c in enumerate(counts):
            if c == 0:
                continue
            sel = order[start : start + c]
            t = tok[start : start + c]
            xe = x[t]
            h = F.silu(xe @ self.w_gate[e].t()) * (xe @ self.w_up[e].t())
            y = (h @ self.w_down[e]) * w.reshape(-1)[sel, None]
            out = out.index_add(0, t, y)
            start += c
        assert start == n * self.top_k
        return out

    # ---- streaming steps (engine) ---------------------------------------------------------------
    def workspace(
        self,
        n_tokens: int,
        n_gather: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> MoEWorkspace:
        """Buffers for up to ``n_tokens`` tokens, of which up to ``n_gather`` take gather + GEMV, in the
        weights' ``dtype``."""
        e, k, f, d = self.n_experts, self.top_k, self.d_ff, self.d
        z = lambda n, dt=dtype: torch.zeros(max(n, 1), dtype=dt, device=device)  # noqa: E731
        g = n_gather * k
        return MoEWorkspace(
            router=z(n_tokens * e),
            topv=z(n_tokens * k),
            topw=z(n_tokens * k),
            topi=z(n_tokens * k, torch.long),
            gate=z(n_tokens * e),
            a=z(n_tokens * e * f),
            b=z(n_tokens * e * f),
            xr=z(g * d),
            wg=z(g * f * d),
            wu=z(g * f * d),
            wd=z(g * f * d),
            hg=z(g * f),
            hu=z(g * f),
            yg=z(g * d),
            topw32=z(n_tokens * k, torch.float32) if dtype != torch.float32 else None,
            gate32=z(n_tokens * e, torch.float32) if dtype != torch.float32 else None,
        )

    def route_(self, x: Tensor, ws: MoEWorkspace) -> tuple[Tensor, Tensor]:
        """``route`` into the workspace (without the router probabilities): (weights [N, k], ids [N, k])."""
        n, k = x.shape[0], self.top_k
        logits = _cut(ws.router, n, self.n_experts)
        torch.mm(x, self.router.weight.t(), out=logits)
        topv, topi, topw = _cut(ws.topv, n, k), _cut(ws.topi, n, k), _cut(ws.topw, n, k)
        torch.topk(logits, k, dim=-1, out=(topv, topi))
        torch.softmax(topv, -1, out=topw)
        return topw, topi

    def gather_gemv_(self, x: Tensor, out: Tensor, ws: MoEWorkspace) -> Tensor:
        """Decode: per token, copy its k experts' weights and do matrix-vector products. x, out [N, d]."""
        n, k, f, d = x.shape[0], self.top_k, self.d_ff, self.d
        w, idx = self.route_(x, ws)
        flat = idx.view(-1)
        wg, wu, wd = _cut(ws.wg, n * k, f, d), _cut(ws.wu, n * k, f, d), _cut(ws.wd, n * k, f, d)
        torch.index_select(self.w_gate, 0, flat, out=wg)
        torch.index_select(self.w_up, 0, flat, out=wu)
        torch.index_select(self.w_down, 0, flat, out=wd)
        xr = _cut(ws.xr, n, k, d)
        xr.copy_(x.view(n, 1, d).expand(n, k, d))
        hg, hu = _cut(ws.hg, n * k, f, 1), _cut(ws.hu, n * k, f, 1)
        torch.bmm(wg, xr.view(n * k, d, 1), out=hg)
        torch.bmm(wu, xr.view(n * k, d, 1), out=hu)
        F.silu(hg, inplace=True)
        hg.mul_(hu)
        yg = _cut(ws.yg, n * k, 1, d)
        torch.bmm(hg.view(n * k, 1, f), wd, out=yg)
        yv = yg.view(n, k, d)
        yv.mul_(w.view(n, k, 1))
        return torch.sum(yv, 1, out=out)

    def dense_all_(self, x: Tensor, out: Tensor, ws: MoEWorkspace) -> Tensor:
        """Prefill: all experts on every token, combined by a dense gate matrix. x, out [N, d]."""
        n, e, f = x.shape[0], self.n_experts, self.d_ff
        w, idx = self.route_(x, ws)
        gate = _cut(ws.gate, n, e)
        if ws.gate32 is None:
            gate.zero_()
            gate.scatter_(1, idx, w)
        else:
            w32, g32 = _cut(ws.topw32, n, self.top_k), _cut(ws.gate32, n, e)
            w32.copy_(w)
            g32.zero_()
            g32.scatter_(1, idx, w32)
            gate.copy_(g32)
        a, b = _cut(ws.a, n, e * f), _cut(ws.b, n, e * f)
        torch.mm(x, self.w_gate.view(e * f, -1).t(), out=a)
        torch.mm(x, self.w_up.view(e * f, -1).t(), out=b)
        F.silu(a, inplace=True)
        a.mul_(b)
        a.view(n, e, f).mul_(gate.view(n, e, 1))
        return torch.mm(a, self.w_down.view(e * f, -1), out=out)
