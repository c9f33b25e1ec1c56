"""hMLP video patch embedding: patches are embedded independently of each other."""

from __future__ import annotations

import torch

from microturn.model import preset
from microturn.model.hmlp import HMLP

CFG = preset("test")


def frames(seed: int, n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 80, 80, 3), generator=g, dtype=torch.uint8)


def test_shape():
    h = HMLP(CFG)
    assert h(frames(0)).shape == (2, 4, CFG.d_model)


def test_changing_one_patch_changes_only_its_token():
    h = HMLP(CFG).eval()
    f = frames(1)
    base = h(f)
    g = f.clone()
    g[:, 40:, :40] = 255 - g[:, 40:, :40]  # patch (row 1, col 0) = token 2
    changed = h(g)
    for t in range(4):
        same = torch.allclose(base[:, t], changed[:, t], atol=1e-6)
        assert same == (t != 2), t


def test_tokens_depend_only_on_patch_content():
    """Swapping two patches swaps their tokens (no positional mixing inside the hMLP)."""
    h = HMLP(CFG).eval()
    f = frames(2)
    g = f.clone()
    g[:, :40, :40], g[:, 40:, 40:] = f[:, 40:, 40:], f[:, :40, :40]
    a, b = h(f), h(g)
    assert torch.allclose(a[:, 0], b[:, 3], atol=1e-6) and torch.allclose(a[:, 3], b[:, 0], atol=1e-6)
    assert torch.allclose(a[:, 1], b[:, 1], atol=1e-6)


def test_step_equals_forward():
    """The engine's allocation-free step (workspace for 3 frames, run on 2) == forward."""
    torch.manual_seed(2)
    h = HMLP(CFG).eval()
    f = frames(3)
    ws = h.workspace(3)
    out = torch.empty(2, 4, CFG.d_model)
    with torch.no_grad():
        h.step_(f, ws, out)
        assert torch.allclose(out, h(f), atol=1e-5)
