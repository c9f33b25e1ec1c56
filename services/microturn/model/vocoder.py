"""Vocoder: log-mel frames -> 16 kHz PCM, streamed one micro-turn at a time.

``GriffinLim`` needs no weights: mel -> linear magnitude by spreading each channel over its bins, then a few
Griffin-Lim iterations to find phases. It streams causally: a chunk's frames only cover the chunk and the
previous ``win - hop`` samples (already emitted, kept as the session's ``tail`` and held fixed), so chunk k
is final as soon as its mel is known. Everything is matrix products and in-place ops into a workspace, so
the engine runs it allocation-free; ``vocode`` is the plain offline API over the same code.

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


class Vocoder(Protocol):
    tail_len: int

    def workspace(self, rows: int, device: torch.device | str = "cpu") -> object: ...

    def chunk_(self, ws: object, n: int, logmel: Tensor, tail: Tensor, pcm_out: Tensor) -> None:
        """logmel [n, frames, mels] + tail [n, tail_len] (updated in place) -> pcm_out [n, samples] float."""
        ...


@dataclass
class GLWorkspace:
    mag: Tensor  # [R*F, nb]
    spec: Tensor  # [R*F, 2nb]
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
        k = torch.arange(self.nb, dtype=torch.float64)
        ang = 2 * math.pi * k[:, None] * n[None] / win
        # analysis DFT with the same scaling as the featuriser (|X| = amplitude of a sine), at this window
        scale = 2.0 / window.sum()
        dft = torch.cat([torch.cos(ang).T, -torch.sin(ang).T], dim=1) * window[:, None] * scale
        self.register_buffer("dft", dft.float(), persistent=False)  # [win, 2nb]
        # mel -> linear power at this resolution: each bin interpolates the channels covering it, each
        # channel's power spread over its width in bins (non-negative and well conditioned, unlike a
        # pseudo-inverse, when low channels are narrower than a bin)
        fb = mel_filterbank(win, cfg.n_mels, cfg.sample_rate)  # [nb, n_mels]
        row = fb / fb.sum(1, keepdim=True).clamp(min=1e-9)
        inv = (row / fb.sum(0, keepdim=True).clamp(min=1e-9)).T  # [n_mels, nb]
        self.register_buffer("fb_pinv", inv.float(), persistent=False)
        # inverse real DFT of the analysis scaling (2 / sum(w)), times the synthesis window, divided by the
        # OLA normaliser sum_q w^2 (constant for a periodic Hann at win/hop overlap)
        wk = torch.full((self.nb,), 2.0, dtype=torch.float64)
        wk[0] = 1.0
        if win % 2 == 0:
            wk[-1] = 1.0
        inv_scale = window.sum() / 2.0 / win
        idft = torch.cat([torch.cos(ang) * wk[:, None], -torch.sin(ang) * wk[:, None]], 0) * inv_scale
        ola = (window**2).view(self.q, self.hop).sum(0).mean()
        self.register_buffer("idft", (idft * window[None] / ola).float(), persistent=False)  # [2nb, win]
        gen = torch.Generator().manual_seed(1234)
        phase = torch.rand(self.n_frames, self.nb, generator=gen, dtype=torch.float64) * 2 * math.pi
        self.register_buffer(
            "phase0", torch.cat([torch.cos(phase), torch.sin(phase)], 1).float(), persistent=False
        )
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
        torch.mm(ws.spec[: n * f], self.idft, out=frames.view(n * f, self.win))
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
        spec[:, :nb].mul_(mag)
        spec[:, nb:].mul_(mag)
        ws.sig[:n, : self.tail_len].copy_(tail)
        for _ in range(self.cfg.vocoder_iters):
            self._synthesize(ws, n)
            # analysis with the emitted past held fixed
            fr = ws.sig[:n].unfold(1, self.win, self.hop)
            ws.frames[:n].copy_(fr)
            torch.mm(ws.frames[:n].view(n * f, self.win), self.dft, out=spec)
            torch.mul(spec, spec, out=scr)
            torch.add(scr[:, :nb], scr[:, nb:], out=norm)
            norm.sqrt_().add_(self.c_eps)
            torch.div(mag, norm, out=norm)  # norm := mag / |X|
            spec[:, :nb].mul_(norm)
            spec[:, nb:].mul_(norm)
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
