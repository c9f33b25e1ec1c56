"""dMel: discretised log-mel audio features, in and out of the model.

16 kHz audio, 12.5 ms hop (200 samples), 50 ms window (800 samples), 80 mel channels, log10 clamped to
[-7, 2] and quantised to 16 levels per channel. Framing is *causal*: frame ``i`` of a chunk ends at the end
of hop ``i``, so a chunk's frames need only the previous ``win - hop`` samples (kept per session by the
engine; zeros before the first chunk). The same code runs allocation-free into preallocated buffers in
the engine (``out=`` everywhere, a real FFT: ``fourier.RealDFT``) and plainly in training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from microturn.model.config import ModelConfig
from microturn.model.fourier import RealDFT


def hz_to_mel(f: Tensor) -> Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def mel_to_hz(m: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> Tensor:
    """HTK triangular filters with peak 1, shape [n_bins, n_mels] (float64)."""
    n_bins = n_fft // 2 + 1
    freqs = torch.linspace(0, sample_rate / 2, n_bins, dtype=torch.float64)
    mels = torch.linspace(
        0.0, float(hz_to_mel(torch.tensor(sample_rate / 2.0))), n_mels + 2, dtype=torch.float64
    )
    edges = mel_to_hz(mels)
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    up = (freqs[:, None] - lo[None]) / (mid - lo)[None]
    down = (hi[None] - freqs[:, None]) / (hi - mid)[None]
    return torch.clamp(torch.minimum(up, down), min=0.0)


@dataclass
class DMelWorkspace:
    """Buffers of the streaming featuriser for up to ``rows`` chunks (flat, cut per call)."""

    sig: Tensor  # [rows * (history + samples)]
    frames: Tensor  # [rows * frames * win]
    spec: Tensor  # [rows * frames * 2 * n_bins]
    power: Tensor  # [rows * frames * n_bins]
    logmel: Tensor  # [rows * frames * n_mels]
    scratch: Tensor  # [rows * frames * n_mels]


class DMel(nn.Module):
    """Featuriser (PCM -> log-mel -> levels) and its inverse (levels -> log-mel)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        win, n_bins = cfg.win, cfg.win // 2 + 1
        self.n_bins = n_bins
        n = torch.arange(win, dtype=torch.float64)
        window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / win)  # periodic Hann
        scale = 2.0 / window.sum()  # a full-scale sine has |X| = amplitude at its bin
        self.register_buffer("window", window.float(), persistent=False)
        self.register_buffer("analysis_window", (window * scale).float(), persistent=False)
        self.dft = RealDFT(win)
        fb = mel_filterbank(win, cfg.n_mels, cfg.sample_rate)
        self.register_buffer("fb", fb.float(), persistent=False)  # [n_bins, n_mels]
        self.register_buffer("c_floor", torch.tensor(10.0**cfg.log_min), persistent=False)
        self.register_buffer(
            "c_step", torch.tensor((cfg.n_levels - 1) / (cfg.log_max - cfg.log_min)), persistent=False
        )
        self.register_buffer(
            "c_inv_step", torch.tensor((cfg.log_max - cfg.log_min) / (cfg.n_levels - 1)), persistent=False
        )
        self.register_buffer("c_log_min", torch.tensor(cfg.log_min), persistent=False)
        self.register_buffer("c_pcm", torch.tensor(1.0 / 32768.0), persistent=False)

    @property
    def history(self) -> int:
        """Samples of the previous chunk a chunk's frames reach back into."""
        return self.cfg.win - self.cfg.hop

    # --- allocation-free pieces (engine) ---------------------------------------------------------
    def logmel_(self, frames: Tensor, spec: Tensor, power: Tensor, out: Tensor) -> Tensor:
        """frames [N, win] (windowed in place: pass a copy) -> log10 mel [N, n_mels], clamped to
        [log_min, log_max]; spec [N, 2 * n_bins], power [N, n_bins] are work buffers."""
        frames.mul_(self.analysis_window)
        self.dft.rfft_(frames, spec)
        spec.mul_(spec)
        torch.add(spec[:, 0::2], spec[:, 1::2], out=power)
        torch.mm(power, self.fb, out=out)
        out.clamp_(min=self.c_floor).log10_().clamp_(max=self.cfg.log_max)
        return out

    def quantize_(self, logmel: Tensor, scratch: Tensor, out: Tensor) -> Tensor:
        """log-mel -> integer levels in [0, n_levels - 1] (round to nearest)."""
        torch.sub(logmel, self.c_log_min, out=scratch)
        scratch.mul_(self.c_step).round_().clamp_(0, self.cfg.n_levels - 1)
        out.copy_(scratch)
        return out

    def dequantize_(self, levels: Tensor, out: Tensor) -> Tensor:
        """levels -> log-mel at the level centres."""
        out.copy_(levels)
        out.mul_(self.c_inv_step).add_(self.c_log_min)
        return out

    def workspace(self, rows: int, device: torch.device | str = "cpu") -> DMelWorkspace:
        cfg = self.cfg
        n = rows * cfg.frames_per_chunk
        z = lambda k: torch.zeros(k, device=device)  # noqa: E731
        return DMelWorkspace(
            sig=z(rows * (self.history + cfg.samples_per_chunk)),
            frames=z(n * cfg.win),
            spec=z(n * 2 * self.n_bins),
            power=z(n * self.n_bins),
            logmel=z(n * cfg.n_mels),
            scratch=z(n * cfg.n_mels),
        )

    def levels_(
        self, pcm: Tensor, history: Tensor, ws: DMelWorkspace, out: Tensor, new_history: Tensor
    ) -> Tensor:
        """Allocation-free ``levels`` of one chunk per row: pcm int16 [R, samples], history [R, history]
        (the samples before the chunk) -> out long [R * frames, n_mels]; new_history [R, history] gets
        the history the next chunk needs (the caller commits it)."""
        cfg = self.cfg
        r, hist, f = pcm.shape[0], self.history, cfg.frames_per_chunk
        sig = ws.sig[: r * (hist + pcm.shape[1])].view(r, -1)
        sig[:, :hist].copy_(history)
        sig[:, hist:].copy_(pcm)
        sig[:, hist:].mul_(self.c_pcm)
        frames = ws.frames[: r * f * cfg.win].view(r, f, cfg.win)
        frames.copy_(sig.unfold(1, cfg.win, cfg.hop))
        n = r * f
        lm = ws.logmel[: n * cfg.n_mels].view(n, -1)
        spec, power = ws.spec[: n * 2 * self.n_bins].view(n, -1), ws.power[: n * self.n_bins].view(n, -1)
        self.logmel_(frames.view(n, cfg.win), spec, power, lm)
        self.quantize_(lm, ws.scratch[: n * cfg.n_mels].view(n, -1), out)
        new_history.copy_(sig[:, sig.shape[1] - hist :])
        return out

    # --- plain API (training, tests) -------------------------------------------------------------
    def frames(self, pcm: Tensor, history: Tensor | None = None) -> Tensor:
        """pcm [B, n*hop] float in [-1, 1] (or int16) -> causal frames [B, n, win]."""
        if pcm.dtype == torch.int16:
            pcm = pcm.float() * self.c_pcm
        if history is None:
            history = pcm.new_zeros(pcm.shape[0], self.history)
        x = torch.cat([history, pcm], dim=1)
        return x.unfold(1, self.cfg.win, self.cfg.hop)

    def logmel(self, pcm: Tensor, history: Tensor | None = None) -> Tensor:
        """pcm [B, n*hop] -> log-mel [B, n, n_mels]."""
        fr = self.frames(pcm, history)
        b, n, w = fr.shape
        fr = fr.reshape(b * n, w).clone()  # logmel_ windows it in place
        spec = fr.new_empty(b * n, 2 * self.n_bins)
        power = fr.new_empty(b * n, self.n_bins)
        out = fr.new_empty(b * n, self.cfg.n_mels)
        return self.logmel_(fr, spec, power, out).view(b, n, -1)

    def quantize(self, logmel: Tensor) -> Tensor:
        return self.quantize_(
            logmel,
            torch.empty_like(logmel),
            torch.empty(logmel.shape, dtype=torch.long, device=logmel.device),
        )

    def dequantize(self, levels: Tensor) -> Tensor:
        return self.dequantize_(levels, torch.empty(levels.shape, dtype=torch.float32, device=levels.device))

    def levels(self, pcm: Tensor, history: Tensor | None = None) -> Tensor:
        """pcm -> dMel levels [B, n, n_mels] (long)."""
        return self.quantize(self.logmel(pcm, history))


class DMelEmbedding(nn.Module):
    """One learned vector per (frame slot, channel, level), summed over a token's frames and channels.

    An audio token covers ``frames_per_audio_token`` frames; giving each frame slot its own table keeps the
    order of frames inside the token. ``forward`` (training) is ``embedding_bag`` (no [N, 320, d]
    intermediate); ``embed_`` (the engine's step) gathers rows into a preallocated buffer a few tokens at
    a time and sums them, because ``embedding_bag`` allocates its output even through its ``out=``
    variant. Both compute the same sum (in a different order: equal within fp32 rounding).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_frames, self.n_mels, self.n_levels = cfg.frames_per_audio_token, cfg.n_mels, cfg.n_levels
        self.n_index = self.n_frames * self.n_mels * self.n_levels
        self.weight = nn.Parameter(torch.randn(self.n_index, cfg.d_model) * 0.02)
        base = (
            torch.arange(self.n_frames)[:, None] * self.n_mels + torch.arange(self.n_mels)[None]
        ) * self.n_levels
        self.register_buffer("base", base.reshape(-1), persistent=False)  # [frames*mels]

    def indices(self, levels: Tensor) -> Tensor:
        """levels [..., frames, mels] -> flat table indices [..., frames*mels]."""
        return levels.flatten(-2) + self.base

    def embed_(self, levels: Tensor, idx: Tensor, rows: Tensor, out: Tensor) -> Tensor:
        """Allocation-free ``forward``: levels [n, frames*mels] (long) -> out [n, d]. Work buffers: idx
        (long, like levels) and rows [c * frames*mels, d], which sets the tokens per gather (``c``: a few
        on a CPU, so the gathered rows stay in cache; all of them on a GPU)."""
        n, p = levels.shape
        chunk = max(1, rows.shape[0] // p)
        torch.add(levels, self.base, out=idx)
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            g = rows[: m * p]
            torch.index_select(self.weight, 0, idx[s : s + m].view(-1), out=g)
            torch.sum(g.view(m, p, -1), 1, out=out[s : s + m])
        return out

    def forward(self, levels: Tensor) -> Tensor:
        """levels [..., frames, mels] (long) -> [..., d]."""
        lead = levels.shape[:-2]
        idx = self.indices(levels).reshape(-1, self.n_frames * self.n_mels)
        return F.embedding_bag(idx, self.weight, mode="sum").view(*lead, -1)
