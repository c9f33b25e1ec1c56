"""Triton kernel: attention over each session's KV ring with sinks (decode and prefill), GQA.

Semantics are ``reference.ring_attention_ref``. One program owns (session row, KV head, a tile of query
rows, a split of the ring): the tile stacks the ``Tq x G`` query rows that share one KV head (row
``m = t * G + g``), so each K/V tile is read once for all of them and the GEMMs have M >= 16 even for
decode (G = 4 heads, Tq = 1, padded). Masks come from the ring positions tile by tile: no mask tensor is
materialised. For small batches the ring is split across programs (flash-decoding) and the partial
softmax states are merged by a second small kernel, so B = 1 still spreads over the whole GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.dispatch import sm_count


@triton.jit
def _ring_attn_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    rp_ptr,
    qpos_ptr,
    slots_ptr,
    o_ptr,
    po_ptr,
    pml_ptr,
    sq_b,
    sq_t,
    sq_h,
    sk_s,
    sk_h,
    sk_c,
    sv_s,
    sv_h,
    sv_c,
    srp_s,
    sqp_b,
    so_b,
    so_t,
    so_h,
    B,
    Tq,
    H,
    C,
    n_sinks,
    window,
    scale,
    keys_per_split,
    G: tl.constexpr,
    HD: tl.constexpr,
    N_MT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SPLIT: tl.constexpr,
    IEEE: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1) // N_MT
    mt = tl.program_id(1) % N_MT
    split = tl.program_id(2)

    m = mt * BLOCK_M + tl.arange(0, BLOCK_M)
    t = m // G
    h = kvh * G + m % G
    row_ok = t < Tq
    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < HD
    qp = tl.load(qpos_ptr + b * sqp_b + t, mask=row_ok, other=-1).to(tl.int64)
    qmask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptr + b * sq_b + t[:, None] * sq_t + h[:, None] * sq_h + dd[None, :], mask=qmask, other=0.0)

    slot = tl.load(slots_ptr + b).to(tl.int64)
    k_base = k_ptr + slot * sk_s + kvh * sk_h
    v_base = v_ptr + slot * sv_s + kvh * sv_h
    start = split * keys_per_split
    end = tl.minimum(start + keys_per_split, C)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    lo_q = qp - window
    for n0 in range(start, end, BLOCK_N):
        j = n0 + tl.arange(0, BLOCK_N)
        j_ok = j < end
        kp = tl.load(rp_ptr + slot * srp_s + j, mask=j_ok, other=-1).to(tl.int64)
        kvmask = j_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + j[:, None] * sk_c + dd[None, :], mask=kvmask, other=0.0)
        if IEEE:  # noqa: SIM108 (a static branch on a constexpr: clearer than a ternary in a kernel)
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = s * scale
        in_win = (kp[None, :] <= qp[:, None]) & (kp[None, :] > lo_q[:, None])
        vis = (kp[None, :] >= 0) & (qp[:, None] >= 0) & ((j[None, :] < n_sinks) | in_win)
        s = tl.where(vis, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + j[:, None] * sv_c + dd[None, :], mask=kvmask, other=0.0)
        if IEEE:  # noqa: SIM108 (a static branch on a constexpr: clearer than a ternary in a kernel)
            pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    if SPLIT:
        # partial softmax state of this split: acc [R, HD], (m, l) [R, 2], row r = (b * Tq + t) * H + h
        r = (b * Tq + t) * H + h
        base = split * B * Tq * H
        tl.store(po_ptr + (base + r)[:, None] * HD + dd[None, :], acc, mask=qmask)
        tl.store(pml_ptr + (base + r) * 2, m_i, mask=row_ok)
        tl.store(pml_ptr + (base + r) * 2 + 1, l_i, mask=row_ok)
    else:
        o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        o_ptrs = o_ptr + b * so_b + t[:, None] * so_t + h[:, None] * so_h + dd[None, :]
        tl.store(o_ptrs, o.to(o_ptr.dtype.element_ty), mask=qmask)


@triton.jit
def _merge_splits_kernel(
    po_ptr,
    pml_ptr,
    o_ptr,
    so_b,
    so_t,
    so_h,
    R,
    Tq,
    H,
    N_SPLIT: tl.constexpr,
    HD: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    r = tl.program_id(0)
    s = tl.arange(0, BLOCK_S)
    s_ok = s < N_SPLIT
    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < HD
    m = tl.load(pml_ptr + (s * R + r) * 2, mask=s_ok, other=float("-inf"))
    l_ = tl.load(pml_ptr + (s * R + r) * 2 + 1, mask=s_ok, other=0.0)
    m_all = tl.max(m, 0)
    m_safe = tl.where(m_all == float("-inf"), 0.0, m_all)
    w = tl.exp(m - m_safe)
    total = tl.sum(w * l_, 0)
    acc = tl.load(
        po_ptr + (s * R + r)[:, None] * HD + dd[None, :], mask=s_ok[:, None] & d_ok[None, :], other=0.0
    )
    o = tl.sum(acc * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    b = r // (Tq * H)
    t = (r // H) % Tq
    h = r % H
    tl.store(o_ptr + b * so_b + t * so_t + h * so_h + dd, o.to(o_ptr.dtype.element_ty), mask=d_ok)


def _num_splits(device: torch.device, programs: int, n_tiles: int) -> int:
    """Enough ring splits for ~2 programs per SM (only worth it on a GPU; 1 elsewhere)."""
    if device.type != "cuda":
        return 1
    sms = sm_count(device)
    return max(1, min(n_tiles, triton.cdiv(2 * sms, max(programs, 1))))


def ring_attention_triton(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    ring_pos: Tensor,
    q_pos: Tensor,
    n_sinks: int,
    window: int,
    slots: Tensor,
    scale: float,
    out: Tensor,
    num_splits: int | None = None,
    block_n: int = 64,
) -> Tensor:
    """Fill ``out`` [B, Tq, H, hd] (see ``reference.ring_attention_ref`` for the arguments)."""
    bsz, tq, h, hd = q.shape
    nkv, c = k_cache.shape[1], k_cache.shape[2]
    g = h // nkv
    for name, t_ in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("out", out)):
        if t_.stride(-1) != 1:
            raise ValueError(f"ring_attention: {name} must be contiguous in its last dim")
    rows = tq * g
    block_m = max(16, min(64, triton.next_power_of_2(rows)))
    n_mt = triton.cdiv(rows, block_m)
    block_d = max(16, triton.next_power_of_2(hd))
    block_n = max(16, block_n)
    n_tiles = triton.cdiv(c, block_n)
    splits = num_splits if num_splits is not None else _num_splits(q.device, bsz * nkv * n_mt, n_tiles)
    splits = max(1, min(splits, n_tiles))
    keys_per_split = triton.cdiv(n_tiles, splits) * block_n
    splits = triton.cdiv(c, keys_per_split)
    ieee = q.dtype == torch.float32
    if splits > 1:
        part_o = torch.empty(splits, bsz * tq * h, hd, device=q.device, dtype=torch.float32)
        part_ml = torch.empty(splits, bsz * tq * h, 2, device=q.device, dtype=torch.float32)
    else:
        part_o = part_ml = out  # unused
    grid = (bsz, nkv * n_mt, splits)
    _ring_attn_kernel[grid](
        q, k_cache, v_cache, ring_pos, q_pos, slots, out, part_o, part_ml,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        ring_pos.stride(0), q_pos.stride(0),
        out.stride(0), out.stride(1), out.stride(2),
        bsz, tq, h, c, n_sinks, window, scale, keys_per_split,
        G=g, HD=hd, N_MT=n_mt, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        SPLIT=splits > 1, IEEE=ieee,
    )  # fmt: skip
    if splits > 1:
        r = bsz * tq * h
        _merge_splits_kernel[(r,)](
            part_o, part_ml, out, out.stride(0), out.stride(1), out.stride(2), r, tq, h,
            N_SPLIT=splits, HD=hd, BLOCK_S=max(2, triton.next_power_of_2(splits)), BLOCK_D=block_d,
        )  # fmt: skip
    return out
