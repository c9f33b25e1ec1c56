"""Speech onsets and offsets found within ±20 / ±30 ms of where they are known to be, in silence and
low noise, with breaths, clicks and tone blips before them that must not count as speech; offline at
16 kHz, streamed at 48 kHz in 20 ms frames, and through aiortc's Opus codec. 16 seeds each (the
project's rule for a statistical claim), two utterances per scene (one through Opus)."""

from __future__ import annotations

import fractions
import io
import shutil
import subprocess
import wave
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import pytest
from scipy.signal import butter, resample_poly, sosfilt

from loadtest import onset
from loadtest.onset import OnsetDetector
from tests.need import need

SEEDS = range(16)
ONSET_TOL = 0.020
OFFSET_TOL = 0.030
T0 = 1_764_600_000.0  # a wall-clock base for the streamed tests
PHRASES = (
    "what is seven times twelve",
    "hello, how can I help you today",
    "sure, the weather in paris is sunny",
    "the answer is eighty four",
    "okay, let me check that for you",
    "fine thanks, and you",
    "seventy two degrees",
    "I think so",
)


@cache
def espeak(text: str) -> tuple[np.ndarray, int]:
    """espeak-ng's rendering of ``text``: float samples and their rate (22050 Hz)."""
    wav = subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "165", "--stdout", text], check=True, capture_output=True
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    return x, rate


@cache
def clip(text: str, rate: int) -> tuple[np.ndarray, int, int]:
    """The phrase at ``rate``, and its true onset and offset (samples): the first and last sample
    within 40 dB of its peak."""
    x, src = espeak(text)
    y = resample_poly(x, rate, src).astype(np.float32)
    loud = np.flatnonzero(np.abs(y) > 0.01 * np.abs(y).max())
    return y, int(loud[0]), int(loud[-1]) + 1


def have_espeak() -> None:
    need([] if shutil.which("espeak-ng") else ["espeak-ng"], "apt-get install espeak-ng")


@dataclass
class Scene:
    pcm: np.ndarray  # float, at rate
    rate: int
    onsets: list[float] = field(default_factory=list)  # seconds from the start
    offsets: list[float] = field(default_factory=list)
    distractors: list[tuple[str, float]] = field(default_factory=list)  # kind, start (s)


def breath(rng: np.random.Generator, rate: int) -> np.ndarray:
    """Band-limited noise, 150-300 ms, Hann envelope, at a moderate level (-32..-24 dBFS RMS)."""
    n = int(rng.uniform(0.15, 0.30) * rate)
    lo, hi = rng.uniform(300, 600), rng.uniform(1500, 3000)
    x = sosfilt(butter(4, [lo, hi], btype="band", fs=rate, output="sos"), rng.normal(0, 1, n))
    x *= np.hanning(n)
    return (x / np.sqrt(np.mean(x**2)) * 10 ** (rng.uniform(-32, -24) / 20)).astype(np.float32)


def click(rng: np.random.Generator, rate: int) -> np.ndarray:
    """A 1-5 ms impulse at a high level (peak 0.5-0.9): a spike ringing down."""
    n = max(2, int(rng.uniform(0.001, 0.005) * rate))
    ring = np.exp(-np.arange(n) / (n / 4)) * np.cos(np.arange(n) * rng.uniform(0.5, 2.5))
    return (rng.choice([-1, 1]) * rng.uniform(0.5, 0.9) * ring).astype(np.float32)


def blip(rng: np.random.Generator, rate: int) -> np.ndarray:
    """A short tone (50-100 ms, 500-1500 Hz, peak -20..-14 dBFS) with 5 ms ramps."""
    n = int(rng.uniform(0.05, 0.10) * rate)
    t = np.arange(n) / rate
    x = np.sin(2 * np.pi * rng.uniform(500, 1500) * t) * 10 ** (rng.uniform(-20, -14) / 20)
    r = int(0.005 * rate)
    x[:r] *= np.linspace(0, 1, r)
    x[-r:] *= np.linspace(1, 0, r)
    return x.astype(np.float32)


def scene(seed: int, rate: int, utterances: int = 2, noise_db: float | None = None) -> Scene:
    """Silence (even seeds) or -60..-50 dBFS white noise (odd; ``noise_db``: that level, every seed),
    and ``utterances`` phrases, each after a breath, a click and a blip in random order, the last of
    them 150-350 ms before it."""
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    s = Scene(np.zeros(0, np.float32), rate)
    pos = 0

    def put(x: np.ndarray) -> None:
        nonlocal pos
        parts.append(x)
        pos += len(x)

    def gap(lo: float, hi: float) -> None:
        put(np.zeros(int(rng.uniform(lo, hi) * rate), np.float32))

    for u in range(utterances):
        if u == 0:
            gap(0.10, 0.25)
        else:
            gap(0.40, 0.55)  # after speech: Silero's silence (min_silence_ms), then the distractors
        makers = [("breath", breath), ("click", click), ("blip", blip)]
        for k in rng.permutation(len(makers)):
            kind, make = makers[k]
            s.distractors.append((kind, pos / rate))
            put(make(rng, rate))
            gap(0.12, 0.20)
        gap(0.03, 0.15)  # with the gap above: 150-350 ms from the last distractor to the speech
        y, on, off = clip(PHRASES[(seed * utterances + u) % len(PHRASES)], rate)
        y = y * 10 ** (-rng.uniform(0, 9) / 20) / np.abs(y).max() * 0.7
        s.onsets.append((pos + on) / rate)
        s.offsets.append((pos + off) / rate)
        put(y.astype(np.float32))
    gap(0.5, 0.7)
    pcm = np.concatenate(parts)
    level = rng.uniform(-60, -50)
    if noise_db is not None or seed % 2:
        level = level if noise_db is None else noise_db
        pcm = pcm + rng.normal(0, 10 ** (level / 20), len(pcm)).astype(np.float32)
    s.pcm = pcm
    return s


def misses(found: list[float], want: list[float], tol: float) -> list[str]:
    """What is wrong with ``found`` against ``want`` (empty when every one is within ``tol``)."""
    if len(found) != len(want):
        return [f"found {[round(f, 3) for f in found]}, want {[round(w, 3) for w in want]}"]
    return [
        f"{f:.3f} vs {w:.3f} ({(f - w) * 1000:+.0f} ms)"
        for f, w in zip(found, want, strict=True)
        if abs(f - w) > tol
    ]


def stream(pcm16: np.ndarray, rate: int, frame: int, t0: float = T0, **kw) -> tuple[OnsetDetector, list]:
    """Feed int16 audio in ``frame``-sample pieces, as a receiver does; returns the detector and the
    onsets the feeds returned."""
    det = OnsetDetector(sample_rate=rate, **kw)
    got: list[float] = []
    for i in range(0, len(pcm16), frame):
        got += det.feed(pcm16[i : i + frame], t0 + i / rate)
    got += det.flush()
    return det, got


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)


# --- accuracy -------------------------------------------------------------------------------------


def test_onsets_offline_16k_within_20ms_and_no_false_onsets() -> None:
    have_espeak()
    problems = []
    for seed in SEEDS:
        s = scene(seed, 16000)
        spans = onset.spans_in(s.pcm, 16000)
        found_on = [sp.onset for sp in spans]
        problems += [f"seed {seed} onset: {m}" for m in misses(found_on, s.onsets, ONSET_TOL)]
        found_off = [sp.offset for sp in spans if sp.offset is not None]
        problems += [f"seed {seed} offset: {m}" for m in misses(found_off, s.offsets, OFFSET_TOL)]
    assert not problems, "\n".join(problems)


def test_onsets_streamed_48k_in_20ms_frames() -> None:
    have_espeak()
    problems = []
    for seed in SEEDS:
        s = scene(seed, 48000)
        det, got = stream(to_int16(s.pcm), 48000, 960)
        assert got == det.onsets()  # what the feeds returned is what it holds
        problems += [f"seed {seed} onset: {m}" for m in misses(got, [T0 + o for o in s.onsets], ONSET_TOL)]
        offs = det.offsets()
        problems += [
            f"seed {seed} offset: {m}" for m in misses(offs, [T0 + o for o in s.offsets], OFFSET_TOL)
        ]
    assert not problems, "\n".join(problems)


def opus_round_trip(pcm16: np.ndarray) -> np.ndarray:
    """Through aiortc's Opus encoder and decoder (what an aiortc caller receives), back to mono."""
    import av
    from aiortc.codecs.opus import OpusDecoder, OpusEncoder
    from aiortc.jitterbuffer import JitterFrame

    enc, dec = OpusEncoder(), OpusDecoder()
    out: list[np.ndarray] = []
    for i in range(0, len(pcm16) - 959, 960):
        frame = av.AudioFrame.from_ndarray(pcm16[None, i : i + 960], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, i, fractions.Fraction(1, 48000)
        payloads, ts = enc.encode(frame)
        for p in payloads:
            out += [onset.audio_frame_mono(f) for f in dec.decode(JitterFrame(data=p, timestamp=ts))]
    return np.concatenate(out)


def codec_delay(a: np.ndarray, b: np.ndarray, rate: int) -> float:
    """How much later b is than a (seconds), from the cross-correlation peak within 50 ms."""
    n = min(len(a), len(b))
    fa, fb = np.fft.rfft(a[:n], 2 * n), np.fft.rfft(b[:n], 2 * n)
    xc = np.fft.irfft(np.conj(fa) * fb)
    m = int(0.05 * rate)
    lags = np.r_[np.arange(0, m), np.arange(-m, 0)]
    return float(lags[np.argmax(np.r_[xc[:m], xc[-m:]])] / rate)


def test_opus_round_trip_does_not_shift_onsets() -> None:
    have_espeak()
    problems = []
    for seed in SEEDS:
        s = scene(seed, 48000, utterances=1)  # one per scene: the codec is the slow part here
        pcm16 = to_int16(s.pcm)
        decoded = opus_round_trip(pcm16)
        delay = codec_delay(pcm16.astype(np.float32), decoded.astype(np.float32), 48000)
        assert 0 <= delay < 0.02, f"seed {seed}: codec delay {delay * 1000:.1f} ms"
        det, got = stream(decoded, 48000, 960)
        want = [T0 + o + delay for o in s.onsets]
        problems += [
            f"seed {seed} onset (delay {delay * 1e3:.1f} ms): {m}" for m in misses(got, want, ONSET_TOL)
        ]
        want_off = [T0 + o + delay for o in s.offsets]
        problems += [f"seed {seed} offset: {m}" for m in misses(det.offsets(), want_off, OFFSET_TOL)]
    assert not problems, "\n".join(problems)


def test_distractors_alone_are_not_speech() -> None:
    """Breaths, clicks and blips, denser and louder than in the scenes: not one onset."""
    problems = []
    for seed in SEEDS:
        rng = np.random.default_rng(1000 + seed)
        parts = []
        for _ in range(4):
            for k in rng.permutation(3):
                make = (breath, click, blip)[k]
                parts += [make(rng, 16000) * 1.5, np.zeros(int(rng.uniform(0.05, 0.2) * 16000), np.float32)]
        pcm = np.concatenate(parts)
        if seed % 2:
            pcm = pcm + rng.normal(0, 10 ** (-55 / 20), len(pcm)).astype(np.float32)
        found = onset.onsets_in(pcm, 16000)
        if found:
            problems.append(f"seed {seed}: onsets at {[round(f, 3) for f in found]}")
    assert not problems, "\n".join(problems)


# --- the streaming path's bookkeeping ---------------------------------------------------------------


def test_chunking_does_not_change_the_answer() -> None:
    have_espeak()
    s = scene(3, 48000)
    pcm16 = to_int16(s.pcm)
    _, frames = stream(pcm16, 48000, 960)
    rng = np.random.default_rng(7)
    det = OnsetDetector(sample_rate=48000)
    got, i = [], 0
    while i < len(pcm16):
        n = int(rng.integers(1, 4000))
        got += det.feed(pcm16[i : i + n], T0 + i / 48000)
        i += n
    got += det.flush()
    assert len(got) == len(frames) == 2
    assert np.allclose(got, frames, atol=1e-3)


def test_onset_times_follow_each_feeds_wall_clock() -> None:
    """A jump in the feeds' t0 (a receiver stall) moves what follows it, not what came before."""
    have_espeak()
    s = scene(4, 48000)
    pcm16 = to_int16(s.pcm)
    _, plain = stream(pcm16, 48000, 960)
    jump_at = int((s.onsets[0] + s.offsets[0]) / 2 * 48000) // 960 * 960  # inside the first utterance
    det = OnsetDetector(sample_rate=48000)
    got = []
    for i in range(0, len(pcm16), 960):
        got += det.feed(pcm16[i : i + 960], T0 + i / 48000 + (1.0 if i >= jump_at else 0.0))
    got += det.flush()
    assert abs(got[0] - plain[0]) < 1e-3
    assert abs(got[1] - (plain[1] + 1.0)) < 1e-3


def test_offline_at_espeaks_own_rate() -> None:
    """onsets_in resamples rates that are not a multiple of 16 kHz (espeak-ng's 22050 Hz)."""
    have_espeak()
    x, rate = espeak(PHRASES[0])
    lead = int(0.7 * rate)
    pcm = np.concatenate([np.zeros(lead, np.float32), x, np.zeros(rate // 2, np.float32)])
    truth = (lead + np.flatnonzero(np.abs(x) > 0.01 * np.abs(x).max())[0]) / rate
    (found,) = onset.onsets_in(to_int16(pcm), rate)
    assert abs(found - truth) <= ONSET_TOL


def test_decimator_keeps_the_band_and_its_timing() -> None:
    rate, t = 48000, np.arange(48000) / 48000
    d = onset._Decimator(3)
    x = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    pieces, i, rng = [], 0, np.random.default_rng(0)
    while i < len(x):
        n = int(rng.integers(1, 2000))
        pieces.append(d.process(x[i : i + n]))
        i += n
    y = np.concatenate([*pieces, d.flush()])
    assert len(y) == 16000
    j = np.arange(16000)
    ideal = np.sin(2 * np.pi * 1000 * j / 16000)
    assert np.max(np.abs(y[100:-100] - ideal[100:-100])) < 0.01  # no delay, no loss in band
    d2 = onset._Decimator(3)
    alias = np.sin(2 * np.pi * 12000 * t).astype(np.float32)  # would fold to 4 kHz
    z = np.concatenate([d2.process(alias), d2.flush()])
    assert np.sqrt(np.mean(z[100:-100] ** 2)) < 0.01 * np.sqrt(0.5)  # at least 40 dB down
    assert rate == 3 * onset.VAD_RATE


# --- the small API ----------------------------------------------------------------------------------


def test_first_after() -> None:
    assert onset.first_onset_after([3.0, 1.0, 2.0], 1.5) == 2.0
    assert onset.first_onset_after([1.0, 2.0], 2.0) == 2.0
    assert onset.first_onset_after([1.0], 1.5) is None
    assert onset.first_offset_after([0.5, 4.0], 1.0) == 4.0
    assert onset.first_offset_after([], 1.0) is None


def test_bad_input_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="multiple of 16000"):
        OnsetDetector(sample_rate=44100)
    det = OnsetDetector(sample_rate=16000)
    with pytest.raises(ValueError, match="mono"):
        det.feed(np.zeros((960, 2), np.int16), 0.0)
    with pytest.raises(ValueError, match="int16 or float"):
        det.feed(np.zeros(960, np.int32), 0.0)
    assert det.feed(np.zeros((1, 960), np.int16), 0.0) == []  # a (1, n) frame is mono
    det.flush()
    with pytest.raises(RuntimeError, match="new OnsetDetector"):
        det.feed(np.zeros(960, np.int16), 1.0)


def test_silence_has_no_speech() -> None:
    det, got = stream(np.zeros(48000 * 2, np.int16), 48000, 960)
    assert got == [] and det.speech_spans() == [] and not det.speaking
