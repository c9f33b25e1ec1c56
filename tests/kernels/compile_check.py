"""Compile every Triton kernel variant the wrappers launch at the gpu-moe shapes to a cubin for sm_90
(H100/H200), without a GPU: the interpreter accepts code the GPU compiler rejects (tile shapes, dtypes,
control flow), so CPU CI runs this too. Run without TRITON_INTERPRET (the kernels must be JIT functions):

    python tests/kernels/compile_check.py [--sm 90]

The wrappers run on CPU tensors with every kernel's launch replaced by a recorder; the recorded
arguments give each launch's signature and constexprs, which ``triton.compile`` builds for the target.
Exits 1 if any variant fails to compile.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise SystemExit("compile_check: unset TRITON_INTERPRET (it needs compiled, not interpreted, kernels)")

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import kernels.triton_moe_decode as md
import kernels.triton_moe_grouped as mg
import kernels.triton_noise as nz
import kernels.triton_ring_attention as ra

TYPES = {
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.int64: "i64",
    torch.int32: "i32",
}
KERNELS = {
    ra: ["_ring_attn_kernel", "_merge_splits_kernel"],
    md: ["_gate_up_kernel", "_down_kernel"],
    mg: ["_grouped_gate_up_kernel", "_grouped_down_kernel"],
    nz: ["_noise_kernel"],
}


class Recorder:
    """Stands in for a JIT function: ``kernel[grid](...)`` records the call instead of launching."""

    def __init__(self, fn: Any, calls: list) -> None:
        self.fn, self.calls = fn, calls

    def __getitem__(self, grid: Any):
        return lambda *args, **kw: self.calls.append((self.fn, args, kw))


def launch_all() -> None:
    """The launches of the gpu-moe decode/prefill shapes (bf16) and of the fp32 tests (IEEE dots)."""
    bf, i64 = torch.bfloat16, torch.long
    b, c, h, nkv, hd = 4, 1024, 16, 4, 64
    k = torch.zeros(b, nkv, c, hd, dtype=bf)
    rp, slots = torch.zeros(b, c, dtype=i64), torch.arange(b)
    for tq in (1, 14):
        q, qp = torch.zeros(b, tq, h, hd, dtype=bf), torch.zeros(b, tq, dtype=i64)
        for splits in (1, 8):
            ra.ring_attention_triton(
                q, k, k, rp, qp, 4, 1000, slots, 0.125, torch.empty_like(q), num_splits=splits
            )
    w = torch.zeros(16, 1024, 1024, dtype=bf)
    for n in (1, 8, 200):
        x, idx, tw = torch.zeros(n, 1024, dtype=bf), torch.zeros(n, 2, dtype=i64), torch.zeros(n, 2)
        md.moe_decode_triton(x, w, w, w, tw, idx, torch.empty_like(x), f_splits=4)
        mg.moe_grouped_triton(x, w, w, w, tw, idx, torch.empty_like(x))
    for kind in ("uniform", "normal", "gumbel"):
        nz.noise_triton(torch.zeros(4, dtype=i64), torch.zeros(4, dtype=i64), 3, torch.empty(4, 1280), kind)
    q, k = torch.zeros(2, 1, 4, 24), torch.zeros(2, 2, 16, 24)
    rp, qp = torch.zeros(2, 16, dtype=i64), torch.zeros(2, 1, dtype=i64)
    ra.ring_attention_triton(q, k, k, rp, qp, 2, 8, torch.arange(2), 0.25, torch.empty_like(q), num_splits=2)
    w, x = torch.zeros(6, 40, 24), torch.zeros(5, 24)
    tw, idx = torch.zeros(5, 2), torch.zeros(5, 2, dtype=i64)
    md.moe_decode_triton(x, w, w, w, tw, idx, torch.empty_like(x), f_splits=2)
    mg.moe_grouped_triton(x, w, w, w, tw, idx, torch.empty_like(x))


def signature(fn: Any, args: tuple, kw: dict) -> tuple[dict[str, str], dict[str, Any]]:
    vals = dict(zip(fn.arg_names, args, strict=False)) | kw
    const_idx = {p.num for p in fn.params if p.is_constexpr}
    sig: dict[str, str] = {}
    consts: dict[str, Any] = {}
    for i, name in enumerate(fn.arg_names):
        v = vals[name]
        if i in const_idx:
            sig[name], consts[name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[name] = "*" + TYPES[v.dtype]
        elif isinstance(v, bool):
            sig[name] = "i1"
        elif isinstance(v, int):
            sig[name] = "i64" if abs(v) >= 2**31 else "i32"
        elif isinstance(v, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}.{name}: cannot type {type(v).__name__}")
    return sig, consts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sm", type=int, default=90, help="CUDA compute capability to compile for (default 90)")
    args = ap.parse_args()
    calls: list = []
    for mod, names in KERNELS.items():
        for name in names:
            setattr(mod, name, Recorder(getattr(mod, name), calls))
    launch_all()
    target = GPUTarget("cuda", args.sm, 32)
    seen: set = set()
    failures = 0
    for fn, a, kw in calls:
        sig, consts = signature(fn, a, kw)
        key = (fn.__name__, tuple(sorted(sig.items())), tuple(sorted(consts.items())))
        if key in seen:
            continue
        seen.add(key)
        t0 = time.perf_counter()
        try:
            ck = triton.compile(ASTSource(fn, sig, consts), target=target)
            print(
                f"ok   {fn.__name__:26s} smem={ck.metadata.shared:>6} {time.perf_counter() - t0:5.1f}s {consts}"
            )
        except Exception as e:
            failures += 1
            print(f"FAIL {fn.__name__} {consts}: {type(e).__name__}: {str(e)[:3000]}")
    print(f"compiled {len(seen)} variants for sm_{args.sm}: {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
