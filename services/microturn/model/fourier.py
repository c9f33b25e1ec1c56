"""Real DFT of one length into preallocated buffers, for the featuriser and the vocoder.

Spectra are float tensors ``[N, 2 * n_bins]`` holding (re, im) interleaved, i.e. the memory of a
complex64 ``[N, n_bins]``. On the CPU the transform is numpy's pocketfft with ``out=``: ``torch.fft``
accepts ``out=`` but still allocates a full-size temporary per call (measured with the profiler), which
would break the engine's allocation-free step, while a dense DFT matrix costs ~50x the FLOPs. On other
devices it is a product with the DFT matrix (fixed shapes, no allocation, cheap there).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn


class RealDFT(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.n, self.n_bins = n, n // 2 + 1
        self.use_fft = True  # False: the DFT-matrix product on every device (the reference in tests)
        t = torch.arange(n, dtype=torch.float64)
        k = torch.arange(self.n_bins, dtype=torch.float64)
        ang = 2 * math.pi * t[:, None] * k[None] / n  # [n, nb]
        fwd = torch.stack([torch.cos(ang), -torch.sin(ang)], -1).reshape(n, 2 * self.n_bins)
        # inverse of a Hermitian spectrum: DC and Nyquist once, the other bins twice, over n
        wk = torch.full((self.n_bins,), 2.0, dtype=torch.float64)
        wk[0] = 1.0
        if n % 2 == 0:
            wk[-1] = 1.0
        inv = torch.stack([torch.cos(ang).T * wk[:, None], -torch.sin(ang).T * wk[:, None]], 1) / n
        self.register_buffer("fwd", fwd.float(), persistent=False)  # [n, 2nb]
        self.register_buffer("inv", inv.reshape(2 * self.n_bins, n).float(), persistent=False)  # [2nb, n]

    def rfft_(self, x: Tensor, spec: Tensor) -> Tensor:
        """x [N, n] float32 -> spec [N, 2nb] (re, im interleaved)."""
        if self.use_fft and x.device.type == "cpu" and not x.requires_grad:
            np.fft.rfft(x.detach().numpy(), axis=-1, out=spec.view(torch.complex64).numpy())
        else:
            torch.mm(x, self.fwd, out=spec)
        return spec

    def irfft_(self, spec: Tensor, out: Tensor) -> Tensor:
        """spec [N, 2nb] (interleaved; imaginary parts of DC and Nyquist ignored) -> out [N, n]."""
        if self.use_fft and spec.device.type == "cpu" and not spec.requires_grad:
            np.fft.irfft(spec.detach().view(torch.complex64).numpy(), n=self.n, axis=-1, out=out.numpy())
        else:
            torch.mm(spec, self.inv, out=out)
        return out
