"""GPU-only checks: bf16 accuracy at the gpu-moe shapes, dispatch on CUDA, and capture of a decode
step (noise + ring attention + MoE) in one CUDA graph that replays with new inputs."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import dispatch
from kernels.reference import moe_ref, noise_ref, ring_attention_ref

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
    ),
]

S, WINDOW, RING, H, NKV, HD = 4, 1000, 1020, 16, 4, 64  # gpu-moe: ctx 1024
E, F, D, K = 16, 1024, 1024, 2


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def ring_inputs(b: int, tq: int, lens: list[int], dtype=torch.bfloat16, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    C = S + RING
    k = torch.randn(b, NKV, C, HD, device="cuda", generator=g).to(dtype)
    v = torch.randn(b, NKV, C, HD, device="cuda", generator=g).to(dtype)
    rp = torch.full((b, C), -(2**40), dtype=torch.long, device="cuda")
    qpos = torch.empty(b, tq, dtype=torch.long, device="cuda")
    for i, n in enumerate(lens):
        p = torch.arange(max(S, S + n - RING), S + n, device="cuda")  # what the ring still holds
        rp[i, :S] = torch.arange(S, device="cuda")
        rp[i, S + (p - S) % RING] = p
        qpos[i] = torch.arange(S + n - tq, S + n, device="cuda")
    q = torch.randn(b, tq, H, HD, device="cuda", generator=g).to(dtype)
    return q, k, v, rp, qpos


def test_auto_on_cuda_is_triton(need_triton):
    assert dispatch.resolve("op", torch.zeros(1, device="cuda"), backend="auto") == "triton"


@pytest.mark.parametrize("tq", [1, 14])
def test_ring_attention_bf16(need_triton, tq):
    lens = [tq + 3, 700, 2500, 5000]  # empty slots, full, wrapped
    q, k, v, rp, qpos = ring_inputs(4, tq, lens)
    ref = ring_attention_ref(q.float(), k.float(), v.float(), rp, qpos, S, WINDOW)
    out = kernels.ring_attention(q, k, v, rp, qpos, n_sinks=S, window=WINDOW, backend="triton")
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) < 2e-2


@pytest.mark.parametrize("n", [1, 8, 64, 448])
def test_moe_bf16(need_triton, n):
    g = torch.Generator(device="cuda").manual_seed(n)
    ws = [(torch.randn(E, F, D, device="cuda", generator=g) * D**-0.5).to(torch.bfloat16) for _ in range(3)]
    x = torch.randn(n, D, device="cuda", generator=g).to(torch.bfloat16)
    logits = torch.randn(n, E, device="cuda", generator=g)
    top, idx = torch.topk(logits, K, -1)
    w = torch.softmax(top, -1)
    ref = moe_ref(x.float(), *(t.float() for t in ws), w, idx)
    for fn in (kernels.moe_decode, kernels.moe_grouped):
        out = fn(x, *ws, w, idx, backend="triton")
        assert out.dtype == torch.bfloat16
        assert rel_err(out, ref) < 2e-2, fn.__name__


def test_noise_uniform_identical_across_devices(need_triton):
    seed = torch.tensor([1, -3, 2**45 + 7])
    chunk = torch.tensor([0, 9, 2**34])
    cpu = noise_ref(seed, chunk, 3, 1000, "uniform")
    gpu = kernels.sampling_noise(seed.cuda(), chunk.cuda(), 3, 1000, kind="uniform", backend="triton")
    assert torch.equal(gpu.cpu(), cpu)
    z = kernels.sampling_noise(seed.cuda(), chunk.cuda(), 3, 1000, kind="normal", backend="triton")
    torch.testing.assert_close(z.cpu(), noise_ref(seed, chunk, 3, 1000, "normal"), atol=1e-5, rtol=1e-5)


def test_decode_step_in_one_cuda_graph(need_triton):
    b = 8
    q, k, v, rp, qpos = ring_inputs(b, 1, [100 + 300 * i for i in range(b)])
    g = torch.Generator(device="cuda").manual_seed(1)
    ws = [(torch.randn(E, F, D, device="cuda", generator=g) * D**-0.5).to(torch.bfloat16) for _ in range(3)]
    x = torch.randn(b, D, device="cuda", generator=g).to(torch.bfloat16)
    top_w = torch.full((b, K), 0.5, device="cuda")
    top_i = torch.randint(0, E, (b, K), device="cuda", generator=g)
    seed = torch.arange(b, device="cuda") + 100
    chunk = torch.zeros(b, dtype=torch.long, device="cuda")
    att = torch.empty_like(q)
    y1 = torch.empty_like(x)
    y2 = torch.empty_like(x)
    noise = torch.empty(b, 320, device="cuda")

    def step():
        kernels.sampling_noise(seed, chunk, 1, 320, out=noise, backend="triton")
        kernels.ring_attention(q, k, v, rp, qpos, n_sinks=S, window=WINDOW, out=att, backend="triton")
        kernels.moe_decode(x, *ws, top_w, top_i, out=y1, backend="triton")
        kernels.moe_grouped(x, *ws, top_w, top_i, out=y2, backend="triton")

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()  # compile and warm up outside the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    # new inputs written in place, then replay
    q.copy_(torch.randn_like(q, dtype=torch.float32).to(q.dtype))
    qpos.add_(1)
    x.copy_(torch.randn_like(x, dtype=torch.float32).to(x.dtype))
    top_i.copy_((top_i + 3) % E)
    chunk.add_(1)
    graph.replay()
    torch.cuda.synchronize()
    got = [t.clone() for t in (noise, att, y1, y2)]
    step()
    torch.cuda.synchronize()
    for a, want in zip(got, (noise, att, y1, y2), strict=True):
        assert torch.equal(a, want)
    want_noise = noise_ref(seed.cpu(), chunk.cpu(), 1, 320, "normal")
    torch.testing.assert_close(got[0].cpu(), want_noise, atol=1e-5, rtol=1e-5)  # the replay saw the new chunk
