"""Responders: anything that turns input chunk k of a session into output chunk k.

The harness drives every responder the same way: ``open`` each session, then ``step`` once per
micro-turn with one chunk per open session (batched, like an engine tick), then ``close``.
The oracle and the turn-based baseline read the session's targets/plan; a model does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from microturn.gym.layout import CHUNK_SAMPLES
from microturn.gym.session import MODEL_ONSET_SAMPLES, MODEL_WORD_GAP, Session, TurnReply
from microturn.gym.speech import MODEL_VOICE, render_word


@dataclass
class OutChunk:
    pcm: np.ndarray  # int16 [3200]
    text: str = ""
    delegations: list[str] = field(default_factory=list)
    model_version: str = ""


def silent_chunk() -> OutChunk:
    return OutChunk(np.zeros(CHUNK_SAMPLES, np.int16))


class Responder(Protocol):
    label: str
    max_sessions: int  # how many sessions one step may carry

    def open(self, session: Session) -> None: ...

    def step(self, inputs: list[tuple[str, int]]) -> list[OutChunk]:
        """One micro-turn for several sessions: (session_id, chunk index) → output chunk."""
        ...

    def close(self, session_id: str) -> None: ...


class _PerSession:
    """Shared bookkeeping for responders that keep their sessions in a dict."""

    max_sessions = 64

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}

    def open(self, session: Session) -> None:
        if session.session_id in self.sessions:
            raise ValueError(f"session {session.session_id} is already open")
        self.sessions[session.session_id] = session

    def close(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)

    def _session(self, session_id: str) -> Session:
        try:
            return self.sessions[session_id]
        except KeyError:
            raise KeyError(f"unknown session {session_id!r}; open it first") from None


class SilenceResponder(_PerSession):
    """Never says anything: every family must score 0."""

    label = "silence"

    def step(self, inputs: list[tuple[str, int]]) -> list[OutChunk]:
        for sid, _ in inputs:
            self._session(sid)
        return [silent_chunk() for _ in inputs]


class OracleResponder(_PerSession):
    """Outputs the generator's targets: every family must score 100."""

    label = "oracle"

    def step(self, inputs: list[tuple[str, int]]) -> list[OutChunk]:
        out = []
        for sid, k in inputs:
            s = self._session(sid)
            pcm = s.target_pcm[k * CHUNK_SAMPLES : (k + 1) * CHUNK_SAMPLES].copy()
            req = s.target_delegations.get(k)
            out.append(OutChunk(pcm, s.target_text[k], [req] if req else [], "oracle"))
        return out


class CodecOracleResponder(OracleResponder):
    """The oracle's targets through a model's own audio path (dMel levels, then the Griffin-Lim
    vocoder): the best speech a model of ``codec_preset`` can produce, so what the recogniser makes
    of it bounds every model's speech score."""

    def __init__(self, codec_preset: str = "tiny") -> None:
        super().__init__()
        self.codec_preset = codec_preset
        self.label = f"oracle (through the {codec_preset} audio path)"
        self.pcm: dict[str, np.ndarray] = {}

    def open(self, session: Session) -> None:
        from microturn.gym.asr import through_model_codec

        super().open(session)
        self.pcm[session.session_id] = through_model_codec(session.target_pcm, self.codec_preset)

    def close(self, session_id: str) -> None:
        super().close(session_id)
        self.pcm.pop(session_id, None)

    def step(self, inputs: list[tuple[str, int]]) -> list[OutChunk]:
        out = super().step(inputs)
        for (sid, k), chunk in zip(inputs, out, strict=True):
            chunk.pcm = self.pcm[sid][k * CHUNK_SAMPLES : (k + 1) * CHUNK_SAMPLES].copy()
        return out


class StreamOracleResponder(OracleResponder):
    """The oracle with its text spelled through the model's text-out budget (``per_chunk`` tokens
    per micro-turn, see ``Session.text_out_tokens``): what a perfectly trained model could score."""

    def __init__(self, per_chunk: int = 3) -> None:
        super().__init__()
        self.per_chunk = per_chunk
        self.label = f"oracle ({per_chunk}-token text stream)"
        self.tokens: dict[str, list[list[int]]] = {}
        self.in_span: dict[str, bytearray | None] = {}

    def open(self, session: Session) -> None:
        super().open(session)
        self.tokens[session.session_id] = session.text_out_tokens(self.per_chunk)
        self.in_span[session.session_id] = None

    def close(self, session_id: str) -> None:
        super().close(session_id)
        self.tokens.pop(session_id, None)
        self.in_span.pop(session_id, None)

    def step(self, inputs: list[tuple[str, int]]) -> list[OutChunk]:
        from microturn.model import tokens as tk

        out = super().step(inputs)
        for (sid, k), chunk in zip(inputs, out, strict=True):
            text, delegations = bytearray(), []
            for t in self.tokens[sid][k]:
                span = self.in_span[sid]
                if t == tk.DELEG_START:
                    self.in_span[sid] = bytearray()
                elif t == tk.DELEG_END and span is not None:
                    delegations.append(span.decode())
                    self.in_span[sid] = None
                elif t < tk.N_BYTES:
                    (span if span is not None else text).append(t)
            chunk.text, chunk.delegations = text.decode(errors="replace"), delegations
        return out


class Utterance:
    """Speech queued for output: model-voice words laid out from a chunk on, cut on demand."""

    def __init__(self, words: tuple[str, ...], chunk: int) -> None:
        self.start_chunk = chunk
        pcm: list[np.ndarray] = [np.zeros(MODEL_ONSET_SAMPLES, np.int16)]
        self.onsets: dict[int, list[str]] = {}
        at = MODEL_ONSET_SAMPLES
        for w in words:
            self.onsets.setdefault(chunk + at // CHUNK_SAMPLES, []).append(w)
            seg = render_word(w, MODEL_VOICE)
            pcm += [seg, np.zeros(MODEL_WORD_GAP, np.int16)]
            at += len(seg) + MODEL_WORD_GAP
        self.pcm = np.concatenate(pcm)

    def chunk(self, k: int) -> tuple[np.ndarray, str]:
        i = (k - self.start_chunk) * CHUNK_SAMPLES
        seg = self.pcm[i : i + CHUNK_SAMPLES]
        return np.pad(seg, (0, CHUNK_SAMPLES - len(seg))), "".join(w + " " for w in self.onsets.get(k, []))

    def done(self, k: int) -> bool:
        return (k - self.start_chunk) * CHUNK_SAMPLES >= len(self.pcm)


class StreamingVad:
    """silero-vad over a 16 kHz stream, 512-sample windows, with end-of-turn hysteresis.

    ``feed`` returns (speech_started, speech_ended) for the chunk: ended means the user has been
    quiet for ``min_silence_ms`` after speaking (the harness's end-of-turn decision).
    """

    WINDOW = 512

    def __init__(self, threshold: float = 0.5, min_silence_ms: int = 500) -> None:
        import torch
        from silero_vad import load_silero_vad

        self._torch = torch
        self.model = load_silero_vad()
        self.threshold = threshold
        self.min_silence = min_silence_ms * 16
        self.buffer = np.zeros(0, np.float32)
        self.speaking = False
        self.quiet = 0

    def feed(self, pcm: np.ndarray) -> tuple[bool, bool]:
        started = ended = False
        self.buffer = np.concatenate([self.buffer, pcm.astype(np.float32) / 32768])
        while len(self.buffer) >= self.WINDOW:
            window, self.buffer = self.buffer[: self.WINDOW], self.buffer[self.WINDOW :]
            with self._torch.no_grad():
                p = float(self.model(self._torch.from_numpy(window), 16000))
            if p >= self.threshold:
                started |= not self.speaking
                self.speaking, self.quiet = True, 0
            elif self.speaking:
                self.quiet += self.WINDOW
                if p < self.threshold - 0.15 and self.quiet >= self.min_silence:
                    self.speaking, ended = False, True
        return started, ended


@dataclass
class _TurnState:
    vad: StreamingVad
    pending: list[TurnReply]
    queued_text: list[TurnReply] = field(default_factory=list)
    utterance: Utterance | None = None
    speaking_replies: list[TurnReply] = field(default_factory=list)


class TurnBasedResponder(_PerSession):
    """The harness baseline: silero-vad decides when the user's turn ended, then an ideal
    turn-based model answers with the session's planned reply for that turn (content is given
    for free, zero processing delay); it stops talking when the VAD hears the user barge in.

    Its losses are therefore only what the turn-based structure costs: it cannot speak at a
    requested time, react to video, talk while listening, or tell a pause from an end of turn.
    """

    label = "turn-based (silero-vad)"

    def __init__(self, min_silence_ms: int = 500) -> None:
        super().__init__()
        self.min_silence_ms = min_silence_ms
        self.state: dict[str, _TurnState] = {}

    def open(self, session: Session) -> None:
        super().open(session)
        self.state[session.session_id] = _TurnState(
            StreamingVad(min_silence_ms=self.min_silence_ms), list(session.plan)
        )

    def close(self, session_id: str) -> None:
        super().close(session_id)
        self.state.pop(session_id, None)

    def step(self, inputs: list[tuple[str, int]]) -> list[OutChunk]:
        return [self._step(sid, k) for sid, k in inputs]

    def _step(self, sid: str, k: int) -> OutChunk:
        s, st = self._session(sid), self.state[sid]
        pcm = s.input_chunk(k)[0]
        started, ended = st.vad.feed(pcm)
        if started and st.utterance is not None:  # barge-in: stop talking
            st.utterance = None
            # an answer cut off inside the user's own turn (a pause take-over) is given again later
            st.pending += [r for r in st.speaking_replies if r.trigger == "speech" and r.end >= k]
        replies: list[TurnReply] = []
        if ended:
            replies = [r for r in st.pending if r.trigger == "speech" and r.end <= k]
            if not replies:  # end-of-turn inside a turn (a pause): answer prematurely
                replies = [r for r in st.pending if r.trigger == "speech" and r.start <= k][:1]
        # typed text and updates are read a few bytes per micro-turn: answered once read in full (end)
        st.queued_text += [r for r in st.pending if r.trigger in ("text", "background") and r.end == k]
        if st.queued_text and not st.vad.speaking and st.utterance is None:
            replies += st.queued_text
        for r in replies:
            if r in st.pending:
                st.pending.remove(r)
            if r in st.queued_text:
                st.queued_text.remove(r)
        delegations = [r.delegate for r in replies if r.delegate]
        words = tuple(w for r in replies for w in r.words)
        if words:
            st.utterance, st.speaking_replies = Utterance(words, k), replies
        out = silent_chunk()
        out.delegations, out.model_version = delegations, "turn-based"
        if st.utterance is not None:
            out.pcm, out.text = st.utterance.chunk(k)
            if st.utterance.done(k + 1):
                st.utterance = None
        return out
