"""The flow head's allocation-free sampler integrates the same velocity field as ``velocity``."""

from __future__ import annotations

import copy

import torch

from microturn.model import preset
from microturn.model.flow import FlowHead

CFG = preset("test", flow_steps=3)


def test_sample_step_equals_euler_over_velocity():
    torch.manual_seed(0)
    fl = FlowHead(CFG).eval()
    cond, noise = torch.randn(5, CFG.d_model), torch.randn(5, CFG.mel_dim)
    with torch.no_grad():
        ref = noise.clone()
        for i in range(CFG.flow_steps):
            t = torch.full((5,), i / CFG.flow_steps)
            ref = ref + fl.velocity(ref, cond, t) / CFG.flow_steps
        x = noise.clone()
        fl.sample_(cond, x, fl.workspace(8))
    assert torch.allclose(x, ref, atol=1e-5)


def test_bf16_sampler_keeps_the_state_in_fp32_and_stays_close():
    """A bf16 copy of the head with a bf16 workspace (the engine's ``precision: bf16``) samples from
    fp32 cond/noise into fp32 state, close to the fp32 sampler."""
    torch.manual_seed(1)
    fl = FlowHead(CFG).eval()
    cond, noise = torch.randn(5, CFG.d_model), torch.randn(5, CFG.mel_dim)
    with torch.no_grad():
        ref = noise.clone()
        fl.sample_(cond, ref, fl.workspace(8))
        low = copy.deepcopy(fl).to(torch.bfloat16)
        x = noise.clone()
        low.sample_(cond, x, fl.workspace(8, dtype=torch.bfloat16))
    assert x.dtype == torch.float32
    assert (x - ref).abs().max() < 0.05 * ref.abs().max()
