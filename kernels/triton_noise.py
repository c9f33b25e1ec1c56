"""Triton kernel: counter-based per-session sampling noise (the contract is ``reference.noise_ref``).

One program per (session row, block of Philox counters). The seed and chunk index are read from device
tensors, so the launch has no host-side per-session state: the noise of a whole tick is one launch that
a CUDA graph can replay with new seeds/chunks written into the same tensors.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

KIND_CODE = {"uniform": 0, "normal": 1, "gumbel": 2}


@triton.jit
def _to_unit(r):
    # top 24 bits + half a step: exact float32 in (0, 1), bit-identical to reference.uint32_to_unit
    return ((r >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)


@triton.jit(do_not_specialize=["stream"])
def _noise_kernel(
    seed_ptr, chunk_ptr, out_ptr, stride_b, n, stream, KIND: tl.constexpr, BLOCK_G: tl.constexpr
):
    b = tl.program_id(0)
    g = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
    seed = tl.load(seed_ptr + b).to(tl.int64)
    ch = tl.load(chunk_ptr + b).to(tl.int64)
    zero = tl.zeros([BLOCK_G], dtype=tl.uint32)
    c1 = zero + stream.to(tl.uint32)
    c2 = zero + (ch & 0xFFFFFFFF).to(tl.uint32)
    c3 = zero + ((ch >> 32) & 0xFFFFFFFF).to(tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, g.to(tl.uint32), c1, c2, c3)
    u0, u1, u2, u3 = _to_unit(r0), _to_unit(r1), _to_unit(r2), _to_unit(r3)
    if KIND == 1:
        ra = tl.sqrt(-2.0 * tl.log(u0))
        rb = tl.sqrt(-2.0 * tl.log(u2))
        ta = 6.283185307179586 * u1
        tb = 6.283185307179586 * u3
        u0, u1, u2, u3 = ra * tl.cos(ta), ra * tl.sin(ta), rb * tl.cos(tb), rb * tl.sin(tb)
    elif KIND == 2:
        u0 = -tl.log(-tl.log(u0))
        u1 = -tl.log(-tl.log(u1))
        u2 = -tl.log(-tl.log(u2))
        u3 = -tl.log(-tl.log(u3))
    base = out_ptr + b * stride_b + 4 * g
    i = 4 * g
    tl.store(base, u0, mask=i < n)
    tl.store(base + 1, u1, mask=i + 1 < n)
    tl.store(base + 2, u2, mask=i + 2 < n)
    tl.store(base + 3, u3, mask=i + 3 < n)


def noise_triton(seed: Tensor, chunk: Tensor, stream: int, out: Tensor, kind: str) -> Tensor:
    """Fill ``out`` [B, n] (float32, last dim contiguous) with the noise of ``reference.noise_ref``."""
    bsz, n = out.shape
    if bsz == 0 or n == 0:
        return out
    groups = (n + 3) // 4
    block_g = min(256, triton.next_power_of_2(groups))
    grid = (bsz, triton.cdiv(groups, block_g))
    _noise_kernel[grid](seed, chunk, out, out.stride(0), n, stream, KIND=KIND_CODE[kind], BLOCK_G=block_g)
    return out
