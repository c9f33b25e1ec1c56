"""Decoder-only transformer pieces: RMSNorm, RoPE, grouped-query attention, SwiGLU, blocks.

Attention takes an explicit boolean mask so training can use the exact sliding-window + sink pattern the
engine's KV ring implements (``window_sink_mask``); RoPE angles are computed in float64 from absolute
positions so a key rotated at position 10^6 is as precise as one at position 10.

Each module's streaming step sits next to its ``forward`` (``RMSNorm.forward_``, ``Attention.kv_`` /
``attend_``, ``rope_cos_sin_``): the same math, in place, into preallocated buffers, over keys and values
the caller keeps (the engine's KV ring: its layout and masks are the executor's business).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from microturn.model.config import ModelConfig
from microturn.model.moe import MoE, SwiGLU


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

        self.register_buffer("c_inv_d", torch.tensor(1.0 / dim), persistent=False)
        self.register_buffer("c_eps", torch.tensor(eps), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    def forward_(self, x: Tensor, out: Tensor, sq: Tensor, stat: Tensor) -> Tensor:
        """Allocation-free ``forward``: x [N, d] -> out [N, d]; sq [N, d], stat [N, 1] work buffers."""
        torch.mul(x, x, out=sq)
        torch.sum(sq, -1, keepdim=True, out=stat)
        stat.mul_(self.c_inv_d).add_(self.c_eps).rsqrt_()
        torch.mul(x, stat, out=out)
        return out.mul_(self.weight)


def rope_inv_freq(head_dim: int, theta: float) -> Tensor:
    """float64 inverse frequencies [head_dim // 2]."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))


def rope_cos_sin(pos: Tensor, inv_freq: Tensor) -> tuple[Tensor, Tensor]:
    """pos (long, any shape) -> cos, sin [..., head_dim // 2] float32 (angles in float64)."""
    ang = pos.to(torch.float64)[..., None] * inv_freq
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [..., heads, head_dim] rotated pairwise (first half, second half); cos/sin [..., head_dim//2]."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    c, s = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)


def rope_cos_sin_(
    pos: Tensor, inv_freq: Tensor, ws64: tuple[Tensor, Tensor, Tensor], cos: Tensor, sin: Tensor
) -> None:
    """Allocation-free ``rope_cos_sin``: pos (long) [...] -> cos, sin [..., hd/2]; ws64 = float64 buffers
    (positions [..., 1], angles and a scratch [..., hd/2])."""
    posf, ang, cs = ws64
    posf.copy_(pos.unsqueeze(-1))
    torch.mul(posf, inv_freq, out=ang)
    torch.cos(ang, out=cs)
    cos.copy_(cs)
    torch.sin(ang, out=cs)
    sin.copy_(cs)


def rope_(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor) -> Tensor:
    """``apply_rope`` into ``out`` (another buffer); cos/sin broadcast against x's halves."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    lo, hi = out[..., :h], out[..., h:]
    torch.mul(x1, cos, out=lo)
    lo.addcmul_(x2, sin, value=-1.0)
    torch.mul(x1, sin, out=hi)
    hi.addcmul_(x2, cos)
    return out


def window_sink_mask(pos: Tensor, n_sinks: int, window: int) -> Tensor:
    """Allowed[i, j] for positions ``pos`` [S]: key j is a sink (pos < n_sinks), or causal and within the
    last ``window`` positions of query i. The engine's ring buffer implements exactly this."""
    q, k = pos[:, None], pos[None, :]
    return (k < n_sinks) | ((k <= q) & (k > q - window))


@dataclass
class AttnWorkspace:
    """Flat buffers of the attention steps for up to ``tokens`` query tokens over ``ctx`` keys each.
    ``ao`` (the output projection's input) is in the weights' dtype, the rest in the KV's; when the two
    differ (a bf16 engine keeps attention itself in fp32) the projections write ``qw`` / ``kw`` / ``vw``
    in the weights' dtype and are cast by a copy (a mixed-dtype elementwise op would allocate)."""

    tokens: int
    ctx: int
    q: Tensor  # [tokens * heads * hd]
    qb: Tensor
    k: Tensor  # [tokens * kv_heads * hd]
    scores: Tensor  # [tokens * heads * ctx]
    probs: Tensor
    ob: Tensor  # [tokens * heads * hd]
    ao: Tensor
    qw: Tensor | None = None  # [tokens * heads * hd]
    kw: Tensor | None = None  # [tokens * kv_heads * hd]
    vw: Tensor | None = None


def _proj_(x: Tensor, w: Tensor, scratch: Tensor | None, out: Tensor) -> None:
    """out = x @ w.T; with ``scratch`` (the weights' dtype) the product is taken there and cast into out."""
    if scratch is None:
        torch.mm(x, w.t(), out=out)
    else:
        tmp = scratch[: out.numel()].view(out.shape)
        torch.mm(x, w.t(), out=tmp)
        out.copy_(tmp)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.register_buffer("c_scale", torch.tensor(1.0 / math.sqrt(cfg.head_dim)), persistent=False)
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor) -> Tensor:
        """x [B, S, d]; cos/sin [S, hd/2]; mask bool [S, S] (True = attend)."""
        b, s, _ = x.shape
        q = apply_rope(self.wq(x).view(b, s, self.n_heads, self.hd), cos, sin)
        k = apply_rope(self.wk(x).view(b, s, self.n_kv, self.hd), cos, sin)
        v = self.wv(x).view(b, s, self.n_kv, self.hd)
        rep = self.n_heads // self.n_kv
        q = q.transpose(1, 2)
        k = k.transpose(1, 2).repeat_interleave(rep, dim=1)
        v = v.transpose(1, 2).repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(o.transpose(1, 2).reshape(b, s, -1))

    # ---- streaming steps (engine) ---------------------------------------------------------------
    def workspace(
        self,
        tokens: int,
        ctx: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        kv_dtype: torch.dtype = torch.float32,
    ) -> AttnWorkspace:
        """``dtype``: the projections' (the weights'); ``kv_dtype``: the stored keys/values'."""
        hq, hk = self.n_heads * self.hd, self.n_kv * self.hd
        z = lambda n, dt=kv_dtype: torch.zeros(n, device=device, dtype=dt)  # noqa: E731
        return AttnWorkspace(
            tokens=tokens,
            ctx=ctx,
            q=z(tokens * hq),
            qb=z(tokens * hq),
            k=z(tokens * hk),
            scores=z(tokens * self.n_heads * ctx),
            probs=z(tokens * self.n_heads * ctx),
            ob=z(tokens * hq),
            ao=z(tokens * hq, dtype),
            qw=z(tokens * hq, dtype) if dtype != kv_dtype else None,
            kw=z(tokens * hk, dtype) if dtype != kv_dtype else None,
            vw=z(tokens * hk, dtype) if dtype != kv_dtype else None,
        )

    def kv_(
        self, h: Tensor, cos: Tensor, sin: Tensor, ws: AttnWorkspace, k_out: Tensor, v_out: Tensor
    ) -> None:
        """Keys (rotated at their positions) and values of new tokens, for the caller to store:
        h [B, t, d] normed input; cos/sin [B, t, hd/2]; k_out, v_out [B, t, kv_heads, hd]."""
        b, t, _ = h.shape
        k = ws.k[: b * t * self.n_kv * self.hd].view(b * t, -1)
        _proj_(h.view(b * t, -1), self.wk.weight, ws.kw, k)
        _proj_(h.view(b * t, -1), self.wv.weight, ws.vw, v_out.view(b * t, -1))
        rope_(k.view(b, t, self.n_kv, self.hd), cos.unsqueeze(2), sin.unsqueeze(2), k_out)

    def attend_(
        self,
        h: Tensor,
        cos: Tensor,
        sin: Tensor,
        keys: Tensor,
        values: Tensor,
        mask: Tensor,
        ws: AttnWorkspace,
        out: Tensor,
    ) -> Tensor:
        """Queries of h [B, t, d] (cos/sin [B, t, hd/2]) over keys/values [B, kv_heads, ctx, hd] (keys
        already rotated) with an additive mask [B, t, ctx] (0 or -inf) -> out [B * t, d]."""
        b, t, _ = h.shape
        nkv, hd, ctx = self.n_kv, self.hd, keys.shape[2]
        g, n = self.n_heads // nkv, b * t
        q = ws.q[: n * self.n_heads * hd].view(n, -1)
        _proj_(h.view(n, -1), self.wq.weight, ws.qw, q)
        qb = ws.qb[: n * self.n_heads * hd].view(b, nkv, g, t, hd)
        rope_(
            q.view(b, t, nkv, g, hd),
            cos.view(b, t, 1, 1, -1),
            sin.view(b, t, 1, 1, -1),
            qb.permute(0, 3, 1, 2, 4),
        )
        qb.mul_(self.c_scale)
        sc = ws.scores[: n * self.n_heads * ctx].view(b * nkv, g * t, ctx)
        pr = ws.probs[: n * self.n_heads * ctx].view(b * nkv, g * t, ctx)
        ob = ws.ob[: n * self.n_heads * hd].view(b * nkv, g * t, hd)
        torch.bmm(qb.view(b * nkv, g * t, hd), keys.reshape(b * nkv, ctx, hd).transpose(1, 2), out=sc)
        sc.view(b, nkv, g, t, ctx).add_(mask.view(b, 1, 1, t, ctx))
        torch.softmax(sc, -1, out=pr)
        torch.bmm(pr, values.reshape(b * nkv, ctx, hd), out=ob)
        ao = ws.ao[: n * self.n_heads * hd].view(b, t, nkv, g, hd)
        ao.copy_(ob.view(b, nkv, g, t, hd).permute(0, 3, 1, 2, 4))
        return torch.mm(ao.view(n, -1), self.wo.weight.t(), out=out)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn: MoE | SwiGLU = MoE(cfg) if cfg.n_experts > 0 else SwiGLU(cfg.d_model, cfg.d_ff)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask)
        h = self.ffn_norm(x)
        if isinstance(self.ffn, MoE):
            y, aux = self.ffn(h)
        else:
            y, aux = self.ffn(h), x.new_zeros(())
        return x + y, aux


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.register_buffer("inv_freq", rope_inv_freq(cfg.head_dim, cfg.rope_theta), persistent=False)

    def forward(self, x: Tensor, pos: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, S, d], pos [S] (long), mask [S, S] -> (final-normed hidden [B, S, d], summed MoE aux loss)."""
        cos, sin = rope_cos_sin(pos, self.inv_freq)
        aux = x.new_zeros(())
        for blk in self.blocks:
            x, a = blk(x, cos, sin, mask)
            aux = aux + a
        return self.norm(x), aux
