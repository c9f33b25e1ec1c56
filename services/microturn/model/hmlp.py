"""hMLP patch embedding for video: 40x40 RGB patches -> one token each.

Three per-patch MLP stages (10x10 pixel cells -> 2x2 merge -> 2x2 merge) with a LayerNorm at every spatial
position. Nothing mixes patches, so a patch's token depends only on its own pixels (tested), which is what
lets the model see a frame as independent tokens without a vision encoder.
"""

from __future__ import annotations

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

    def forward(self, frames: Tensor) -> Tensor:
        """frames uint8 [N, H, W, 3] -> patch tokens [N, n_patches, d]."""
        n = frames.shape[0]
        x = cells_view(frames, self.patch, self.cell).float().reshape(n * self.n_patches * 16, -1)
        x = x * self.c_scale + self.c_shift
        x = F.silu(self.ln1(self.fc1(x))).reshape(n * self.n_patches * 4, -1)
        x = F.silu(self.ln2(self.fc2(x))).reshape(n * self.n_patches, -1)
        return self.fc3(x).view(n, self.n_patches, -1)
