"""Triton kernels: grouped (sorted) MoE GEMM for prefill and large batches, semantics ``reference.moe_ref``.

Instead of running every expert on every token, the N * k (token, expert) slots are sorted by expert and
each expert's group is padded to a multiple of BLOCK_M; one program tile then belongs to one expert and
runs ordinary tiled GEMMs on that expert's rows. The block table is built with device-side torch ops
(counts by scatter_add, cumsum, argsort, searchsorted) into a grid sized by N only (an upper bound of
``cdiv(N * k, BLOCK_M) + min(E, N * k)`` blocks; surplus blocks exit at once), so there is no host sync
and the launch can be captured in a CUDA graph. Empty experts get no blocks. Two launches:

1. gate/up: h = SiLU(X_e Wg_e^T) * (X_e Wu_e^T) per block, rows gathered by token index;
2. down: y_slot = w_slot * (h Wd_e), written per slot, then summed over the k slots of each token (a
   fixed-order sum: deterministic, no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.triton_moe_decode import check_weight_layout


def align_by_expert(topk_idx: Tensor, n_experts: int, block_m: int) -> tuple[Tensor, Tensor]:
    """Slots sorted by expert, each group padded to ``block_m``: (sorted_slot [n_blocks * block_m] with
    ``N * k`` as the padding sentinel, block_expert [n_blocks] with -1 for surplus blocks)."""
    flat = topk_idx.reshape(-1).to(torch.long)
    m = flat.numel()
    dev = flat.device
    counts = torch.zeros(n_experts, dtype=torch.long, device=dev).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    pend = torch.cumsum(padded, 0)
    cstart = torch.cumsum(counts, 0) - counts
    order = torch.argsort(flat, stable=True)
    se = flat[order]
    dest = (pend - padded)[se] + torch.arange(m, device=dev) - cstart[se]
    n_blocks = triton.cdiv(m, block_m) + min(n_experts, m)
    sorted_slot = torch.full((n_blocks * block_m,), m, dtype=torch.int32, device=dev)
    sorted_slot.scatter_(0, dest, order.to(torch.int32))
    starts = torch.arange(n_blocks, device=dev, dtype=torch.long) * block_m
    be = torch.searchsorted(pend, starts, right=True)
    block_expert = torch.where(be < n_experts, be, -1).to(torch.int32)
    return sorted_slot, block_expert


@triton.jit
def _grouped_gate_up_kernel(
    x_ptr,
    slot_ptr,
    bexp_ptr,
    wg_ptr,
    wu_ptr,
    h_ptr,
    sx,
    sw_e,
    sw_f,
    M,
    F,
    D,
    K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr,
):
    blk = tl.program_id(0)
    e = tl.load(bexp_ptr + blk).to(tl.int64)
    if e < 0:
        return
    rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.load(slot_ptr + rows)
    ok = slot < M
    tok = (slot // K).to(tl.int64)
    fn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    f_ok = fn < F
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_K):
        dd = d0 + tl.arange(0, BLOCK_K)
        d_ok = dd < D
        x = tl.load(x_ptr + tok[:, None] * sx + dd[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0)
        woff = e * sw_e + fn[None, :] * sw_f + dd[:, None]  # [BLOCK_K, BLOCK_N]: W^T tile
        wmask = d_ok[:, None] & f_ok[None, :]
        wg = tl.load(wg_ptr + woff, mask=wmask, other=0.0)
        wu = tl.load(wu_ptr + woff, mask=wmask, other=0.0)
        if IEEE:
            acc_g += tl.dot(x.to(wg.dtype), wg, input_precision="ieee")
            acc_u += tl.dot(x.to(wu.dtype), wu, input_precision="ieee")
        else:
            acc_g += tl.dot(x.to(wg.dtype), wg)
            acc_u += tl.dot(x.to(wu.dtype), wu)
    hv = acc_g * tl.sigmoid(acc_g) * acc_u
    tl.store(h_ptr + rows[:, None] * F + fn[None, :], hv.to(h_ptr.dtype.element_ty), mask=f_ok[None, :])


@triton.jit
def _grouped_down_kernel(
    h_ptr,
    slot_ptr,
    bexp_ptr,
    wd_ptr,
    rw_ptr,
    y_ptr,
    sw_e,
    sw_f,
    M,
    F,
    D,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr,
):
    blk = tl.program_id(0)
    e = tl.load(bexp_ptr + blk).to(tl.int64)
    if e < 0:
        return
    rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.load(slot_ptr + rows)
    ok = slot < M
    dn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    d_ok = dn < D
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for f0 in range(0, F, BLOCK_K):
        ff = f0 + tl.arange(0, BLOCK_K)
        f_ok = ff < F
        hv = tl.load(h_ptr + rows[:, None] * F + ff[None, :], mask=f_ok[None, :], other=0.0)
        wd = tl.load(
            wd_ptr + e * sw_e + ff[:, None] * sw_f + dn[None, :],
            mask=f_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        if IEEE:
            acc += tl.dot(hv, wd, input_precision="ieee")
        else:
            acc += tl.dot(hv, wd)
    rw = tl.load(rw_ptr + slot, mask=ok, other=0.0).to(tl.float32)
    acc = acc * rw[:, None]
    tl.store(y_ptr + slot.to(tl.int64)[:, None] * D + dn[None, :], acc, mask=ok[:, None] & d_ok[None, :])


def moe_grouped_triton(
    x: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
    topk_w: Tensor,
    topk_idx: Tensor,
    out: Tensor,
    block_m: int | None = None,
) -> Tensor:
    """Fill ``out`` [N, d] with ``reference.moe_ref`` via sorted, per-expert GEMMs."""
    n, d = x.shape
    k = topk_idx.shape[1]
    e_count, f = w_gate.shape[0], w_gate.shape[1]
    if n == 0:
        return out
    check_weight_layout("moe_grouped", w_gate, w_up, w_down)
    if x.stride(-1) != 1:
        raise ValueError("moe_grouped: x must be contiguous in its last dim")
    m = n * k
    if block_m is None:
        block_m = 16 if m <= 16 * e_count else 64
    block_m = max(16, block_m)
    sorted_slot, block_expert = align_by_expert(topk_idx, e_count, block_m)
    n_blocks = block_expert.numel()
    ieee = w_gate.dtype == torch.float32
    h = torch.empty(n_blocks * block_m, f, device=x.device, dtype=w_down.dtype)
    bn1 = 64 if f >= 64 else max(16, triton.next_power_of_2(f))
    bk1 = 64 if d >= 64 else max(16, triton.next_power_of_2(d))
    _grouped_gate_up_kernel[(n_blocks, triton.cdiv(f, bn1))](
        x, sorted_slot, block_expert, w_gate, w_up, h, x.stride(0), w_gate.stride(0), w_gate.stride(1),
        m, f, d, K=k, BLOCK_M=block_m, BLOCK_N=bn1, BLOCK_K=bk1, IEEE=ieee,
    )  # fmt: skip
    ys = torch.empty(m, d, device=x.device, dtype=torch.float32)
    rw = topk_w.reshape(-1).contiguous()
    bn2 = 64 if d >= 64 else max(16, triton.next_power_of_2(d))
    bk2 = 64 if f >= 64 else max(16, triton.next_power_of_2(f))
    _grouped_down_kernel[(n_blocks, triton.cdiv(d, bn2))](
        h, sorted_slot, block_expert, w_down, rw, ys, w_down.stride(0), w_down.stride(1), m, f, d,
        BLOCK_M=block_m, BLOCK_N=bn2, BLOCK_K=bk2, IEEE=ieee,
    )  # fmt: skip
    out.copy_(ys.view(n, k, d).sum(1))
    return out
