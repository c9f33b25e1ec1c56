"""When the model starts (and stops) speaking in the audio a caller receives.

Turn latency is the user's end of speech to the onset of the model's speech as the caller hears it,
so onsets must be accurate to about ±20 ms and must not fire on breaths, clicks or blips. A plain
energy threshold fires on breaths and WebRTC VAD on clicks, so Silero VAD decides *whether* there is
speech (it needs ``min_speech_ms`` of it) and short energy frames then decide *where* it began: from
the first window Silero called speech, step back over the contiguous frames that are louder than the
noise floor. Speech ends the same way: Silero says it ended, the last loud frame says when.

One :class:`OnsetDetector` per received stream (it holds Silero's recurrent state and a few seconds
of 16 kHz audio); the Silero model itself is loaded once per process and shared. Input at 48 kHz
(WebRTC's rate) or any multiple of 16 kHz is decimated with a linear-phase FIR whose delay is
compensated exactly, so timestamps need no correction. ``onsets_in``/``spans_in`` do the same offline
for a whole buffer at any rate.

Loading Silero imports torch and calls ``torch.set_num_threads(1)`` (silero_vad does, on import):
right for a load generator, where every caller's detector should cost one core's slice, not all."""

from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

VAD_RATE = 16_000
WINDOW = 512  # Silero's window at 16 kHz (32 ms)
CONTEXT = 64  # the samples before each window that Silero's model expects in front of it
_WINDOW_S = WINDOW / VAD_RATE

_model_lock = threading.Lock()
_model: Any = None


def _silero() -> Any:
    """The stateless core of Silero's TorchScript model, loaded once per process.

    The packaged wrapper keeps one stream's state inside the model object; its inner module takes
    (context + window, state) and returns (probability, state), so one copy serves every detector."""
    global _model
    with _model_lock:
        if _model is None:
            try:
                from silero_vad import load_silero_vad
            except ImportError as exc:  # pragma: no cover - a broken install
                raise RuntimeError("loadtest.onset needs silero-vad (pip install silero-vad)") from exc
            _model = load_silero_vad(onnx=False)._model
        return _model


@dataclass(frozen=True)
class SpeechSpan:
    """One stretch of speech: onset and offset in the detector's time base (offset None while open)."""

    onset: float
    offset: float | None = None


class _Decimator:
    """Streaming FIR low-pass + keep every ``factor``-th sample, with its delay taken out.

    The filter has 20*factor+1 taps, so its group delay (10*factor input samples) is a whole number of
    output samples: output j is the filtered signal at input sample factor*j, exactly, and the first
    output is available 10*factor input samples (0.6 ms at 48 kHz) after its input arrived."""

    def __init__(self, factor: int) -> None:
        from scipy.signal import firwin

        self.factor = factor
        self.delay = 10 * factor
        ntaps = 2 * self.delay + 1
        self._taps_rev = firwin(ntaps, 0.45 * VAD_RATE, fs=VAD_RATE * factor).astype(np.float32)[::-1]
        self._tail = np.zeros(ntaps - 1, np.float32)  # the input before the first sample is silence
        self._n_in = 0  # input samples taken
        self._n_out = 0  # output samples produced

    def process(self, x: np.ndarray) -> np.ndarray:
        ext = np.concatenate([self._tail, x])
        ntaps = len(self._taps_rev)
        n_total = self._n_in + len(x)
        # output j is y[factor*j + delay], y[n] = taps . x[n-ntaps+1 .. n]; window k of ext ends at n_in + k
        last_j = (n_total - 1 - self.delay) // self.factor
        out = np.zeros(0, np.float32)
        if last_j >= self._n_out:
            k0 = self.factor * self._n_out + self.delay - self._n_in
            windows = np.lib.stride_tricks.sliding_window_view(ext, ntaps)[k0 :: self.factor]
            windows = windows[: last_j - self._n_out + 1]
            out = (windows @ self._taps_rev).astype(np.float32)
            self._n_out = last_j + 1
        self._tail = ext[len(ext) - (ntaps - 1) :].copy()
        self._n_in = n_total
        return out

    def flush(self) -> np.ndarray:
        """The outputs still held back by the filter's delay (the input after the end is silence):
        one output per ``factor`` inputs taken, rounded up."""
        want = -(-self._n_in // self.factor) - self._n_out
        out = self.process(np.zeros(self.delay + self.factor, np.float32))
        self._n_out -= len(out) - want
        return out[:want]


def _as_float_mono(pcm: np.ndarray) -> np.ndarray:
    a = np.asarray(pcm)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        raise ValueError(f"expected mono samples (1-D), got shape {a.shape}: downmix or pick a channel first")
    if a.dtype == np.int16:
        return a.astype(np.float32) / 32768.0
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(np.float32, copy=False)
    raise ValueError(f"expected int16 or float samples, got {a.dtype}")


class OnsetDetector:
    """Speech onsets and offsets in one received audio stream, fed as it arrives.

    ``feed(pcm, t0)`` takes the next samples and the wall time of the first of them, and returns the
    onsets confirmed by this feed. An onset is reported once ``min_speech_ms`` of speech confirmed it
    (so about 150-250 ms after it happened), with the time it happened. Offsets are reported once
    ``min_silence_ms`` of silence followed; pauses shorter than that stay inside one span (300 ms:
    longer than espeak's comma pauses, so a barge-in's "yield" is not a pause mid-sentence).

    Parameters beyond the rates: ``threshold`` is Silero's speech probability (it keeps speaking
    down to ``threshold - 0.15``); a frame is "loud" when its RMS is over the noise floor (the 20th
    percentile of the 1.5 s before the speech) by ``floor_margin_db`` or by ``noise_spread_k`` times
    the noise's own p20 -> p50 spread in dB, whichever is more, at least ``rel_db`` relative to the
    speech's loudest frame and at least ``abs_floor`` (full scale 1.0); the step back crosses quiet gaps of up to ``max_gap_ms`` and
    goes back at most ``max_step_back_ms``. Speech that is not confirmed yet may pause (Silero below
    ``threshold - 0.15``) for up to ``candidate_gap_ms``, as in "o-kay", and keep its start."""

    def __init__(
        self,
        sample_rate: int = 48000,
        min_speech_ms: int = 120,
        min_silence_ms: int = 300,
        threshold: float = 0.5,
        frame_ms: float = 5.0,
        floor_margin_db: float = 4.0,
        noise_spread_k: float = 4.0,
        rel_db: float = -40.0,
        abs_floor: float = 1e-4,
        max_gap_ms: float = 10.0,
        max_step_back_ms: float = 400.0,
        candidate_gap_ms: float = 100.0,
        history_s: float = 3.0,
    ) -> None:
        if sample_rate <= 0 or sample_rate % VAD_RATE:
            raise ValueError(
                f"sample_rate {sample_rate} is not a multiple of {VAD_RATE} Hz: resample first "
                "(onsets_in() does that for whole buffers)"
            )
        if not 0.15 < threshold < 1.0:
            raise ValueError(f"threshold {threshold} must be in (0.15, 1)")
        self.sample_rate = sample_rate
        factor = sample_rate // VAD_RATE
        self._decim = _Decimator(factor) if factor > 1 else None
        self._factor = factor
        self._threshold = threshold
        self._neg_threshold = threshold - 0.15
        self._min_speech_windows = max(1, math.ceil(min_speech_ms / 1000 / _WINDOW_S))
        self._min_silence_windows = max(1, math.ceil(min_silence_ms / 1000 / _WINDOW_S))
        self._frame = max(1, round(frame_ms / 1000 * VAD_RATE))
        self._floor_margin = 10 ** (floor_margin_db / 20)
        self._spread_k = noise_spread_k
        self._rel = 10 ** (rel_db / 20)
        self._abs_floor = abs_floor
        self._max_gap_frames = int(max_gap_ms / 1000 * VAD_RATE / self._frame)
        self._max_back = int(max_step_back_ms / 1000 * VAD_RATE)
        self._history = int(history_s * VAD_RATE)
        # a candidate that has not confirmed by then starts over (its start stays in the history)
        self._max_candidate = 2 * self._min_speech_windows * WINDOW + VAD_RATE // 2
        self._max_candidate_gap = max(1, math.ceil(candidate_gap_ms / 1000 / _WINDOW_S))
        need = self._max_candidate + 2 * WINDOW + max(int(1.5 * VAD_RATE), self._max_back)
        if self._history < need:
            raise ValueError(f"history_s must be at least {need / VAD_RATE:.2f} s for these settings")

        self._buf = np.zeros(0, np.float32)  # 16 kHz samples [buf_start, buf_start + len)
        self._buf_start = 0
        self._n16 = 0  # 16 kHz samples produced so far
        self._n_in = 0  # input samples taken so far
        self._next_window = 0  # absolute 16 kHz index of the next window Silero sees
        self._state: Any = None  # Silero's recurrent state (None before the first window)
        self._anchors: list[tuple[float, float]] = []  # (16 kHz index, wall time) at each feed
        # the state machine, in 16 kHz sample indices
        self._phase = "idle"  # idle | candidate | speaking
        self._cand_start = 0  # first window of a candidate span
        self._cand_hits = 0
        self._last_speech_end = 0  # end of the last window Silero called speech in this span
        self._quiet_windows = 0
        self._span_threshold = 0.0  # the loud-frame threshold chosen at the span's onset
        self._span_onset = 0
        self._prev_offset = 0  # the previous span's offset (the step back never crosses it)
        self._last_floor: float | None = None  # the noise part of the loud-frame threshold
        self._spans_t: list[SpeechSpan] = []
        self._closed = False

    # --- public -----------------------------------------------------------------------------------

    def feed(self, pcm: np.ndarray, t0: float) -> list[float]:
        """Take the next samples (int16 or float mono at ``sample_rate``) whose first sample was at
        wall time ``t0``; returns the onsets (wall-time seconds) confirmed by them, oldest first."""
        if self._closed:
            raise RuntimeError("feed() after flush(): use a new OnsetDetector for a new stream")
        x = _as_float_mono(pcm)
        self._anchors.append((self._n_in / self._factor, float(t0)))
        self._n_in += len(x)
        y = self._decim.process(x) if self._decim is not None else x
        return self._take(y)

    def flush(self) -> list[float]:
        """End of the stream: run the last partial window and close an open span at its last loud
        frame. Returns the onsets this confirmed (usually none)."""
        if self._closed:
            return []
        y = self._decim.flush() if self._decim is not None else np.zeros(0, np.float32)
        pad = (-(self._n16 + len(y) - self._next_window)) % WINDOW
        onsets = self._take(np.concatenate([y, np.zeros(pad, np.float32)]))
        if self._phase == "speaking":
            self._end_span(limit=self._n16)
        self._closed = True
        return onsets

    def onsets(self) -> list[float]:
        """Every onset so far (wall-time seconds), oldest first."""
        return [s.onset for s in self._spans_t]

    def offsets(self) -> list[float]:
        """Every offset so far (wall-time seconds), oldest first; an open span has none yet."""
        return [s.offset for s in self._spans_t if s.offset is not None]

    def speech_spans(self) -> list[SpeechSpan]:
        """Every span so far; the last one has ``offset=None`` while the model is still speaking."""
        return list(self._spans_t)

    def first_onset_after(self, t: float) -> float | None:
        return first_onset_after(self.onsets(), t)

    def first_offset_after(self, t: float) -> float | None:
        return first_offset_after(self.offsets(), t)

    @property
    def speaking(self) -> bool:
        """Whether a confirmed span is open (the model is speaking, as far as the audio says)."""
        return self._phase == "speaking"

    # --- internals --------------------------------------------------------------------------------

    def _time(self, idx16: float) -> float:
        """Wall time of a 16 kHz sample index, from the last feed that started at or before it."""
        i = bisect.bisect_right(self._anchors, (idx16, math.inf)) - 1
        a16, t = self._anchors[max(i, 0)]
        return t + (idx16 - a16) / VAD_RATE

    def _take(self, y: np.ndarray) -> list[float]:
        self._buf = np.concatenate([self._buf, y]) if len(self._buf) else y.astype(np.float32, copy=True)
        self._n16 += len(y)
        found: list[float] = []
        while self._next_window + WINDOW <= self._n16:
            w = self._next_window
            prob = self._prob(w)
            self._next_window += WINDOW
            onset = self._step(w, prob)
            if onset is not None:
                found.append(onset)
        self._trim()
        return found

    def _prob(self, w: int) -> float:
        import torch

        lo = w - CONTEXT - self._buf_start
        x = self._buf[max(lo, 0) : w + WINDOW - self._buf_start]
        if lo < 0:  # the stream's first window: silence before it
            x = np.concatenate([np.zeros(-lo, np.float32), x])
        state = self._state if self._state is not None else torch.zeros(0)
        with torch.inference_mode():
            out, self._state = _silero()(torch.from_numpy(np.ascontiguousarray(x))[None, :], state)
        return float(out.item())

    def _step(self, w: int, prob: float) -> float | None:
        """Advance the state machine by one window; returns an onset's wall time when one is confirmed."""
        if self._phase == "idle":
            if prob >= self._threshold:
                self._phase, self._cand_start, self._cand_hits, self._quiet_windows = "candidate", w, 1, 0
        elif self._phase == "candidate":
            if prob < self._neg_threshold:
                # a stop consonant's closure dips Silero for a window or two: only a longer quiet ends it
                self._quiet_windows += 1
                if self._quiet_windows > self._max_candidate_gap:
                    self._phase = "idle"
            elif w - self._cand_start > self._max_candidate:  # dithering: start over from here
                self._cand_start, self._cand_hits = w, int(prob >= self._threshold)
                self._phase = "candidate" if self._cand_hits else "idle"
                self._quiet_windows = 0
            else:
                self._quiet_windows = 0
                self._cand_hits += int(prob >= self._threshold)
        else:  # speaking
            if prob >= self._neg_threshold:
                self._last_speech_end, self._quiet_windows = w + WINDOW, 0
            else:
                self._quiet_windows += 1
                if self._quiet_windows >= self._min_silence_windows:
                    self._end_span(limit=self._last_speech_end + 2 * WINDOW)
            return None
        if self._phase == "candidate" and self._cand_hits >= self._min_speech_windows:
            return self._start_span(confirmed_end=w + WINDOW)
        return None

    def _rms(self, lo: int, hi: int) -> np.ndarray:
        """RMS of the frames [lo, hi) in absolute 16 kHz indices, frame-aligned to lo."""
        a = self._buf[lo - self._buf_start : hi - self._buf_start]
        n = len(a) // self._frame
        if n == 0:
            return np.zeros(0, np.float32)
        f = a[: n * self._frame].reshape(n, self._frame)
        return np.sqrt(np.mean(f * f, axis=1))

    def _start_span(self, confirmed_end: int) -> float:
        fr = self._frame
        cand = self._cand_start
        lower = max(self._buf_start, self._prev_offset, cand - self._max_back)
        lower = cand - ((cand - lower) // fr) * fr  # frame grid aligned to the candidate's start
        # the noise floor: the quiet part of up to 1.5 s before the candidate, after the last span
        floor_lo = max(self._buf_start, self._prev_offset + 800, cand - int(1.5 * VAD_RATE))
        pre = self._rms(floor_lo, cand) if floor_lo < cand else np.zeros(0, np.float32)
        if len(pre) >= 10:
            # margin over the floor: at least floor_margin_db, more where the noise itself varies
            # (p20 -> p50 spread; distractors and the speech's first frames sit above p50)
            p20, p50 = (float(v) for v in np.percentile(pre, [20, 50]))
            spread = p50 / p20 if p20 > 0 else 1.0
            self._last_floor = p20 * max(self._floor_margin, spread**self._spread_k)
        noise = self._last_floor if self._last_floor is not None else 0.0
        speech = self._rms(cand, confirmed_end)
        peak = float(speech.max()) if len(speech) else 0.0
        thr = max(self._abs_floor, noise, peak * self._rel)
        self._span_threshold = thr

        back = self._rms(lower, confirmed_end)  # frame k covers lower + k*fr
        loud = back > thr
        first_cand_frame = (cand - lower) // fr
        anchor = next((k for k in range(first_cand_frame, len(loud)) if loud[k]), None)
        if anchor is None:  # Silero heard speech the frames cannot see: trust Silero
            onset = cand
        else:
            earliest, gap, k = anchor, 0, anchor
            while k > 0:
                k -= 1
                if loud[k]:
                    earliest, gap = k, 0
                else:
                    gap += 1
                    if gap > self._max_gap_frames:
                        break
            onset = lower + earliest * fr
            seg = np.abs(self._buf[onset - self._buf_start : onset - self._buf_start + fr])
            hit = np.flatnonzero(seg >= thr)  # the first sample in the frame as loud as the threshold
            if len(hit):
                onset += int(hit[0])
        self._phase = "speaking"
        self._span_onset = onset
        self._last_speech_end = confirmed_end
        self._quiet_windows = 0
        t = self._time(onset)
        self._spans_t.append(SpeechSpan(t))
        return t

    def _end_span(self, limit: int) -> None:
        fr = self._frame
        onset = self._span_onset
        lo = max(onset, self._buf_start)
        hi = min(limit, self._n16)
        rms = self._rms(lo, hi)
        loud = np.flatnonzero(rms > self._span_threshold)
        if len(loud):
            end = lo + (int(loud[-1]) + 1) * fr
            seg = np.abs(self._buf[end - fr - self._buf_start : end - self._buf_start])
            hit = np.flatnonzero(seg >= self._span_threshold)  # the last sample as loud as the threshold
            if len(hit):
                end = end - fr + int(hit[-1]) + 1
        else:
            end = hi
        self._phase = "idle"
        self._prev_offset = end
        self._spans_t[-1] = SpeechSpan(self._spans_t[-1].onset, self._time(end))

    def _trim(self) -> None:
        """Keep ``history_s`` of audio, dropping older samples in big steps (a copy every history_s)."""
        drop = self._n16 - self._history - self._buf_start
        if drop > self._history:  # amortise the copy
            self._buf = self._buf[drop:].copy()
            self._buf_start += drop
            i = bisect.bisect_right(self._anchors, (self._buf_start, math.inf)) - 1
            if i > 0:
                del self._anchors[:i]


def audio_frame_mono(frame: Any) -> np.ndarray:
    """The samples of a PyAV/aiortc ``AudioFrame`` as one mono array (channels averaged), int16 for
    s16 frames: aiortc's Opus decoder gives packed (interleaved) stereo s16 at 48 kHz."""
    a = frame.to_ndarray()
    channels = len(frame.layout.channels)
    a = a.reshape(channels, -1) if frame.format.is_planar else a.reshape(-1, channels).T
    if channels == 1:
        return a[0]
    m = a.astype(np.float32).mean(axis=0)
    return m.astype(a.dtype) if a.dtype == np.int16 else m


def spans_in(pcm: np.ndarray, sample_rate: int, **kwargs: Any) -> list[SpeechSpan]:
    """Speech spans in a whole buffer, in seconds from its first sample. Any sample rate: rates that
    are not a multiple of 16 kHz are resampled (polyphase) first. ``kwargs`` go to OnsetDetector."""
    x = _as_float_mono(pcm)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if sample_rate % VAD_RATE:
        from scipy.signal import resample_poly

        g = math.gcd(VAD_RATE, sample_rate)
        x = resample_poly(x, VAD_RATE // g, sample_rate // g).astype(np.float32)
        sample_rate = VAD_RATE
    det = OnsetDetector(sample_rate=sample_rate, **kwargs)
    det.feed(x, 0.0)
    det.flush()
    return det.speech_spans()


def onsets_in(pcm: np.ndarray, sample_rate: int, **kwargs: Any) -> list[float]:
    """Speech onsets in a whole buffer, in seconds from its first sample (see :func:`spans_in`)."""
    return [s.onset for s in spans_in(pcm, sample_rate, **kwargs)]


def first_onset_after(onsets: list[float], t: float) -> float | None:
    """The first onset at or after ``t`` (e.g. the answer after the user's end of speech), or None."""
    return next((o for o in sorted(onsets) if o >= t), None)


def first_offset_after(offsets: list[float], t: float) -> float | None:
    """The first offset at or after ``t`` (e.g. the model falling silent after a barge-in), or None."""
    return next((o for o in sorted(offsets) if o >= t), None)
