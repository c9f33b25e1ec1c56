"""Plain torch reference implementations: the ground truth every Triton kernel is tested against.

They favour readability over speed (they allocate) and compute in float32 whatever the input dtype, so a
bf16 kernel is compared with an fp32 answer, not with another bf16 rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


# ---- (1) attention over a KV ring with sinks ---------------------------------------------------------
def ring_visible(ring_pos: Tensor, q_pos: Tensor, n_sinks: int, window: int) -> Tensor:
    """Which ring slots a query may attend to.

    ring_pos [B, C] (int): absolute position held by each slot, negative when the slot is empty.
    q_pos [B, Tq] (int): absolute position of each query row, negative for a padding row.
    Returns bool [B, Tq, C]: the slot is filled and is a sink (slot index < n_sinks: the first slots of
    the ring, never overwritten) or is causal and inside the window (q - window < pos <= q). A padding
    row sees nothing.
    """
    kp = ring_pos[:, None, :]
    qp = q_pos[:, :, None]
    slot = torch.arange(ring_pos.shape[-1], device=ring_pos.device)
    sink = (slot < n_sinks)[None, None, :]
    in_window = (kp <= qp) & (kp > qp - window)
    return (kp >= 0) & (qp >= 0) & (sink | in_window)


def ring_attention_ref(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    ring_pos: Tensor,
    q_pos: Tensor,
    n_sinks: int,
    window: int,
    slots: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Softmax attention of each session's query rows over its own KV ring (GQA).

    q [B, Tq, H, hd] (already RoPE-rotated); k_cache, v_cache [n_slots, n_kv, C, hd] (keys stored
    rotated, one layer); ring_pos [n_slots, C]; q_pos [B, Tq]; slots [B] (int, default ``arange(B)``):
    which cache slot row b reads. Query head h uses KV head ``h // (H // n_kv)``. Decode is Tq = 1;
    prefill of a chunk is Tq > 1 with the chunk's keys already written (causality inside the chunk comes
    from the positions). Rows with no visible key (padding) return 0. Returns [B, Tq, H, hd] in q's dtype.
    """
    b, _, h, hd = q.shape
    nkv = k_cache.shape[1]
    if slots is None:
        slots = torch.arange(b, device=q.device)
    scale = 1.0 / math.sqrt(hd) if scale is None else scale
    k = k_cache[slots].float().repeat_interleave(h // nkv, dim=1)  # [B, H, C, hd]
    v = v_cache[slots].float().repeat_interleave(h // nkv, dim=1)
    vis = ring_visible(ring_pos[slots], q_pos, n_sinks, window)  # [B, Tq, C]
    s = torch.einsum("bthd,bhcd->bhtc", q.float(), k) * scale
    s = s.masked_fill(~vis[:, None], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # an all-masked row gives NaN -> 0
    o = torch.einsum("bhtc,bhcd->bthd", p, v)
    return o.to(q.dtype)


# ---- (2)/(3) top-k MoE with SwiGLU experts -------------------------------------------------------------
def moe_ref(
    x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, topk_w: Tensor, topk_idx: Tensor
) -> Tensor:
    """y[n] = sum_j topk_w[n, j] * (SiLU(Wg[e] x[n]) * (Wu[e] x[n])) @ Wd[e], e = topk_idx[n, j].

    x [N, d]; w_gate, w_up, w_down [E, f, d] (the layout of ``microturn.model.moe.MoE``: each expert's
    rows contiguous); topk_w [N, k] (routing weights); topk_idx [N, k] (int). Returns [N, d] in x's dtype.
    Both the decode (gather+GEMV) and the grouped (sorted GEMM) kernels compute this function.
    """
    xf = x.float()
    y = torch.zeros_like(xf)
    for j in range(topk_idx.shape[1]):
        e = topk_idx[:, j]
        g = torch.einsum("nfd,nd->nf", w_gate[e].float(), xf)
        u = torch.einsum("nfd,nd->nf", w_up[e].float(), xf)
        y += topk_w[:, j, None].float() * torch.einsum("nf,nfd->nd", F.silu(g) * u, w_down[e].float())
    return y.to(x.dtype)


# ---- (4) counter-based sampling noise ------------------------------------------------------------------
_M32 = 0xFFFFFFFF
PHILOX_ROUND_A, PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
PHILOX_KEY_A, PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
PHILOX_ROUNDS = 10


def _mulhilo32(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product of a constant and uint32 values held in int64
    (split into 16-bit halves so no intermediate overflows int64)."""
    x = b & 0xFFFF
    y = b >> 16
    px = x * a  # < 2^48
    py = y * a  # < 2^48
    t = (px >> 16) + py
    lo = ((t & 0xFFFF) << 16) | (px & 0xFFFF)
    return t >> 16, lo


def philox4x32(seed: Tensor, c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor) -> tuple[Tensor, ...]:
    """Philox-4x32-10 (Salmon et al. 2011), the same rounds as ``triton.language.philox``: key = (low,
    high) 32 bits of ``seed``, counter (c0..c3). All arguments int64 tensors holding uint32 values
    (seed: any int64), broadcast together; returns four int64 tensors of uint32 values."""
    k0 = seed & _M32
    k1 = (seed >> 32) & _M32
    c0, c1, c2, c3 = (c & _M32 for c in torch.broadcast_tensors(c0, c1, c2, c3))
    k0, k1 = torch.broadcast_tensors(k0, k1)
    for _ in range(PHILOX_ROUNDS):
        hi_b, lo_b = _mulhilo32(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo32(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & _M32
        k1 = (k1 + PHILOX_KEY_B) & _M32
    return c0, c1, c2, c3


def uint32_to_unit(r: Tensor) -> Tensor:
    """uint32 (in int64) -> float32 in the open interval (0, 1): the top 24 bits plus half a step, exact
    in float32 (so log(u) is always finite and the value is bit-identical on every backend)."""
    return ((r >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)


NOISE_KINDS = ("uniform", "normal", "gumbel")


def noise_ref(seed: Tensor, chunk: Tensor, stream: int, n: int, kind: str = "normal") -> Tensor:
    """Per-session noise [B, n] float32, a pure function of (seed[b], chunk[b], stream, element index).

    seed [B] int64 (the session's sampling seed), chunk [B] int64 (its micro-turn index), stream: a small
    int naming the use (e.g. 0 = text Gumbel, 1 = flow start noise, or the decode step). Element i uses
    Philox word ``i % 4`` of counter (i // 4, stream, chunk low 32 bits, chunk high 32 bits) under key
    ``seed``. No state and no dependence on the row b or the batch: a session draws the same noise alone
    or in any batch, and a whole tick can be replayed inside a CUDA graph.

    kind "uniform": (0, 1); "gumbel": -log(-log(u)); "normal": Box-Muller on word pairs (0, 1), (2, 3):
    sqrt(-2 log u_a) * (cos | sin)(2 pi u_b).

    Across backends (this reference vs the Triton kernel): the Philox words and the uniforms are
    bit-identical; normal and Gumbel values go through log/sqrt/cos/sin whose last-ulp rounding differs
    between devices, so they agree to ~1e-6 relative, not bitwise. On one backend and device, the same
    inputs always give the same bits.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; expected one of {list(NOISE_KINDS)}")
    dev = seed.device
    ngroups = (n + 3) // 4
    g = torch.arange(ngroups, device=dev, dtype=torch.int64)[None, :]
    s = seed.to(torch.int64)[:, None]
    ch = chunk.to(torch.int64)[:, None]
    words = philox4x32(s, g, torch.full_like(g, stream), ch & _M32, (ch >> 32) & _M32)
    u = torch.stack([uint32_to_unit(w) for w in words], dim=-1)  # [B, G, 4]
    if kind == "uniform":
        out = u
    elif kind == "gumbel":
        out = -torch.log(-torch.log(u))
    else:
        ua, ub = u[..., 0::2], u[..., 1::2]  # pairs (0, 1) and (2, 3)
        rad = torch.sqrt(-2.0 * torch.log(ua))
        th = (2.0 * math.pi) * ub
        c, sn = rad * torch.cos(th), rad * torch.sin(th)
        out = torch.stack([c[..., 0], sn[..., 0], c[..., 1], sn[..., 1]], dim=-1)
    return out.reshape(seed.shape[0], ngroups * 4)[:, :n].contiguous()
