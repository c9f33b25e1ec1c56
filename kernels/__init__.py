"""GPU kernels for the engine's hot ops, each beside a plain torch reference, behind one dispatch layer.

Ops (see ``reference`` for the exact semantics and shapes):

* ``ring_attention``: attention of each session's query rows over its own KV ring with sinks (decode:
  one row per session; prefill: a causal chunk), GQA, masks from ring positions;
* ``moe_decode``: top-k MoE as gather + GEMV (few tokens per expert);
* ``moe_grouped``: top-k MoE as sorted, per-expert grouped GEMMs (prefill, large batches);
* ``moe``: picks one of the two by tokens per expert;
* ``sampling_noise``: counter-based per-session noise (Philox keyed by seed, chunk, stream).

Every op takes ``backend=`` (``"auto" | "torch" | "triton"``, default: ``get_default_backend()``); see
``kernels.dispatch``. Triton modules are imported only when a Triton backend is chosen, so importing
``kernels`` never needs triton.
"""

from __future__ import annotations

import importlib
import math

import torch
from torch import Tensor

from kernels import reference
from kernels.dispatch import (
    BACKENDS,
    BackendUnavailable,
    get_default_backend,
    interpreter_enabled,
    resolve,
    set_default_backend,
    triton_available,
)

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "get_default_backend",
    "interpreter_enabled",
    "moe",
    "moe_decode",
    "moe_grouped",
    "reference",
    "ring_attention",
    "sampling_noise",
    "set_default_backend",
    "triton_available",
]


def _fill(out: Tensor | None, value: Tensor) -> Tensor:
    if out is None:
        return value
    out.copy_(value)
    return out


def ring_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    ring_pos: Tensor,
    q_pos: Tensor,
    *,
    n_sinks: int,
    window: int,
    slots: Tensor | None = None,
    scale: float | None = None,
    out: Tensor | None = None,
    backend: str | None = None,
    num_splits: int | None = None,
) -> Tensor:
    """Attention over KV rings: q [B, Tq, H, hd], k/v_cache [n_slots, n_kv, C, hd], ring_pos [n_slots, C],
    q_pos [B, Tq], slots [B] -> [B, Tq, H, hd] (``reference.ring_attention_ref``). ``num_splits``
    (Triton only) forces the number of ring splits; by default it is chosen from the GPU's SM count."""
    b, tq, h, hd = q.shape
    n_slots, nkv, c, hd_k = k_cache.shape
    if hd_k != hd or v_cache.shape != k_cache.shape or h % nkv:
        raise ValueError(f"ring_attention: q {tuple(q.shape)} does not match k/v {tuple(k_cache.shape)}")
    if ring_pos.shape != (n_slots, c) or q_pos.shape != (b, tq):
        raise ValueError(
            f"ring_attention: ring_pos {tuple(ring_pos.shape)} / q_pos {tuple(q_pos.shape)} do not match"
        )
    if slots is None:
        if b > n_slots:
            raise ValueError("ring_attention: more rows than cache slots and no slots given")
        slots = torch.arange(b, device=q.device)
    scale = 1.0 / math.sqrt(hd) if scale is None else scale
    if resolve("ring_attention", q, k_cache, v_cache, backend=backend) == "torch":
        ref = reference.ring_attention_ref(
            q, k_cache, v_cache, ring_pos, q_pos, n_sinks, window, slots, scale
        )
        return _fill(out, ref)
    from kernels.triton_ring_attention import ring_attention_triton

    out = torch.empty_like(q) if out is None else out
    return ring_attention_triton(
        q, k_cache, v_cache, ring_pos, q_pos, n_sinks, window, slots, scale, out, num_splits=num_splits
    )


def _check_moe(
    x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, topk_w: Tensor, topk_idx: Tensor
) -> None:
    n, d = x.shape
    if w_gate.shape != w_up.shape or w_gate.shape != w_down.shape or w_gate.shape[2] != d:
        raise ValueError(
            f"moe: weights must all be [E, f, {d}]: {tuple(w_gate.shape)}, {tuple(w_down.shape)}"
        )
    if topk_w.shape != topk_idx.shape or topk_idx.shape[0] != n:
        raise ValueError(
            f"moe: topk_w {tuple(topk_w.shape)} / topk_idx {tuple(topk_idx.shape)} vs x {n} rows"
        )


def _moe(op: str, x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, topk_w: Tensor, topk_idx: Tensor,
         out: Tensor | None, backend: str | None) -> Tensor:  # fmt: skip
    _check_moe(x, w_gate, w_up, w_down, topk_w, topk_idx)
    if resolve(op, x, w_gate, backend=backend) == "torch":
        return _fill(out, reference.moe_ref(x, w_gate, w_up, w_down, topk_w, topk_idx))
    run = getattr(importlib.import_module(f"kernels.triton_{op}"), f"{op}_triton")
    return run(x, w_gate, w_up, w_down, topk_w, topk_idx, torch.empty_like(x) if out is None else out)


def moe_decode(
    x: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
    topk_w: Tensor,
    topk_idx: Tensor,
    *,
    out: Tensor | None = None,
    backend: str | None = None,
) -> Tensor:
    """Top-k MoE, gather + GEMV: x [N, d], weights [E, f, d], topk_w/idx [N, k] -> [N, d]."""
    return _moe("moe_decode", x, w_gate, w_up, w_down, topk_w, topk_idx, out, backend)


def moe_grouped(
    x: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
    topk_w: Tensor,
    topk_idx: Tensor,
    *,
    out: Tensor | None = None,
    backend: str | None = None,
) -> Tensor:
    """Top-k MoE, sorted grouped GEMM: same arguments and result as ``moe_decode``."""
    return _moe("moe_grouped", x, w_gate, w_up, w_down, topk_w, topk_idx, out, backend)


def moe(
    x: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
    topk_w: Tensor,
    topk_idx: Tensor,
    *,
    gather_max_tokens: int | None = None,
    out: Tensor | None = None,
    backend: str | None = None,
) -> Tensor:
    """``moe_decode`` for up to ``gather_max_tokens`` tokens (default E // k, i.e. about one token per
    expert, the executor's rule), else ``moe_grouped``. The choice depends on N only (static per
    CUDA-graph bucket)."""
    e, k = w_gate.shape[0], topk_idx.shape[1]
    limit = max(1, e // max(k, 1)) if gather_max_tokens is None else gather_max_tokens
    fn = moe_decode if x.shape[0] <= limit else moe_grouped
    return fn(x, w_gate, w_up, w_down, topk_w, topk_idx, out=out, backend=backend)


def sampling_noise(
    seed: Tensor,
    chunk: Tensor,
    stream: int,
    n: int,
    *,
    kind: str = "normal",
    out: Tensor | None = None,
    backend: str | None = None,
) -> Tensor:
    """Per-session noise [B, n] float32 from seed [B] and chunk [B] (int64) and a stream id
    (``reference.noise_ref``: what is and is not bit-identical across backends is stated there)."""
    if kind not in reference.NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; expected one of {list(reference.NOISE_KINDS)}")
    if seed.shape != chunk.shape or seed.dim() != 1:
        raise ValueError(
            f"sampling_noise: seed {tuple(seed.shape)} and chunk {tuple(chunk.shape)} must be [B]"
        )
    if not 0 <= stream < 2**32:
        raise ValueError("sampling_noise: stream must fit in 32 bits")
    if out is not None and (out.shape != (seed.shape[0], n) or out.dtype != torch.float32):
        raise ValueError(f"sampling_noise: out must be float32 [{seed.shape[0]}, {n}]")
    if resolve("sampling_noise", seed, chunk, backend=backend) == "torch":
        return _fill(out, reference.noise_ref(seed, chunk, stream, n, kind))
    from kernels.triton_noise import noise_triton

    out = torch.empty(seed.shape[0], n, device=seed.device, dtype=torch.float32) if out is None else out
    return noise_triton(seed, chunk, stream, out, kind)
