"""Decoder-only transformer pieces: RMSNorm, RoPE, grouped-query attention, SwiGLU, blocks.

Attention takes an explicit boolean mask so training can use the exact sliding-window + sink pattern the
engine's KV ring implements (``window_sink_mask``); RoPE angles are computed in float64 from absolute
positions so a key rotated at position 10^6 is as precise as one at position 10.
"""

from __future__ import annotations

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

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


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


def window_sink_mask(pos: Tensor, n_sinks: int, window: int) -> Tensor:
    """Allowed[i, j] for positions ``pos`` [S]: key j is a sink (pos < n_sinks), or causal and within the
    last ``window`` positions of query i. The engine's ring buffer implements exactly this."""
    q, k = pos[:, None], pos[None, :]
    return (k < n_sinks) | ((k <= q) & (k > q - window))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
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
