"""GPU benchmark of the ``kernels`` package: per-kernel bandwidth and a whole decode tick, eager vs graphed.

One short run (a few minutes on an H200, random bf16 weights) at the ``gpu-moe`` preset's shapes:

* per kernel (ring attention decode/prefill, MoE gather+GEMV, MoE grouped GEMM, sampling noise) at
  B = 1/8/32/128 sessions: median time, bytes touched, GB/s and % of the HBM bound (4.8 TB/s);
* a tick built from the kernels, as the engine runs one micro-turn: sampling noise, one prefill forward
  (n_prefill tokens per session) and n_text_out + n_audio_out - 1 decode forwards (one token per
  session), each forward through all layers (RMSNorm, QKV + RoPE, KV-ring write, ring attention, output
  projection, RMSNorm, router top-k, MoE); heads (LM head, flow, vocoder) and embeddings are not
  included. Tick p50/p99 eager and replayed from one CUDA graph per batch size, kernel launches per
  tick, bytes touched (all non-expert weights, the routed experts' weights (expected distinct experts
  under uniform routing), the full KV ring of every session) and % of the bandwidth bound.

Every session's ring is full (a long session: the worst case for attention). Writes a JSON report to
``--out`` and prints a table. ``--smoke`` runs tiny shapes for a few iterations on whatever device is
there (CPU: the torch reference backend, or the Triton interpreter with ``--backend triton`` and
TRITON_INTERPRET=1) so the script itself is tested without a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

try:
    import kernels
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import kernels

from microturn.model import tokens as tk
from microturn.model.config import ModelConfig, preset
from microturn.model.layout import TurnLayout

HBM_GBPS = 4800.0  # H200
DESIGN_BOUND_GB = {1: 3.3, 32: 15.5, 128: 26.8}  # DESIGN.md "GPU kernels" (bf16 weights + KV per tick)


def smoke_config() -> ModelConfig:
    return preset(
        "tiny-moe",
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        n_experts=4,
        top_k=2,
        d_ff_expert=32,
        window_turns=2,
    )


# ---- timing ---------------------------------------------------------------------------------------------
def time_fn(fn: Callable[[], Any], iters: int, warmup: int, device: torch.device) -> list[float]:
    """Per-iteration times in ms (CUDA events on a GPU, perf_counter elsewhere)."""
    for _ in range(warmup):
        fn()
    out: list[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        for _ in range(iters):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def count_launches(fn: Callable[[], Any], device: torch.device) -> int | None:
    """GPU kernels one call launches (torch profiler's CUDA activity, copies and memsets left out);
    None off a GPU."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        cuda = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    except Exception:  # no CUPTI: report no count rather than fail the run
        return None
    return sum(1 for e in cuda if not e.name.startswith(("Memcpy", "Memset")))


# ---- the model pieces, random weights -------------------------------------------------------------------
class Bench:
    def __init__(self, cfg: ModelConfig, b_max: int, device: torch.device, dtype: torch.dtype, backend: str):
        self.cfg, self.dev, self.dt, self.backend = cfg, device, dtype, backend
        lay = TurnLayout.from_config(cfg)
        self.P, self.n_dec = lay.n_prefill, lay.n_text_out + lay.n_audio_out - 1
        self.n_text_out, self.n_audio_out = lay.n_text_out, lay.n_audio_out
        self.S = cfg.n_sinks
        self.window = cfg.window_turns * lay.turn_len
        self.ring = self.window + max(lay.n_prefill, lay.turn_len)
        self.ctx = self.S + self.ring
        self.L, self.H, self.nkv, self.hd, self.d = (
            cfg.n_layers,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.head_dim,
            cfg.d_model,
        )
        self.E, self.k, self.f = cfg.n_experts, cfg.top_k, cfg.d_ff_expert
        g = torch.Generator(device=device).manual_seed(0)

        def rnd(*shape: int, scale: float) -> torch.Tensor:
            return (torch.randn(*shape, device=device, generator=g) * scale).to(dtype)

        d, hd = self.d, self.hd
        self.layers = []
        for _ in range(self.L):
            self.layers.append(
                {
                    "wqkv": rnd((self.H + 2 * self.nkv) * hd, d, scale=d**-0.5),
                    "wo": rnd(d, self.H * hd, scale=(self.H * hd) ** -0.5),
                    "n1": torch.ones(d, device=device, dtype=dtype),
                    "n2": torch.ones(d, device=device, dtype=dtype),
                    "router": rnd(self.E, d, scale=d**-0.5),
                    "wg": rnd(self.E, self.f, d, scale=d**-0.5),
                    "wu": rnd(self.E, self.f, d, scale=d**-0.5),
                    "wd": rnd(self.E, self.f, d, scale=self.f**-0.5),
                    "k": rnd(b_max, self.nkv, self.ctx, hd, scale=1.0),
                    "v": rnd(b_max, self.nkv, self.ctx, hd, scale=1.0),
                }
            )
        self.inv_freq = 1.0 / (
            cfg.rope_theta ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd)
        )
        self.b_max = b_max

    # per-batch-size state: sessions at different, long positions (every ring full and wrapped)
    def state(self, b: int) -> dict[str, Any]:
        base = self.S + 3 * self.ring + 7 * torch.arange(b, device=self.dev)
        # one row per cache slot (the caches hold b_max); rows >= b stay empty
        ring_pos = torch.full((self.b_max, self.ctx), -1, dtype=torch.long, device=self.dev)
        ring_pos[:b, : self.S] = torch.arange(self.S, device=self.dev)
        # fill each ring with the `ring` positions before base
        p = base[:, None] - self.ring + torch.arange(self.ring, device=self.dev)[None, :]
        slot = self.S + (p - self.S) % self.ring
        ring_pos[:b].scatter_(1, slot, p)
        blocks = [base[:, None] + torch.arange(self.P, device=self.dev)[None, :]]
        for j in range(self.n_dec):
            blocks.append((base + self.P + j)[:, None])
        st: dict[str, Any] = {"b": b, "ring_pos": ring_pos, "blocks": []}
        g = torch.Generator(device=self.dev).manual_seed(b)
        for pos in blocks:
            tq = pos.shape[1]
            ang = pos.to(torch.float32)[..., None] * self.inv_freq
            st["blocks"].append(
                {
                    "pos": pos,
                    "ring_i": self.S + (pos - self.S) % self.ring,
                    "rows": torch.arange(b, device=self.dev)[:, None].expand(b, tq),
                    "cos": torch.cos(ang).to(self.dt)[:, :, None, :],
                    "sin": torch.sin(ang).to(self.dt)[:, :, None, :],
                    "x": torch.randn(b * tq, self.d, device=self.dev, generator=g).to(self.dt),
                    "att": torch.empty(b, tq, self.H, self.hd, device=self.dev, dtype=self.dt),
                }
            )
        st["seed"] = torch.arange(b, device=self.dev, dtype=torch.long) * 7919 + 1
        st["chunk"] = torch.full((b,), 3000, device=self.dev, dtype=torch.long)
        st["gumbel"] = torch.empty(b, self.n_text_out * tk.VOCAB_SIZE, device=self.dev)
        st["noise"] = torch.empty(b, self.n_audio_out * self.cfg.mel_dim, device=self.dev)
        return st

    def rmsnorm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg.norm_eps)).to(x.dtype) * w

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x.shape[-1] // 2
        x1, x2 = x[..., :h], x[..., h:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    def forward(self, st: dict[str, Any], blk: dict[str, Any]) -> torch.Tensor:
        b, tq = blk["pos"].shape
        n, H, nkv, hd = b * tq, self.H, self.nkv, self.hd
        st["ring_pos"][blk["rows"], blk["ring_i"]] = blk["pos"]
        x = blk["x"].clone()
        for lw in self.layers:
            h = self.rmsnorm(x, lw["n1"])
            qkv = h @ lw["wqkv"].t()
            q = self.rope(qkv[:, : H * hd].view(b, tq, H, hd), blk["cos"], blk["sin"])
            k = self.rope(qkv[:, H * hd : (H + nkv) * hd].view(b, tq, nkv, hd), blk["cos"], blk["sin"])
            v = qkv[:, (H + nkv) * hd :].view(b, tq, nkv, hd)
            lw["k"][blk["rows"], :, blk["ring_i"]] = k
            lw["v"][blk["rows"], :, blk["ring_i"]] = v
            att = kernels.ring_attention(
                q, lw["k"], lw["v"], st["ring_pos"], blk["pos"], n_sinks=self.S, window=self.window,
                out=blk["att"], backend=self.backend,
            )  # fmt: skip
            x = x + att.view(n, H * hd) @ lw["wo"].t()
            h = self.rmsnorm(x, lw["n2"])
            top, idx = torch.topk((h @ lw["router"].t()).float(), self.k, dim=-1)
            w = torch.softmax(top, -1)
            x = x + kernels.moe(h, lw["wg"], lw["wu"], lw["wd"], w, idx, backend=self.backend)
        return x

    def tick(self, st: dict[str, Any]) -> None:
        kernels.sampling_noise(
            st["seed"],
            st["chunk"],
            0,
            st["gumbel"].shape[1],
            kind="gumbel",
            out=st["gumbel"],
            backend=self.backend,
        )
        kernels.sampling_noise(
            st["seed"],
            st["chunk"],
            1,
            st["noise"].shape[1],
            kind="normal",
            out=st["noise"],
            backend=self.backend,
        )
        for blk in st["blocks"]:
            self.forward(st, blk)

    def shapes(self) -> dict[str, int]:
        names = ("L", "d", "H", "nkv", "hd", "E", "k", "f", "ctx", "window", "P", "n_dec")
        keys = ("layers", "d_model", "heads", "kv_heads", "head_dim", "experts", "top_k", "d_ff_expert")
        keys += ("ctx", "window", "n_prefill", "decode_forwards")
        return {key: int(getattr(self, n)) for key, n in zip(keys, names, strict=True)}

    # bytes ------------------------------------------------------------------------------------------
    def expert_bytes(self) -> float:
        return 3 * self.f * self.d * self.elt

    @property
    def elt(self) -> int:
        return torch.finfo(self.dt).bits // 8

    def distinct_experts(self, n_tokens: int) -> float:
        """Expected distinct experts a layer reads for n tokens under uniform top-k routing."""
        return self.E * (1.0 - ((self.E - self.k) / self.E) ** n_tokens)

    def kv_bytes(self, b: int) -> float:
        return b * 2 * self.nkv * self.ctx * self.hd * self.elt + b * self.ctx * 8

    def forward_bytes(self, b: int, tq: int) -> float:
        d, hd = self.d, self.hd
        dense = ((self.H + 2 * self.nkv) * hd * d + d * self.H * hd + 2 * d + self.E * d) * self.elt
        per_layer = dense + self.distinct_experts(b * tq) * self.expert_bytes() + self.kv_bytes(b)
        return self.L * per_layer

    def tick_bytes(self, b: int) -> float:
        return self.forward_bytes(b, self.P) + self.n_dec * self.forward_bytes(b, 1)


# ---- per-kernel measurements ----------------------------------------------------------------------------
def kernel_rows(bn: Bench, b: int, st: dict[str, Any], iters: int, warmup: int) -> list[dict[str, Any]]:
    lw, dev, rows = bn.layers[0], bn.dev, []

    def add(name: str, n: int, fn: Callable[[], Any], nbytes: float) -> None:
        ts = time_fn(fn, iters, warmup, dev)
        ms = statistics.median(ts)
        gbps = nbytes / (ms * 1e-3) / 1e9
        rows.append(
            {
                "kernel": name,
                "B": b,
                "N": n,
                "time_us": ms * 1e3,
                "bytes": nbytes,
                "GBps": gbps,
                "pct_hbm": 100 * gbps / HBM_GBPS,
            }
        )

    for blk, label in (
        (st["blocks"][1], "ring_attention decode"),
        (st["blocks"][0], "ring_attention prefill"),
    ):
        q = torch.randn(b, blk["pos"].shape[1], bn.H, bn.hd, device=dev).to(bn.dt)
        qo = 2 * q.numel() * bn.elt

        def att(q=q, blk=blk) -> None:
            kernels.ring_attention(
                q,
                lw["k"],
                lw["v"],
                st["ring_pos"],
                blk["pos"],
                n_sinks=bn.S,
                window=bn.window,
                out=blk["att"],
                backend=bn.backend,
            )

        add(label, q.shape[0] * q.shape[1], att, bn.kv_bytes(b) + qo)

    g = torch.Generator(device=dev).manual_seed(b)
    for n, label in ((b, "moe_decode"), (b, "moe_grouped"), (b * bn.P, "moe_grouped")):
        if label == "moe_decode" and n > 4 * bn.E:
            continue  # gather+GEMV reads k experts per token: only sensible for small N
        x = torch.randn(n, bn.d, device=dev, generator=g).to(bn.dt)
        top, idx = torch.topk(torch.randn(n, bn.E, device=dev, generator=g), bn.k, -1)
        w = torch.softmax(top, -1)
        distinct = int(torch.unique(idx).numel())
        act = 2 * n * bn.d * bn.elt
        fn = kernels.moe_decode if label == "moe_decode" else kernels.moe_grouped

        def moe(fn=fn, x=x, w=w, idx=idx) -> None:
            fn(x, lw["wg"], lw["wu"], lw["wd"], w, idx, backend=bn.backend)

        add(label, n, moe, distinct * bn.expert_bytes() + act)

    def noise() -> None:
        kernels.sampling_noise(
            st["seed"], st["chunk"], 1, st["noise"].shape[1], out=st["noise"], backend=bn.backend
        )

    add("sampling_noise", b, noise, st["noise"].numel() * 4)
    return rows


# ---- accuracy at the benchmark's shapes (the numbers mean nothing if the kernels are wrong) ---------------
def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def accuracy_checks(bn: Bench, b: int) -> list[dict[str, Any]]:
    """Each op on the benchmark's backend vs the fp32 torch reference on the same inputs (relative L2
    error); empty when the backend is the reference itself."""
    if kernels.dispatch.resolve("checks", bn.layers[0]["k"], backend=bn.backend) == "torch":
        return []
    st, lw, out = bn.state(b), bn.layers[0], []
    ref_ring = {k: lw[k][:b].float() for k in ("k", "v")}
    for blk, name in (
        (st["blocks"][1], "ring_attention decode"),
        (st["blocks"][0], "ring_attention prefill"),
    ):
        q = torch.randn(b, blk["pos"].shape[1], bn.H, bn.hd, device=bn.dev).to(bn.dt)
        args = (st["ring_pos"][:b], blk["pos"])
        got = kernels.ring_attention(
            q, lw["k"][:b], lw["v"][:b], *args, n_sinks=bn.S, window=bn.window, backend=bn.backend
        )
        want = kernels.reference.ring_attention_ref(
            q.float(), ref_ring["k"], ref_ring["v"], *args, bn.S, bn.window
        )
        out.append({"op": name, "B": b, "rel_err": rel_err(got, want)})
    ws = [lw[k] for k in ("wg", "wu", "wd")]
    for n in (b, b * bn.P):
        x = torch.randn(n, bn.d, device=bn.dev).to(bn.dt)
        top, idx = torch.topk(torch.randn(n, bn.E, device=bn.dev), bn.k, -1)
        w = torch.softmax(top, -1)
        want = kernels.reference.moe_ref(x.float(), *(t.float() for t in ws), w, idx)
        for fn in (kernels.moe_decode, kernels.moe_grouped):
            if fn is kernels.moe_decode and n > b:
                continue
            out.append(
                {"op": fn.__name__, "N": n, "rel_err": rel_err(fn(x, *ws, w, idx, backend=bn.backend), want)}
            )
    for kind in ("uniform", "normal"):
        got = kernels.sampling_noise(st["seed"], st["chunk"], 1, 1280, kind=kind, backend=bn.backend)
        want = kernels.reference.noise_ref(st["seed"].cpu(), st["chunk"].cpu(), 1, 1280, kind)
        out.append(
            {
                "op": f"sampling_noise {kind}",
                "B": b,
                "rel_err": rel_err(got.cpu(), want),
                "bit_identical": bool(torch.equal(got.cpu(), want)),
            }
        )
    return out


def guarded(notes: list[str], what: str, fn: Callable[[], Any]) -> Any:
    """Run one stage; on an error note it and go on (a scarce GPU run should not lose the rest)."""
    try:
        return fn()
    except Exception as e:
        notes.append(f"{what} failed: {type(e).__name__}: {e}"[:800])
        return None


# ---- ticks --------------------------------------------------------------------------------------------
def tick_row(bn: Bench, b: int, st: dict[str, Any], iters: int, warmup: int) -> dict[str, Any]:
    dev = bn.dev
    eager = time_fn(lambda: bn.tick(st), iters, warmup, dev)
    row: dict[str, Any] = {
        "B": b,
        "eager_p50_ms": statistics.median(eager),
        "eager_p99_ms": pct(eager, 0.99),
        "graph_p50_ms": None,
        "graph_p99_ms": None,
        "graph_error": None,
        "launches_per_tick": count_launches(lambda: bn.tick(st), dev),
        "bytes": bn.tick_bytes(b),
    }
    if dev.type == "cuda":
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                bn.tick(st)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                bn.tick(st)
            gt = time_fn(graph.replay, iters, warmup, dev)
            row["graph_p50_ms"], row["graph_p99_ms"] = statistics.median(gt), pct(gt, 0.99)
            del graph
        except Exception as e:  # report, don't lose the rest of a scarce GPU run
            row["graph_error"] = f"{type(e).__name__}: {e}"[:500]
    else:
        row["graph_error"] = "CUDA graphs need a GPU"
    bound_ms = row["bytes"] / (HBM_GBPS * 1e9) * 1e3
    row["bound_ms"] = bound_ms
    row["pct_hbm_eager"] = 100 * bound_ms / row["eager_p50_ms"]
    row["pct_hbm_graph"] = None if row["graph_p50_ms"] is None else 100 * bound_ms / row["graph_p50_ms"]
    row["design_bound_GB"] = DESIGN_BOUND_GB.get(b)
    return row


def print_tables(report: dict[str, Any]) -> None:
    m = report["meta"]
    print(f"\nkernels on {m['device_name']} ({m['dtype']}, backend {m['backend']}, preset {m['preset']})")
    print(f"{'kernel':<24}{'B':>5}{'N':>7}{'time us':>11}{'MB':>10}{'GB/s':>10}{'% HBM':>8}")
    for r in report["kernels"]:
        print(
            f"{r['kernel']:<24}{r['B']:>5}{r['N']:>7}{r['time_us']:>11.1f}{r['bytes'] / 1e6:>10.2f}{r['GBps']:>10.1f}{r['pct_hbm']:>8.1f}"
        )
    print("\ntick (noise + prefill + decode forwards, all layers)")
    print(
        f"{'B':>5}{'eager p50':>11}{'p99':>9}{'graph p50':>11}{'p99':>9}{'GB':>8}{'bound ms':>10}{'%HBM e':>8}{'%HBM g':>8}{'launches':>10}"
    )

    def f(v: float | None, w: int, p: int = 2) -> str:
        return f"{'-':>{w}}" if v is None else f"{v:>{w}.{p}f}"

    for r in report["ticks"]:
        print(
            f"{r['B']:>5}{f(r['eager_p50_ms'], 11)}{f(r['eager_p99_ms'], 9)}{f(r['graph_p50_ms'], 11)}"
            f"{f(r['graph_p99_ms'], 9)}{r['bytes'] / 1e9:>8.2f}{r['bound_ms']:>10.3f}{f(r['pct_hbm_eager'], 8, 1)}"
            f"{f(r['pct_hbm_graph'], 8, 1)}{r['launches_per_tick'] if r['launches_per_tick'] is not None else '-':>10}"
        )
        if r["graph_error"]:
            print(f"      graph: {r['graph_error']}")
    if report.get("checks"):
        print("\naccuracy vs the fp32 reference (relative L2 error)")
        for c in report["checks"]:
            size = f"B={c['B']}" if "B" in c else f"N={c['N']}"
            print(
                f"  {c['op']:<26}{size:>8}  {c['rel_err']:.2e}"
                + ("  bit-identical" if c.get("bit_identical") else "")
            )
    for note in report["notes"]:
        print("note:", note)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench_gpu.json"),
                    help="where to write the JSON report (default bench_gpu.json)")  # fmt: skip
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, few iterations, any device (tests)")
    ap.add_argument("--preset", default="gpu-moe", help="model preset whose shapes to use (default gpu-moe)")
    ap.add_argument(
        "--batches", default=None, help="comma-separated batch sizes (default 1,8,32,128; smoke 1,2)"
    )
    ap.add_argument(
        "--iters", type=int, default=None, help="timed iterations per measurement (default 30; smoke 2)"
    )
    ap.add_argument(
        "--backend", default="auto", choices=list(kernels.BACKENDS), help="kernels backend (default auto)"
    )
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument(
        "--budget-s", type=float, default=200.0, help="skip the remaining batch sizes after this long"
    )
    args = ap.parse_args(argv)

    if not (args.smoke or args.device or torch.cuda.is_available()):  # `make bench` on a CPU machine
        print("bench_gpu: no CUDA GPU here; it measures GPU kernels (run it on a GPU machine, or with "
              "--smoke to try the script on this CPU)")  # fmt: skip
        return 0
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = smoke_config() if args.smoke else preset(args.preset)
    batches = [int(v) for v in (args.batches or ("1,2" if args.smoke else "1,8,32,128")).split(",")]
    iters = args.iters or (2 if args.smoke else 30)
    warmup = 1 if args.smoke else 3
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    notes: list[str] = []
    if dev.type != "cuda":
        notes.append("no GPU: times are CPU times, not GPU results; % HBM is against the H200 bound anyway")
    bn = Bench(cfg, max(batches), dev, dtype, args.backend)
    chosen = kernels.dispatch.resolve("bench", bn.layers[0]["k"], backend=args.backend)
    try:
        import triton

        triton_version: str | None = triton.__version__
    except Exception:
        triton_version = None
    report: dict[str, Any] = {
        "meta": {
            "preset": "smoke" if args.smoke else args.preset,
            "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev)
            if dev.type == "cuda"
            else platform.processor() or "cpu",
            "dtype": str(dtype).replace("torch.", ""),
            "backend": chosen,
            "backend_requested": args.backend,
            "torch": torch.__version__,
            "triton": triton_version,
            "smoke": args.smoke,
            "batches": batches,
            "iters": iters,
            "hbm_GBps": HBM_GBPS,
            "shapes": bn.shapes(),
        },
        "kernels": [],
        "ticks": [],
        "notes": notes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every stage: a run cut short still leaves what it measured
        report["meta"]["wall_s"] = time.perf_counter() - t0
        args.out.write_text(json.dumps(report, indent=1))

    report["checks"] = guarded(notes, "checks", lambda: accuracy_checks(bn, min(8, max(batches)))) or []
    save()
    for b in batches:
        if time.perf_counter() - t0 > args.budget_s:
            notes.append(f"budget of {args.budget_s:.0f} s spent: skipped B={b}")
            continue
        st = bn.state(b)
        report["kernels"].extend(
            guarded(notes, f"kernels B={b}", lambda st=st, b=b: kernel_rows(bn, b, st, iters, warmup)) or []
        )
        save()
        row = guarded(notes, f"tick B={b}", lambda st=st, b=b: tick_row(bn, b, st, iters, warmup))
        if row is not None:
            report["ticks"].append(row)
        save()
        del st
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    save()
    print_tables(report)
    print(f"\nwrote {args.out} in {report['meta']['wall_s']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
