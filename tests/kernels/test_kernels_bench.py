"""benchmarks/bench_gpu.py: the smoke run writes a complete report, and its tick computes the same with
the Triton kernels (interpreter) as with the references."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"


def test_smoke_run_writes_report(tmp_path):
    out = tmp_path / "bench.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--backend", "torch", "--out", str(out)],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["meta"]["smoke"] is True and rep["meta"]["batches"] == [1, 2]
    assert {"device", "dtype", "backend", "hbm_GBps", "shapes"} <= set(rep["meta"])
    assert rep["checks"] == [] and rep["notes"]  # the reference backend is not checked against itself
    kinds = {r["kernel"] for r in rep["kernels"]}
    assert kinds == {
        "ring_attention decode",
        "ring_attention prefill",
        "moe_decode",
        "moe_grouped",
        "sampling_noise",
    }
    for r in rep["kernels"]:
        assert r["time_us"] > 0 and r["bytes"] > 0 and r["GBps"] > 0 and r["pct_hbm"] >= 0
    assert [t["B"] for t in rep["ticks"]] == [1, 2]
    for t in rep["ticks"]:
        for key in (
            "eager_p50_ms",
            "eager_p99_ms",
            "graph_p50_ms",
            "graph_p99_ms",
            "launches_per_tick",
            "bytes",
            "bound_ms",
            "pct_hbm_eager",
        ):
            assert key in t
        assert t["eager_p99_ms"] >= t["eager_p50_ms"] > 0 and t["bytes"] > 0
    assert "tick" in res.stdout and "% HBM" in res.stdout


def test_help_explains():
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert res.returncode == 0 and "--smoke" in res.stdout and "CUDA graph" in res.stdout


def test_tick_forward_same_on_both_backends(need_triton, device):
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    outs = []
    for backend in ("torch", "triton"):
        bn = mod.Bench(mod.smoke_config(), 2, device, torch.float32, backend)
        st = bn.state(2)
        outs.append([bn.forward(st, blk) for blk in st["blocks"][:2]])  # prefill + first decode forward
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_kernels_compile_for_sm90(need_triton):
    """Every kernel variant builds a cubin for the H200's sm_90 (no GPU needed; see compile_check.py)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    res = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "kernels" / "compile_check.py")],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    assert "0 failed" in res.stdout
