"""Triton kernels: MoE decode as gather + GEMV (few tokens per expert), semantics ``reference.moe_ref``.

Decode batches are small: each token reads only its k experts' rows, straight from the [E, f, d] weight
tensors (the "gather" is an address computation, never a copy), and every weight byte is read once per
(token, expert). Two launches:

1. gate/up: one program per (token slot, tile of f rows): both GEMVs over d, fused SiLU(gate) * up,
   written to a small fp32 scratch h [N * k, f];
2. down + combine: one program per (token, tile of d, split of f): the k experts' down GEMVs weighted by
   the routing weights and summed in registers, so the top-k sum needs no extra pass. Splitting f keeps a
   GPU busy at N = 1; the splits' partial sums are added by one torch sum (deterministic, no atomics).

GEMVs use elementwise multiply + reduce (``tl.sum``), not ``tl.dot``, so there is no 16-row minimum and
the same code runs on the interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.dispatch import sm_count


@triton.jit
def _gate_up_kernel(
    x_ptr,
    idx_ptr,
    wg_ptr,
    wu_ptr,
    h_ptr,
    sx,
    sw_e,
    sw_f,
    F,
    D,
    K: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    slot = tl.program_id(0)
    tok = slot // K
    e = tl.load(idx_ptr + slot).to(tl.int64)
    f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    f_ok = f < F
    acc_g = tl.zeros([BLOCK_F], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_F], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_K):
        dd = d0 + tl.arange(0, BLOCK_K)
        d_ok = dd < D
        x = tl.load(x_ptr + tok * sx + dd, mask=d_ok, other=0.0).to(tl.float32)
        wmask = f_ok[:, None] & d_ok[None, :]
        off = e * sw_e + f[:, None] * sw_f + dd[None, :]
        wg = tl.load(wg_ptr + off, mask=wmask, other=0.0).to(tl.float32)
        wu = tl.load(wu_ptr + off, mask=wmask, other=0.0).to(tl.float32)
        acc_g += tl.sum(wg * x[None, :], 1)
        acc_u += tl.sum(wu * x[None, :], 1)
    hv = acc_g * tl.sigmoid(acc_g) * acc_u
    tl.store(h_ptr + slot * F + f, hv, mask=f_ok)


@triton.jit
def _down_kernel(
    h_ptr,
    idx_ptr,
    w_ptr,
    wd_ptr,
    y_ptr,
    sw_e,
    sw_f,
    sy_s,
    sy_n,
    F,
    D,
    f_per_split,
    K: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    tok = tl.program_id(0)
    dd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    split = tl.program_id(2)
    d_ok = dd < D
    f_lo = split * f_per_split
    f_hi = tl.minimum(f_lo + f_per_split, F)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for j in tl.static_range(K):
        slot = tok * K + j
        e = tl.load(idx_ptr + slot).to(tl.int64)
        rw = tl.load(w_ptr + slot).to(tl.float32)
        part = tl.zeros([BLOCK_D], dtype=tl.float32)
        for f0 in range(f_lo, f_hi, BLOCK_F):
            f = f0 + tl.arange(0, BLOCK_F)
            f_ok = f < f_hi
            hv = tl.load(h_ptr + slot * F + f, mask=f_ok, other=0.0)
            wd = tl.load(
                wd_ptr + e * sw_e + f[:, None] * sw_f + dd[None, :],
                mask=f_ok[:, None] & d_ok[None, :],
                other=0.0,
            ).to(tl.float32)
            part += tl.sum(hv[:, None] * wd, 0)
        acc += rw * part
    tl.store(y_ptr + split * sy_s + tok * sy_n + dd, acc.to(y_ptr.dtype.element_ty), mask=d_ok)


def check_weight_layout(op: str, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> None:
    """The kernels index gate and up with one set of strides, every weight row contiguous in d."""
    if not (w_gate.stride() == w_up.stride() and w_gate.stride(-1) == 1 and w_down.stride(-1) == 1):
        raise ValueError(f"{op}: w_gate and w_up must share strides; all weights contiguous in d")


def _f_splits(device: torch.device, programs: int, f_tiles: int) -> int:
    if device.type != "cuda":
        return 1
    sms = sm_count(device)
    return max(1, min(f_tiles, triton.cdiv(2 * sms, max(programs, 1))))


def moe_decode_triton(
    x: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
    topk_w: Tensor,
    topk_idx: Tensor,
    out: Tensor,
    f_splits: int | None = None,
) -> Tensor:
    """Fill ``out`` [N, d] with ``reference.moe_ref`` (weights [E, f, d], rows contiguous)."""
    n, d = x.shape
    k = topk_idx.shape[1]
    f = w_gate.shape[1]
    if n == 0:
        return out
    check_weight_layout("moe_decode", w_gate, w_up, w_down)
    if x.stride(-1) != 1 or out.stride(-1) != 1:
        raise ValueError("moe_decode: x and out must be contiguous in their last dim")
    idx = topk_idx.contiguous()
    rw = topk_w.contiguous()
    h = torch.empty(n * k, f, device=x.device, dtype=torch.float32)
    block_f1 = 16
    block_k = min(256, max(16, triton.next_power_of_2(d)))
    _gate_up_kernel[(n * k, triton.cdiv(f, block_f1))](
        x, idx, w_gate, w_up, h, x.stride(0), w_gate.stride(0), w_gate.stride(1), f, d,
        K=k, BLOCK_F=block_f1, BLOCK_K=block_k,
    )  # fmt: skip
    block_d = min(128, max(16, triton.next_power_of_2(d)))
    block_f2 = 32
    d_tiles = triton.cdiv(d, block_d)
    f_tiles = triton.cdiv(f, block_f2)
    splits = f_splits if f_splits is not None else _f_splits(x.device, n * d_tiles, f_tiles)
    splits = max(1, min(splits, f_tiles))
    f_per_split = triton.cdiv(f_tiles, splits) * block_f2
    splits = triton.cdiv(f, f_per_split)
    y = out if splits == 1 else torch.empty(splits, n, d, device=x.device, dtype=torch.float32)
    sy_s = 0 if splits == 1 else y.stride(0)
    sy_n = out.stride(0) if splits == 1 else y.stride(1)
    _down_kernel[(n, d_tiles, splits)](
        h, idx, rw, w_down, y, w_down.stride(0), w_down.stride(1), sy_s, sy_n, f, d, f_per_split,
        K=k, BLOCK_F=block_f2, BLOCK_D=block_d,
    )  # fmt: skip
    if splits > 1:
        out.copy_(y.sum(0))
    return out
