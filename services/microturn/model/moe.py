"""SwiGLU feed-forward: dense, and a top-k mixture of experts with three equivalent execution paths.

* ``forward`` / ``dispatch``: training path. Tokens are grouped by expert (sort), each expert runs a
  GEMM on its tokens, results are scattered back weighted. Also returns the load-balance loss.
* ``gather_gemv``: decode path. Per token, gather its k experts' weight matrices and do matrix-vector
  products. Per-tick decode batches are small and latency-bound, so reading only the routed experts'
  weights beats grouped GEMM (and has no data-dependent shapes).
* ``dense_all``: every expert on every token, combined with a dense gate matrix (zeros except the top-k).
  Used by the engine for prefill, where per-token weight gathers would be too much copying.

All three compute the same function (tested); the engine versions write into preallocated buffers.
Expert weights are stored [E, d_ff, d] for gate, up and down so each expert's matrices are contiguous
rows for gathering and ``view(E * d_ff, d)`` gives the all-experts matrix without a copy.
"""

from __future__ import annotations

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

    @torch.no_grad()
    def gather_gemv(self, x: Tensor, w: Tensor, idx: Tensor) -> Tensor:
        """Decode path (reference, allocating): gather routed experts' weights, then matrix-vector
        products. The engine's buffered version is ``executor.MoEBuffers``."""
        n, k = idx.shape
        flat = idx.reshape(-1)
        wg, wu, wd = self.w_gate[flat], self.w_up[flat], self.w_down[flat]  # [N*k, f, d]
        xr = x.repeat_interleave(k, dim=0).unsqueeze(-1)  # [N*k, d, 1]
        h = F.silu(torch.bmm(wg, xr)) * torch.bmm(wu, xr)  # [N*k, f, 1]
        y = torch.bmm(h.transpose(1, 2), wd).squeeze(1)  # [N*k, d]
        return (y.view(n, k, -1) * w.unsqueeze(-1)).sum(1)

    @torch.no_grad()
    def dense_all(self, x: Tensor, w: Tensor, idx: Tensor) -> Tensor:
        """Prefill path (reference, allocating): all experts, gated by a dense [N, E] matrix."""
        n = x.shape[0]
        e, f = self.n_experts, self.d_ff
        gate = torch.zeros(n, e, device=x.device).scatter_(1, idx, w)
        h = F.silu(x @ self.w_gate.view(e * f, -1).t()) * (x @ self.w_up.view(e * f, -1).t())
        h = h.view(n, e, f) * gate.unsqueeze(-1)
        return h.view(n, e * f) @ self.w_down.view(e * f, -1)
