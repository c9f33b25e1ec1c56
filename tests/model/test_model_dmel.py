"""dMel featuriser, its inverse, the dMel embedding and the Griffin-Lim vocoder."""

from __future__ import annotations

import math

import pytest
import torch

from microturn.model import InteractionModel, preset
from microturn.model.dmel import DMel, DMelEmbedding

CFG = preset("test")


def tone(freq: float, seconds: float, amp: float = 0.3) -> torch.Tensor:
    t = torch.arange(int(16_000 * seconds)) / 16_000
    return amp * torch.sin(2 * math.pi * freq * t)


def test_round_trip_error_is_within_half_a_level():
    dm = DMel(CFG)
    g = torch.Generator().manual_seed(0)
    pcm = tone(440, 1.0) + tone(1800, 1.0, 0.1) + 0.01 * torch.randn(16_000, generator=g)
    lm = dm.logmel(pcm[None])
    levels = dm.quantize(lm)
    assert levels.dtype == torch.long and int(levels.min()) >= 0 and int(levels.max()) <= CFG.n_levels - 1
    back = dm.dequantize(levels)
    half_step = (CFG.log_max - CFG.log_min) / (CFG.n_levels - 1) / 2
    assert float((back - lm).abs().max()) <= half_step + 1e-5
    # level centres are fixed points
    assert torch.equal(dm.quantize(back), levels)


def test_shape_and_range():
    dm = DMel(CFG)
    lm = dm.logmel(torch.zeros(2, 3200))
    assert lm.shape == (2, 16, 80)  # 12.5 ms hop: 16 frames per 200 ms
    assert float(lm.min()) == pytest.approx(CFG.log_min)  # silence clamps to the floor
    loud = dm.logmel(tone(1000, 0.2, 1.0)[None])
    assert float(loud.max()) <= CFG.log_max


def test_chunked_featurisation_equals_whole_signal():
    """Causal framing: a chunk needs only the previous win - hop samples."""
    dm = DMel(CFG)
    pcm = tone(300, 0.6) + tone(2500, 0.6, 0.05)
    whole = dm.logmel(pcm[None])
    hist = torch.zeros(1, dm.history)
    parts = []
    for c in range(3):
        chunk = pcm[None, c * 3200 : (c + 1) * 3200]
        parts.append(dm.logmel(chunk, hist))
        hist = torch.cat([hist, chunk], 1)[:, -dm.history :]
    assert torch.allclose(torch.cat(parts, 1), whole, atol=1e-5)


def test_tone_lands_in_the_right_channel():
    dm = DMel(CFG)
    lm = dm.logmel(tone(1000, 0.2)[None])[0, 8]
    centres = dm.fb.argmax(0).float() * 8000 / (dm.n_bins - 1)
    assert abs(float(centres[int(lm.argmax())]) - 1000) < 120


def test_embedding_is_a_sum_of_per_channel_level_vectors():
    emb = DMelEmbedding(CFG)
    g = torch.Generator().manual_seed(1)
    levels = torch.randint(0, CFG.n_levels, (3, CFG.frames_per_audio_token, CFG.n_mels), generator=g)
    got = emb(levels)
    w = emb.weight.view(CFG.frames_per_audio_token, CFG.n_mels, CFG.n_levels, -1)
    for i in range(3):
        want = sum(
            w[f, c, levels[i, f, c]] for f in range(CFG.frames_per_audio_token) for c in range(CFG.n_mels)
        )
        assert torch.allclose(got[i], want, atol=1e-5)


@pytest.mark.parametrize("freq", [300, 700, 1500])
def test_vocoder_reproduces_the_pitch(freq):
    m = InteractionModel(preset("test", vocoder_iters=2))
    pcm = tone(freq, 0.8)
    out = m.vocoder.vocode(m.dmel.logmel(pcm[None]))
    assert out.shape == (1, 12_800) and float(out.abs().max()) <= 1.0
    spec = torch.fft.rfft(out[0, 3200:] * torch.hann_window(9600))
    peak_hz = int(spec.abs().argmax()) * 16_000 / 9600
    assert abs(peak_hz - freq) < 60


def test_vocoder_is_silent_on_silence_and_checks_length():
    m = InteractionModel(preset("test"))
    lm = m.dmel.logmel(torch.zeros(1, 6400))
    assert float(m.vocoder.vocode(lm).abs().max()) < 1e-2
    with pytest.raises(ValueError, match="multiple of frames_per_chunk"):
        m.vocoder.vocode(lm[:, :10])


def speech_like(seconds: float = 1.2) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    pcm = (
        tone(220, seconds)
        + tone(2500, seconds, 0.05)
        + 0.01 * torch.randn(int(16_000 * seconds), generator=g)
    )
    pcm[4000:8000] = 0.0  # a silent stretch: channels at the floor
    return pcm


def test_fft_featuriser_equals_the_dense_dft():
    """The FFT path against the dense DFT-matrix product it replaced (and a float64 FFT): within 1e-4
    log10 units. fp32 DFT errors scale with a frame's loudest bin (~1e-7 relative), so quiet channels
    differ by up to ~5e-5 between the two fp32 paths (the FFT is the closer one to float64); a level is
    0.6 log10 units wide, so levels flip only for values within 1e-4 of a boundary."""
    dm = DMel(CFG)
    pcm = speech_like()
    fft = dm.logmel(pcm[None])
    dm.dft.use_fft = False
    dense = dm.logmel(pcm[None])
    win, hop = CFG.win, CFG.hop
    n = torch.arange(win, dtype=torch.float64)
    w = 0.5 - 0.5 * torch.cos(2 * math.pi * n / win)
    x = torch.cat([torch.zeros(1, win - hop, dtype=torch.float64), pcm[None].double()], 1)
    spec = torch.fft.rfft(x.unfold(1, win, hop) * w * (2 / w.sum()), dim=-1)
    ref = (spec.abs() ** 2 @ dm.fb.double()).clamp(min=10**CFG.log_min).log10().clamp(max=CFG.log_max)
    assert float((fft - dense).abs().max()) < 1e-4
    assert float((fft.double() - ref).abs().max()) < 1e-5
    assert torch.equal(dm.quantize(fft), dm.quantize(dense))


def test_fft_vocoder_equals_the_dense_dft():
    """Griffin-Lim through FFTs against the DFT-matrix products: within 1e-5 of full scale (a third of
    one int16 step; measured 2e-6)."""
    m = InteractionModel(preset("test", vocoder_iters=3))
    lm = m.dmel.logmel(speech_like()[None])
    fft = m.vocoder.vocode(lm)
    m.vocoder.dft.use_fft = False
    dense = m.vocoder.vocode(lm)
    assert float(fft.abs().max()) > 0.1
    assert float((fft - dense).abs().max()) < 1e-5


@pytest.mark.parametrize("chunk", [1, 3, 16])
def test_embedding_step_equals_forward(chunk):
    """``embed_`` (gather + sum into buffers, ``chunk`` tokens at a time) == ``forward`` (embedding_bag):
    the same sum in another order, so within fp32 rounding of a 320-term sum."""
    emb = DMelEmbedding(CFG)
    g = torch.Generator().manual_seed(2)
    p = CFG.frames_per_audio_token * CFG.n_mels
    levels = torch.randint(0, CFG.n_levels, (7, p), generator=g)
    out = torch.empty(7, CFG.d_model)
    idx = torch.empty(7, p, dtype=torch.long)
    rows = torch.empty(chunk * p, CFG.d_model)
    with torch.no_grad():
        emb.embed_(levels, idx, rows, out)
        ref = emb(levels.view(7, CFG.frames_per_audio_token, CFG.n_mels))
    assert float((out - ref).abs().max()) < 1e-5


def test_streaming_levels_step_equals_levels_of_the_whole_signal():
    """``levels_`` chunk by chunk, carrying the history it hands back, == ``levels`` of the whole
    signal (two rows, four chunks)."""
    dm = DMel(CFG)
    pcm = (torch.stack([speech_like(0.8), speech_like(0.8).flip(0)]) * 32767).to(torch.int16)
    whole = dm.levels(pcm)
    ws = dm.workspace(3)
    hist = torch.zeros(2, dm.history)
    new_hist = torch.empty(2, dm.history)
    parts = []
    for c in range(4):
        out = torch.empty(2 * CFG.frames_per_chunk, CFG.n_mels, dtype=torch.long)
        dm.levels_(pcm[:, c * 3200 : (c + 1) * 3200], hist, ws, out, new_hist)
        hist = new_hist.clone()
        parts.append(out.view(2, CFG.frames_per_chunk, -1))
    assert torch.equal(torch.cat(parts, 1), whole)
