"""Vocoder: log-mel frames -> 16 kHz PCM, streamed one micro-turn at a time.

``GriffinLim`` needs no weights: mel -> linear magnitude by spreading each channel over its bins, then a few
Griffin-Lim iterations to find phases. It streams causally: a chunk's frames only cover the chunk and the
previous ``win - hop`` samples (already emitted, kept as the session's ``tail`` and held fixed), so chunk k
is final as soon as its mel is known. Everything is real FFTs (``fourier.RealDFT``), matrix products and
in-place ops into a workspace, so the engine runs it allocation-free; ``vocode`` is the plain offline API
over the same code.

A neural vocoder can replace it by implementing the ``Vocoder`` protocol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from microturn.model.config import ModelConfig
from microturn.model.dmel import mel_filterbank
from microturn.model.fourier import RealDFT


class Vocoder(Protocol):
    tail_len: int

    def workspace(self, rows: int, device: torch.device | str = "cpu") -> object: ...

    def chunk_(self, ws: object, n: int, logmel: Tensor, tail: Tensor, pcm_out: Tensor) -> None:
        """logmel [n, frames, mels] + tail [n, tail_len] (updated in place) -> pcm_out [n, samples] float."""
        ...


@dataclass
class GLWorkspace:
    mag: Tensor  # [R*F, nb]
    spec: Tensor  # [R*F, 2nb] (re, im interleaved)
    scratch: Tensor  # [R*F, 2nb]
    norm: Tensor  # [R*F, nb]
    frames: Tensor  # [R, F, win]
    blocks: Tensor  # [R, F + q - 1, hop]
    sig: Tensor  # [R, tail + F*hop]


class GriffinLim(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        win = cfg.vocoder_win
        self.n_frames, self.hop, self.win = cfg.frames_per_chunk, cfg.hop, win
        self.q = win // cfg.hop  # frames overlapping each sample
        self.tail_len = win - cfg.hop
        self.nb = win // 2 + 1
        n = torch.arange(win, dtype=torch.float64)
        window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / win)
        # analysis with the same scaling as the featuriser (|X| = amplitude of a sine), at this window
        self.register_buffer("analysis_window", (window * 2.0 / window.sum()).float(), persistent=False)
        self.dft = RealDFT(win)
        # mel -> linear power at this resolution: each bin interpolates the channels covering it, each
        # channel's power spread over its width in bins (non-negative and well conditioned, unlike a
        # pseudo-inverse, when low channels are narrower than a bin)
        fb = mel_filterbank(win, cfg.n_mels, cfg.sample_rate)  # [nb, n_mels]
        row = fb / fb.sum(1, keepdim=True).clamp(min=1e-9)
        inv = (row / fb.sum(0, keepdim=True).clamp(min=1e-9)).T  # [n_mels, nb]
        self.register_buffer("fb_pinv", inv.float(), persistent=False)
        # synthesis: the inverse DFT undoes the analysis scaling (times sum(w) / 2), then the synthesis
        # window over the OLA normaliser sum_q w^2 (constant for a periodic Hann at win/hop overlap)
        ola = (window**2).view(self.q, self.hop).sum(0).mean()
        self.register_buffer(
            "synthesis_window", (window * window.sum() / 2.0 / ola).float(), persistent=False
        )
        gen = torch.Generator().manual_seed(1234)
        phase = torch.rand(self.n_frames, self.nb, generator=gen, dtype=torch.float64) * 2 * math.pi
        phase0 = torch.stack([torch.cos(phase), torch.sin(phase)], -1).reshape(self.n_frames, 2 * self.nb)
        self.register_buffer("phase0", phase0.float(), persistent=False)  # interleaved like a spectrum
        self.register_buffer("c_ln10", torch.tensor(math.log(10.0)), persistent=False)
        self.register_buffer("c_eps", torch.tensor(1e-8), persistent=False)

    def workspace(self, rows: int, device: torch.device | str = "cpu") -> GLWorkspace:
        f, nb = self.n_frames, self.nb
        z = lambda *s: torch.zeros(*s, device=device)  # noqa: E731
        return GLWorkspace(
            mag=z(rows * f, nb),
            spec=z(rows * f, 2 * nb),
            scratch=z(rows * f, 2 * nb),
            norm=z(rows * f, nb),
            frames=z(rows, f, self.win),
            blocks=z(rows, f + self.q - 1, self.hop),
            sig=z(rows, self.tail_len + f * self.hop),
        )

    def _synthesize(self, ws: GLWorkspace, n: int) -> None:
        """spec -> overlap-added current-chunk samples in ws.sig[:, tail:]."""
        f = self.n_frames
        frames, blocks = ws.frames[:n], ws.blocks[:n]
        self.dft.irfft_(ws.spec[: n * f], frames.view(n * f, self.win))
        frames.mul_(self.synthesis_window)
        blocks.zero_()
        fq = frames.view(n, f, self.q, self.hop)
        for j in range(self.q):
            blocks[:, j : j + f].add_(fq[:, :, j])
        ws.sig[:n, self.tail_len :].copy_(blocks[:, self.q - 1 :].reshape(n, f * self.hop))

    def chunk_(self, ws: GLWorkspace, n: int, logmel: Tensor, tail: Tensor, pcm_out: Tensor) -> None:
        f, nb = self.n_frames, self.nb
        mag, spec, scr, norm = ws.mag[: n * f], ws.spec[: n * f], ws.scratch[: n * f], ws.norm[: n * f]
        # magnitude from mel: 10^logmel -> spread over bins -> sqrt(power)
        pow_mel = ws.scratch[: n * f, : self.cfg.n_mels]
        torch.mul(logmel.reshape(n * f, -1), self.c_ln10, out=pow_mel)
        pow_mel.exp_()
        torch.mm(pow_mel, self.fb_pinv, out=mag)
        mag.clamp_(min=0.0).sqrt_()
        # initial phases: a fixed pseudo-random table (no per-step randomness: deterministic, batch-invariant)
        sv = spec.view(n, f, 2 * nb)
        sv.copy_(self.phase0.unsqueeze(0).expand(n, f, 2 * nb))
        spec.view(n * f, nb, 2).mul_(mag.unsqueeze(-1))
        ws.sig[:n, : self.tail_len].copy_(tail)
        for _ in range(self.cfg.vocoder_iters):
            self._synthesize(ws, n)
            # analysis with the emitted past held fixed
            fr = ws.sig[:n].unfold(1, self.win, self.hop)
            ws.frames[:n].copy_(fr)
            ws.frames[:n].mul_(self.analysis_window)
            self.dft.rfft_(ws.frames[:n].view(n * f, self.win), spec)
            torch.mul(spec, spec, out=scr)
            torch.add(scr[:, 0::2], scr[:, 1::2], out=norm)
            norm.sqrt_().add_(self.c_eps)
            torch.div(mag, norm, out=norm)  # norm := mag / |X|
            spec.view(n * f, nb, 2).mul_(norm.unsqueeze(-1))
        self._synthesize(ws, n)
        pcm_out.copy_(ws.sig[:n, self.tail_len :])
        pcm_out.clamp_(-1.0, 1.0)
        tail.copy_(pcm_out[:, pcm_out.shape[1] - self.tail_len :])

    @torch.no_grad()
    def vocode(self, logmel: Tensor) -> Tensor:
        """Offline: log-mel [B, n_chunks * frames_per_chunk, n_mels] -> float PCM [B, n_chunks * samples]."""
        b, total, _ = logmel.shape
        f = self.n_frames
        if total % f:
            raise ValueError(f"frames {total} is not a multiple of frames_per_chunk {f}")
        ws = self.workspace(b, logmel.device)
        tail = torch.zeros(b, self.tail_len, device=logmel.device)
        out = torch.zeros(b, total * self.hop, device=logmel.device)
        for c in range(total // f):
            self.chunk_(
                ws,
                b,
                logmel[:, c * f : (c + 1) * f].contiguous(),
                tail,
                out[:, c * f * self.hop : (c + 1) * f * self.hop],
            )
        return out
