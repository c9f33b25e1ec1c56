"""The streaming engine: session slots, validation, text queues, events; one batched step per tick.

The engine is the scheduler half (host bookkeeping, Python objects); ``executor.Executor`` is the device
half (preallocated tensors). A session's outputs are a pure function of (model, seed, its input chunks):
sampling noise comes from a per-slot generator reseeded from (seed, chunk index) every step, and every
row's computation reads only its own slot, so neither batch composition nor replay changes them.
"""

from __future__ import annotations

import codecs
import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from microturn.engine.executor import Executor
from microturn.engine.types import (
    ChunkInput,
    ChunkOutput,
    DelegationOpened,
    EngineError,
    EngineEvent,
    EngineFullError,
    ForcedTurn,
    InvalidChunkError,
    ResumePoint,
    SpeakingChanged,
    StepObserver,
    StepPlan,
    StepResult,
    UnknownSessionError,
)
from microturn.model import tokens as tk
from microturn.model.model import InteractionModel
from microturn.protocol.chunks import validate_session_id

MASK64 = (1 << 64) - 1


def step_seed(seed: int, chunk_index: int) -> int:
    """splitmix64 of (seed, chunk index): the sampling seed of one micro-turn of one session."""
    z = (seed * 0x9E3779B97F4A7C15 + chunk_index + 1) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


@dataclass
class SessionState:
    """Host-side state of one session (everything besides the slot's tensors)."""

    session_id: str
    seed: int
    slot: int
    last_index: int | None = None
    queue: deque[int] = field(default_factory=deque)
    in_delegation: bool = False
    delegation: bytearray = field(default_factory=bytearray)
    speaking: bool = False
    resuming: bool = False  # being rebuilt by resume_steps: no live step yet
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace")
    )

    def snapshot(self) -> dict[str, object]:
        return {
            "last_index": self.last_index,
            "queue": list(self.queue),
            "in_delegation": self.in_delegation,
            "delegation": bytes(self.delegation),
            "speaking": self.speaking,
            "decoder": self.decoder.getstate(),
        }


class Engine:
    """A fixed pool of session slots served by one batched step per tick."""

    def __init__(
        self,
        model: InteractionModel,
        num_slots: int,
        *,
        device: str | torch.device = "cpu",
        text_queue_limit: int = 4096,
        max_video_frames: int = 30,
        delegation_max_bytes: int = 2048,
        speaking_threshold: float = -5.0,
        moe_gather_max_tokens: int | None = None,
        observer: StepObserver | None = None,
        precision: str = "fp32",
    ):
        if num_slots < 1:
            raise EngineError(f"num_slots must be >= 1, got {num_slots}")
        if text_queue_limit < 1:
            raise EngineError(f"text_queue_limit must be >= 1, got {text_queue_limit}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.cfg, self.layout = model.cfg, model.layout
        self.num_slots = num_slots
        self.text_queue_limit = text_queue_limit
        self.max_video_frames = max_video_frames
        self.delegation_max_bytes = delegation_max_bytes
        self.speaking_threshold = speaking_threshold
        # a model may bring its own executor (microturn.model.scripted: a test model's text script)
        executor_class = getattr(model, "executor_class", None) or Executor
        self.ex = executor_class(
            self.model, num_slots, self.device, moe_gather_max_tokens, precision=precision
        )
        self.ex.observer = observer
        self.sessions: dict[str, SessionState] = {}
        self._free = list(range(num_slots))

    # ---- properties -------------------------------------------------------------------------------
    @property
    def model_version(self) -> str:
        return self.model.version

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def slot_bytes(self) -> int:
        """Device memory one slot owns (KV ring + ring positions + audio/vocoder history)."""
        return self.ex.slot_bytes()

    # ---- lifecycle --------------------------------------------------------------------------------
    def open(self, session_id: str, seed: int) -> None:
        try:
            validate_session_id(session_id)
        except ValueError as e:
            raise EngineError(f"session_id: {e}") from e
        if session_id in self.sessions:
            raise EngineError(f"session {session_id!r} is already open")
        if not isinstance(seed, int) or seed < 0:
            raise EngineError(f"seed must be a non-negative int, got {seed!r}")
        if not self._free:
            raise EngineFullError(f"all {self.num_slots} session slots are in use")
        self._free.sort()
        slot = self._free.pop(0)  # lowest first: active sessions stay in a compact slot range
        self.ex.reset_slot(slot)
        self.sessions[session_id] = SessionState(session_id=session_id, seed=seed, slot=slot)

    def close(self, session_id: str) -> None:
        s = self._get(session_id)
        del self.sessions[session_id]
        self._free.append(s.slot)

    def replay(self, session_id: str, seed: int, chunks: Sequence[ChunkInput]) -> None:
        """Rebuild a session from its logged input chunks (outputs are discarded). Replaying from the
        session's first chunk reproduces the slot exactly; any open session of that id is replaced."""
        for c in chunks:
            if c.session_id != session_id:
                raise InvalidChunkError(
                    f"session_id: replay of {session_id!r} got a chunk of {c.session_id!r}"
                )
        if session_id in self.sessions:
            self.close(session_id)
        self.open(session_id, seed)
        try:
            for c in chunks:
                self.step([c])
        except Exception:
            self.close(session_id)
            raise

    def _get(self, session_id: str) -> SessionState:
        s = self.sessions.get(session_id)
        if s is None:
            raise UnknownSessionError(f"unknown session {session_id!r}")
        return s

    def text_room(self, session_id: str) -> int:
        """Text-in tokens the session's queue can still take (its limit minus what is queued)."""
        return self.text_queue_limit - len(self._get(session_id).queue)

    # ---- validation -------------------------------------------------------------------------------
    def validate(self, chunk: ChunkInput) -> None:
        """Raise InvalidChunkError naming the field and limit; never touches the slot."""
        cfg = self.cfg
        if not isinstance(chunk.session_id, str) or not chunk.session_id:
            raise InvalidChunkError(f"session_id: must be a non-empty string, got {chunk.session_id!r}")
        if not isinstance(chunk.chunk_index, int | np.integer) or chunk.chunk_index < 0:
            raise InvalidChunkError(f"chunk_index: must be a non-negative int, got {chunk.chunk_index!r}")
        if chunk.sample_rate != cfg.sample_rate:
            raise InvalidChunkError(
                f"sample_rate: the model takes {cfg.sample_rate} Hz audio, chunk is {chunk.sample_rate} Hz"
            )
        pcm, spc = chunk.pcm, cfg.samples_per_chunk
        if not isinstance(pcm, np.ndarray):
            raise InvalidChunkError(f"pcm: must be a numpy int16 array, got {type(pcm).__name__}")
        if pcm.dtype != np.int16:
            raise InvalidChunkError(f"pcm: dtype must be int16, got {pcm.dtype}")
        if pcm.ndim != 1 or pcm.shape[0] != spc:
            implied = pcm.size * 1000 // cfg.chunk_ms
            raise InvalidChunkError(
                f"pcm: expected shape ({spc},) = {cfg.chunk_ms} ms at {cfg.sample_rate} Hz mono, got {pcm.shape}"
                f" (that would be {implied} Hz: wrong sample rate or chunk length?)"
            )
        v = chunk.video
        if v is not None:
            fs = cfg.frame_size
            if not isinstance(v, np.ndarray) or v.dtype != np.uint8:
                raise InvalidChunkError("video: must be a uint8 numpy array [n_frames, H, W, 3] or None")
            if v.ndim != 4 or v.shape[1:] != (fs, fs, 3):
                raise InvalidChunkError(f"video: frames must be shaped [n, {fs}, {fs}, 3], got {v.shape}")
            if v.shape[0] > self.max_video_frames:
                raise InvalidChunkError(
                    f"video: {v.shape[0]} frames in one chunk, limit {self.max_video_frames}"
                )
        n_new = 0
        for name, items, extra in (("text", chunk.text, 0), ("background", chunk.background, 2)):
            if not isinstance(items, list | tuple) or not all(isinstance(t, str) for t in items):
                raise InvalidChunkError(f"{name}: must be a list of str")
            n_new += sum(len(t.encode("utf-8")) + extra for t in items)
        s = self.sessions.get(chunk.session_id)
        queued = len(s.queue) if s is not None else 0
        if queued + n_new > self.text_queue_limit:
            raise InvalidChunkError(
                f"text: {n_new} new text tokens with {queued} queued exceed the text-in queue limit of "
                f"{self.text_queue_limit} tokens"
            )
        if s is not None and s.last_index is not None and chunk.chunk_index <= s.last_index:
            raise InvalidChunkError(
                f"chunk_index: {chunk.chunk_index} is not after the last processed chunk {s.last_index}"
            )

    # ---- the tick ---------------------------------------------------------------------------------
    def step(self, inputs: Sequence[ChunkInput]) -> list[ChunkOutput]:
        """One live micro-turn for every input's session; any invalid input fails the whole step
        (nothing is touched). ``step_isolated`` is the per-session variant a server uses."""
        sess = self._check_batch(inputs)
        for c in inputs:
            self.validate(c)
        return self._step(inputs, sess)

    def step_isolated(self, inputs: Sequence[ChunkInput]) -> list[ChunkOutput | EngineError]:
        """One live micro-turn where each session fares on its own: an input that fails validation gets
        its error in its place and the others run; if the batched computation itself fails, each session
        is retried alone, so only the one that fails alone gets the error."""
        results: list[ChunkOutput | EngineError | None] = [None] * len(inputs)
        ok: list[int] = []
        seen: set[str] = set()
        for i, c in enumerate(inputs):
            try:
                if c.session_id in seen:
                    raise InvalidChunkError(f"session_id: {c.session_id!r} appears twice in one step")
                self._check_batch([c])
                self.validate(c)
                seen.add(c.session_id)
                ok.append(i)
            except EngineError as e:
                results[i] = e
        if ok:
            try:
                outs = self._step([inputs[i] for i in ok], self._check_batch([inputs[i] for i in ok]))
                for i, o in zip(ok, outs, strict=True):
                    results[i] = o
            except Exception:
                if len(ok) == 1:
                    results[ok[0]] = EngineError("the engine step failed for this session")
                else:
                    for i in ok:
                        results[i] = self.step_isolated([inputs[i]])[0]
        return [r for r in results if r is not None]

    def _check_batch(self, inputs: Sequence[ChunkInput]) -> list[SessionState]:
        seen: set[str] = set()
        sess: list[SessionState] = []
        for c in inputs:
            s = self._get(c.session_id)
            if c.session_id in seen:
                raise InvalidChunkError(f"session_id: {c.session_id!r} appears twice in one step")
            if s.resuming:
                raise EngineError(f"session {c.session_id!r} is still being rebuilt (resume_end first)")
            seen.add(c.session_id)
            sess.append(s)
        return sess

    def _plan(
        self,
        inputs: Sequence[ChunkInput],
        sess: list[SessionState],
        forced: Sequence[ResumePoint] | None = None,
        kv_layers: int | None = None,
    ) -> tuple[StepPlan, list[list[int]]]:
        """The step's plan, and the text-in tokens each live session takes from its queue (committed
        only once the step succeeded); touches no state."""
        n_ti = self.layout.n_text_in
        text_in: list[list[int]] = []
        taken: list[list[int]] = []
        for i, (c, s) in enumerate(zip(inputs, sess, strict=True)):
            if forced is not None:
                text_in.append([int(x) for x in forced[i].text_in_ids])
                continue
            new = itertools.chain(
                (x for t in c.text for x in tk.encode_text(t)),
                (x for t in c.background for x in tk.encode_background(t)),
            )
            take = list(itertools.islice(itertools.chain(s.queue, new), n_ti))
            taken.append(take)
            text_in.append(take + [tk.PAD] * (n_ti - len(take)))
        plan = StepPlan(
            slots=[s.slot for s in sess],
            chunk_index=[int(c.chunk_index) for c in inputs],
            prev_index=[s.last_index for s in sess],
            seeds=[step_seed(s.seed, int(c.chunk_index)) for c, s in zip(inputs, sess, strict=True)],
            pcm=[c.pcm for c in inputs],
            video=[c.video[-1] if c.video is not None and c.video.shape[0] > 0 else None for c in inputs],
            text_in=text_in,
            forced=None
            if forced is None
            else [ForcedTurn(list(rp.text_out_ids), rp.audio_out_levels) for rp in forced],
            kv_layers=kv_layers,
        )
        return plan, taken

    def _step(self, inputs: Sequence[ChunkInput], sess: list[SessionState]) -> list[ChunkOutput]:
        if not inputs:
            return []
        plan, taken = self._plan(inputs, sess)
        res: StepResult = self.ex.execute(plan)
        outputs = []
        for i, (c, s, take) in enumerate(zip(inputs, sess, taken, strict=True)):
            for t in c.text:
                s.queue.extend(tk.encode_text(t))
            for t in c.background:
                s.queue.extend(tk.encode_background(t))
            for _ in take:
                s.queue.popleft()
            events: list[EngineEvent] = []
            ids = res.text_ids[i]
            text = self._parse_text(s, ids, events)
            speaking = res.energy[i] > self.speaking_threshold
            if speaking != s.speaking:
                s.speaking = speaking
                events.append(SpeakingChanged(speaking=speaking))
            s.last_index = int(c.chunk_index)
            outputs.append(
                ChunkOutput(
                    session_id=c.session_id,
                    chunk_index=int(c.chunk_index),
                    pcm=res.pcm[i],
                    text=text,
                    events=events,
                    model_version=self.model_version,
                    resume=ResumePoint(
                        text_in_ids=plan.text_in[i],
                        text_out_ids=ids,
                        audio_out_levels=res.audio_out_levels[i],
                        queued_text_ids=list(s.queue),
                        in_delegation=s.in_delegation,
                        delegation=bytes(s.delegation),
                        speaking=s.speaking,
                        decoder_pending=s.decoder.getstate()[0],
                        vocoder_tail=res.vocoder_tail[i],
                    ),
                )
            )
        return outputs

    # ---- rebuilding a session from resume points -------------------------------------------------
    @property
    def resume_span(self) -> int:
        """Micro-turns a rebuild needs: the KV ring of L layers of sliding-window attention over W turns
        depends only on the last L*W turns (each layer reaches W turns further back), plus the turn before
        them, whose fed-back audio and audio history the first of them reads."""
        return self.cfg.n_layers * self.cfg.window_turns + 1

    def validate_resume(self, rp: ResumePoint) -> None:
        """Raise InvalidChunkError unless ``rp`` could have come from this model (it crosses a trust
        boundary: clients keep it and send it back)."""
        lay, cfg = self.layout, self.cfg
        n_lev = lay.n_audio_out * cfg.frames_per_audio_token * cfg.n_mels
        for name, ids, n in (
            ("text_in_ids", rp.text_in_ids, lay.n_text_in),
            ("text_out_ids", rp.text_out_ids, lay.n_text_out),
            ("queued_text_ids", rp.queued_text_ids, None),
        ):
            if (n is not None and len(ids) != n) or any(not 0 <= int(i) < tk.VOCAB_SIZE for i in ids):
                raise InvalidChunkError(
                    f"resume.{name}: {len(ids)} ids, need {n if n is not None else 'any number of'} "
                    f"ids in [0, {tk.VOCAB_SIZE})"
                )
        if len(rp.queued_text_ids) > self.text_queue_limit:
            raise InvalidChunkError(
                f"resume.queued_text_ids: {len(rp.queued_text_ids)} > text queue limit {self.text_queue_limit}"
            )
        lev = rp.audio_out_levels
        if lev.dtype != np.uint8 or lev.shape != (n_lev,) or int(lev.max(initial=0)) >= cfg.n_levels:
            raise InvalidChunkError(f"resume.audio_out_levels: need {n_lev} levels in [0, {cfg.n_levels})")
        if len(rp.delegation) > self.delegation_max_bytes or len(rp.decoder_pending) > 3:
            raise InvalidChunkError("resume.delegation / decoder_pending: too long")
        tail = rp.vocoder_tail
        if tail.shape != (self.model.vocoder.tail_len,) or not np.all(np.abs(tail) <= 4.0):
            raise InvalidChunkError(
                f"resume.vocoder_tail: need {self.model.vocoder.tail_len} finite samples in [-4, 4]"
            )

    def resume_begin(self, session_id: str, seed: int) -> None:
        """Open a slot for a session that ``resume_steps`` will rebuild (it takes no live step until
        ``resume_end``); any open session of that id is replaced."""
        if session_id in self.sessions:
            self.close(session_id)
        self.open(session_id, seed)
        self.sessions[session_id].resuming = True

    def kv_layers(self, remaining: int) -> int:
        """Layers whose KV a forced micro-turn must write when ``remaining`` more follow before the
        session goes live: layer l's KV of a turn is read only while it is within (L - l + 1) * W turns
        of the end, so early turns of a span need only the lower layers (the first W only layer 1)."""
        L, W = self.cfg.n_layers, self.cfg.window_turns
        return max(1, min(L, L + 1 - -(-remaining // W)))

    def resume_steps(
        self, items: Sequence[tuple[ChunkInput, ResumePoint]], remaining: Sequence[int] | None = None
    ) -> None:
        """One teacher-forced micro-turn for each of several rebuilding sessions (one item each);
        ``remaining[i]``: the forced turns still to come for item i's session (default 0: all layers)."""
        if not items:
            return
        remaining = list(remaining) if remaining is not None else [0] * len(items)
        sess: list[SessionState] = []
        for c, rp in items:
            s = self._get(c.session_id)
            if not s.resuming or c.session_id in {x.session_id for x in sess}:
                raise EngineError(f"session {c.session_id!r} is not being rebuilt, or appears twice")
            self.validate(c)
            self.validate_resume(rp)
            sess.append(s)
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(remaining):
            groups.setdefault(self.kv_layers(r), []).append(i)
        for n_layers, idx in groups.items():
            inputs = [items[i][0] for i in idx]
            plan, _ = self._plan(inputs, [sess[i] for i in idx], [items[i][1] for i in idx], n_layers)
            self.ex.execute(plan)
            for c, i in zip(inputs, idx, strict=True):
                sess[i].last_index = int(c.chunk_index)

    def resume_end(self, session_id: str, last: ResumePoint) -> None:
        """Finish a rebuild: the host state and vocoder tail the last rebuilt micro-turn ended in."""
        s = self._get(session_id)
        self.validate_resume(last)
        s.queue = deque(last.queued_text_ids)
        s.in_delegation, s.delegation = last.in_delegation, bytearray(last.delegation)
        s.speaking = last.speaking
        s.decoder.setstate((last.decoder_pending, 0))
        self.ex.set_vocoder_tail(s.slot, last.vocoder_tail)
        s.resuming = False

    def resume(self, session_id: str, seed: int, span: Sequence[tuple[ChunkInput, ResumePoint]]) -> None:
        """Rebuild a session from its last ``resume_span`` (or fewer, from chunk 0) input chunks and the
        resume points of their outputs; earlier items of ``span`` are skipped. The slot then continues as
        the live one would have (within float rounding); any open session of that id is replaced."""
        span = list(span)[-self.resume_span :]
        if not span:
            raise EngineError("resume needs at least one chunk")
        self.resume_begin(session_id, seed)
        try:
            for i, item in enumerate(span):
                self.resume_steps([item], [len(span) - 1 - i])
            self.resume_end(session_id, span[-1][1])
        except Exception:
            self.close(session_id)
            raise

    def _parse_text(self, s: SessionState, ids: list[int], events: list[EngineEvent]) -> str:
        """Text-out tokens -> transcript text; a closed delegation span becomes an event."""
        out = []
        for i in ids:
            if i == tk.DELEG_START:
                s.in_delegation = True
                s.delegation.clear()
            elif i == tk.DELEG_END:
                if s.in_delegation:
                    req = bytes(s.delegation).decode("utf-8", errors="replace")
                    events.append(DelegationOpened(request=req))
                s.in_delegation = False
                s.delegation.clear()
            elif i < tk.N_BYTES:
                if s.in_delegation:
                    if len(s.delegation) < self.delegation_max_bytes:
                        s.delegation.append(i)
                else:
                    out.append(s.decoder.decode(bytes([i])))
        return "".join(out)
