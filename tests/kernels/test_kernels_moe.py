"""Top-k MoE: gather+GEMV and grouped GEMM kernels against the reference, the reference against the
model's MoE, and the expert-sorted block table's invariants."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.reference import moe_ref


def weights(e: int, f: int, d: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(e, f, d, generator=g) * d**-0.5).to(device) for _ in range(3)]


def routing(n: int, k: int, experts: list[int], device: torch.device, ties: bool = False, seed: int = 0):
    """top-k ids drawn from ``experts`` only (the others are unused), distinct per token."""
    g = torch.Generator().manual_seed(seed)
    choice = torch.stack([torch.randperm(len(experts), generator=g)[:k] for _ in range(n)])
    idx = torch.tensor(experts)[choice]
    w = torch.full((n, k), 1.0 / k) if ties else torch.softmax(torch.randn(n, k, generator=g), -1)
    return w.to(device), idx.to(device)


CASES = [
    # (n, k, experts used of E=6, ties)
    (1, 2, [0, 1, 2, 3, 4, 5], False),
    (5, 2, [1, 4], True),  # only two experts used, equal routing weights
    (7, 3, [0, 2, 3, 5], False),
    (3, 1, [5], False),
]


@pytest.mark.parametrize(("n", "k", "experts", "ties"), CASES)
@pytest.mark.parametrize("f_splits", [1, 2])
def test_moe_decode_matches_reference(need_triton, device, n, k, experts, ties, f_splits):
    from kernels.triton_moe_decode import moe_decode_triton

    wg, wu, wd = weights(6, 40, 24, device)  # f = 40, d = 24: tiles with masked tails
    w, idx = routing(n, k, experts, device, ties)
    x = torch.randn(n, 24, device=device)
    ref = moe_ref(x, wg, wu, wd, w, idx)
    out = moe_decode_triton(x, wg, wu, wd, w, idx, torch.empty_like(x), f_splits=f_splits)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(("n", "k", "experts", "ties"), [*CASES, (40, 2, [0, 3, 4], False)])
def test_moe_grouped_matches_reference(need_triton, device, n, k, experts, ties):
    wg, wu, wd = weights(6, 40, 24, device, seed=1)
    w, idx = routing(n, k, experts, device, ties, seed=1)
    x = torch.randn(n, 24, device=device)
    ref = moe_ref(x, wg, wu, wd, w, idx)
    out = kernels.moe_grouped(x, wg, wu, wd, w, idx, backend="triton")
    assert out.shape == (n, 24)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_moe_picks_path_by_tokens(need_triton, device, monkeypatch):
    import kernels as K

    calls = []
    monkeypatch.setattr(K, "moe_decode", lambda *a, **kw: calls.append("decode"))
    monkeypatch.setattr(K, "moe_grouped", lambda *a, **kw: calls.append("grouped"))
    wg, wu, wd = weights(8, 16, 16, device)
    for n in (1, 4, 5):
        w, idx = routing(n, 2, list(range(8)), device)
        K.moe(torch.zeros(n, 16, device=device), wg, wu, wd, w, idx)
    assert calls == ["decode", "decode", "grouped"]  # E // k = 4 tokens


def test_align_by_expert_invariants(need_triton):
    from kernels.triton_moe_grouped import align_by_expert

    idx = torch.tensor([[3, 0], [3, 5], [0, 3], [3, 1]])  # experts 2 and 4 empty
    bm = 16
    slots, bexp = align_by_expert(idx, 6, bm)
    m = idx.numel()
    real = slots[slots < m]
    assert sorted(real.tolist()) == list(range(m))  # every slot exactly once
    flat = idx.reshape(-1)
    for b, e in enumerate(bexp.tolist()):
        blk = slots[b * bm : (b + 1) * bm]
        blk = blk[blk < m]
        if e < 0:
            assert blk.numel() == 0
        else:
            assert blk.numel() > 0 and bool((flat[blk.long()] == e).all())
    assert sorted(e for e in bexp.tolist() if e >= 0) == [0, 1, 3, 5]


def test_reference_equals_model_moe():
    """The reference is the function the model's MoE computes (its training dispatch path)."""
    from microturn.model.config import preset
    from microturn.model.moe import MoE

    torch.manual_seed(0)
    moe = MoE(preset("tiny-moe"))
    x = torch.randn(9, moe.d)
    with torch.no_grad():
        w, idx, _ = moe.route(x)
        want = moe.dispatch(x, w, idx)
        got = moe_ref(x, moe.w_gate, moe.w_up, moe.w_down, w, idx)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_shape_errors(device):
    wg, wu, wd = weights(4, 8, 16, device)
    w, idx = routing(2, 2, [0, 1], device)
    with pytest.raises(ValueError, match="weights must all be"):
        kernels.moe_decode(torch.zeros(2, 12, device=device), wg, wu, wd, w, idx)
    with pytest.raises(ValueError, match="topk_w"):
        kernels.moe_grouped(torch.zeros(3, 16, device=device), wg, wu, wd, w, idx)
