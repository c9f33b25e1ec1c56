"""hMLP patch embedding for video: 40x40 RGB patches -> one token each.

Three per-patch MLP stages (10x10 pixel cells -> 2x2 merge -> 2x2 merge) with a LayerNorm at every spatial
position. Nothing mixes patches, so a patch's token depends only on its own pixels (tested), which is what
lets the model see a frame as independent tokens without a vision encoder. ``step_`` is the engine's
allocation-free ``forward`` into an ``HMLPWorkspace``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from microturn.model.config import ModelConfig


def cells_view(frames: Tensor, patch: int, cell: int) -> Tensor:
    """uint8/float [N, H, W, 3] -> view [N, py, px, 2, 2, 2, 2, cell, cell, 3] (stage-3 group, stage-2
    group, pixel): copying it contiguously lays out every 10x10x3 cell as one row of the first stage."""
    n, h, w, c = frames.shape
    py, px = h // patch, w // patch
    v = frames.view(n, py, 2, 2, cell, px, 2, 2, cell, c)
    return v.permute(0, 1, 5, 2, 6, 3, 7, 4, 8, 9)


@dataclass
class HMLPWorkspace:
    """Buffers for up to ``frames`` frames (flat, cut to each call's frame count)."""

    frames: int
    cells: Tensor  # [frames * patches * 16 * cell * cell * 3]
    h1: Tensor  # [frames * patches * 16 * c1]
    s1: Tensor
    h2: Tensor  # [frames * patches * 4 * c2]
    s2: Tensor
    stat: Tensor  # [frames * patches * 16]


def layer_norm_(
    x: Tensor, ln: nn.LayerNorm, inv_c: Tensor, eps: Tensor, scratch: Tensor, stat: Tensor
) -> Tensor:
    """``ln(x)`` in place over the last dim; ``inv_c`` = 1 / that dim and ``eps`` are 0-dim tensors (a
    Python scalar in an in-place op makes a temporary tensor)."""
    torch.sum(x, -1, keepdim=True, out=stat)
    stat.mul_(inv_c)
    x.sub_(stat)
    torch.mul(x, x, out=scratch)
    torch.sum(scratch, -1, keepdim=True, out=stat)
    stat.mul_(inv_c).add_(eps).rsqrt_()
    return x.mul_(stat).mul_(ln.weight).add_(ln.bias)


class HMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c1, c2 = cfg.hmlp_dims
        self.patch, self.cell = cfg.patch, cfg.hmlp_cell
        self.n_patches = cfg.n_video_tokens
        self.fc1 = nn.Linear(cfg.hmlp_cell * cfg.hmlp_cell * 3, c1)
        self.ln1 = nn.LayerNorm(c1, eps=1e-5)
        self.fc2 = nn.Linear(4 * c1, c2)
        self.ln2 = nn.LayerNorm(c2, eps=1e-5)
        self.fc3 = nn.Linear(4 * c2, cfg.d_model)
        self.register_buffer("c_scale", torch.tensor(4.0 / 255.0), persistent=False)
        self.register_buffer("c_shift", torch.tensor(-2.0), persistent=False)
        self.register_buffer("c_inv1", torch.tensor(1.0 / c1), persistent=False)
        self.register_buffer("c_inv2", torch.tensor(1.0 / c2), persistent=False)
        self.register_buffer("c_ln_eps", torch.tensor(1e-5), persistent=False)

    def forward(self, frames: Tensor) -> Tensor:
        """frames uint8 [N, H, W, 3] -> patch tokens [N, n_patches, d]."""
        n = frames.shape[0]
        x = cells_view(frames, self.patch, self.cell).float().reshape(n * self.n_patches * 16, -1)
        x = x * self.c_scale + self.c_shift
        x = F.silu(self.ln1(self.fc1(x))).reshape(n * self.n_patches * 4, -1)
        x = F.silu(self.ln2(self.fc2(x))).reshape(n * self.n_patches, -1)
        return self.fc3(x).view(n, self.n_patches, -1)

    def workspace(self, frames: int, device: torch.device | str = "cpu") -> HMLPWorkspace:
        n1, n2 = frames * self.n_patches * 16, frames * self.n_patches * 4
        c1, c2 = self.fc1.out_features, self.fc2.out_features
        z = lambda n: torch.zeros(n, device=device)  # noqa: E731
        return HMLPWorkspace(
            frames=frames,
            cells=z(n1 * self.fc1.in_features),
            h1=z(n1 * c1),
            s1=z(n1 * c1),
            h2=z(n2 * c2),
            s2=z(n2 * c2),
            stat=z(n1),
        )

    def step_(self, frames: Tensor, ws: HMLPWorkspace, out: Tensor) -> Tensor:
        """Allocation-free ``forward``: frames uint8 [N, H, W, 3] -> out [N, n_patches, d]."""
        n = frames.shape[0]
        n1, n2, n3 = n * self.n_patches * 16, n * self.n_patches * 4, n * self.n_patches
        c1, c2 = self.fc1.out_features, self.fc2.out_features
        cv = cells_view(frames, self.patch, self.cell)
        cells = ws.cells[: cv.numel()].view(cv.shape)
        cells.copy_(cv)
        cells.mul_(self.c_scale).add_(self.c_shift)
        h1, h2 = ws.h1[: n1 * c1].view(n1, c1), ws.h2[: n2 * c2].view(n2, c2)
        torch.addmm(self.fc1.bias, cells.view(n1, -1), self.fc1.weight.t(), out=h1)
        layer_norm_(
            h1, self.ln1, self.c_inv1, self.c_ln_eps, ws.s1[: n1 * c1].view(n1, c1), ws.stat[:n1].view(n1, 1)
        )
        F.silu(h1, inplace=True)
        torch.addmm(self.fc2.bias, h1.view(n2, 4 * c1), self.fc2.weight.t(), out=h2)
        layer_norm_(
            h2, self.ln2, self.c_inv2, self.c_ln_eps, ws.s2[: n2 * c2].view(n2, c2), ws.stat[:n2].view(n2, 1)
        )
        F.silu(h2, inplace=True)
        torch.addmm(self.fc3.bias, h2.view(n3, 4 * c2), self.fc3.weight.t(), out=out.view(n3, -1))
        return out
