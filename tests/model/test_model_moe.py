"""MoE: gather + GEMV (decode) and dense-all (prefill) steps equal the training dispatch path; the dense
SwiGLU step equals its forward."""

from __future__ import annotations

import pytest
import torch

from microturn.model import preset
from microturn.model.moe import MoE, SwiGLU

CFG = preset("test", n_experts=6, top_k=2, d_ff_expert=24)


@pytest.mark.parametrize("n_tokens", [1, 7, 40])
def test_paths_agree(n_tokens):
    torch.manual_seed(n_tokens)
    moe = MoE(CFG)
    x = torch.randn(n_tokens, CFG.d_model)
    w, idx, _ = moe.route(x)
    ref = moe.dispatch(x, w, idx)
    ws = moe.workspace(n_tokens, n_tokens)
    with torch.no_grad():
        w_, idx_ = moe.route_(x, ws)
        assert torch.equal(idx_, idx) and torch.allclose(w_, w, atol=1e-6)
        gather = moe.gather_gemv_(x, torch.empty_like(x), ws).clone()
        dense = moe.dense_all_(x, torch.empty_like(x), ws)
    assert torch.allclose(gather, ref, atol=1e-5)
    assert torch.allclose(dense, ref, atol=1e-5)
    assert torch.allclose(moe(x)[0], ref, atol=1e-6)


def test_swiglu_step_equals_forward():
    torch.manual_seed(5)
    ffn = SwiGLU(CFG.d_model, CFG.d_ff)
    x = torch.randn(9, CFG.d_model)
    a, b = torch.empty(9, CFG.d_ff), torch.empty(9, CFG.d_ff)
    with torch.no_grad():
        got = ffn.step_(x, torch.empty_like(x), a, b)
        assert torch.allclose(got, ffn(x), atol=1e-6)


def test_dispatch_equals_explicit_per_token_sum():
    torch.manual_seed(3)
    moe = MoE(CFG)
    x = torch.randn(5, CFG.d_model)
    w, idx, _ = moe.route(x)
    y = moe.dispatch(x, w, idx)
    for t in range(5):
        want = torch.zeros(CFG.d_model)
        for j in range(CFG.top_k):
            e = int(idx[t, j])
            h = torch.nn.functional.silu(moe.w_gate[e] @ x[t]) * (moe.w_up[e] @ x[t])
            want += w[t, j] * (h @ moe.w_down[e])
        assert torch.allclose(y[t], want, atol=1e-5)


def test_load_balance_loss_and_gradients():
    torch.manual_seed(4)
    moe = MoE(CFG)
    x = torch.randn(64, CFG.d_model, requires_grad=True)
    y, aux = moe(x)
    assert torch.isfinite(aux) and aux.item() > 0
    (y.square().mean() + aux).backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0
    assert moe.w_down.grad is not None and moe.w_down.grad.abs().sum() > 0
    # a router that sends everything to one expert is penalised more than a balanced one
    idx_bad = torch.zeros(64, 2, dtype=torch.long)
    idx_bad[:, 1] = 1
    probs_bad = torch.zeros(64, CFG.n_experts)
    probs_bad[:, :2] = 0.5
    idx_good = torch.arange(128).view(64, 2) % CFG.n_experts
    probs_good = torch.full((64, CFG.n_experts), 1 / CFG.n_experts)
    assert moe.load_balance_loss(idx_bad, probs_bad) > moe.load_balance_loss(idx_good, probs_good)
