"""The streaming engine: session slots, validation, text queues, events; one batched step per tick.

The engine is the scheduler half (host bookkeeping, Python objects); ``executor.Executor`` is the device
half (preallocated tensors). A session's outputs are a pure function of (model, seed, its input chunks):
sampling noise comes from a per-slot generator reseeded from (seed, chunk index) every step, and every
row's computation reads only its own slot, so neither batch composition nor replay changes them.
"""

from __future__ import annotations

import codecs
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
    InvalidChunkError,
    SpeakingChanged,
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
        record: bool = False,
        moe_gather_max_tokens: int | None = None,
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
        self.ex = Executor(self.model, num_slots, self.device, moe_gather_max_tokens)
        self.sessions: dict[str, SessionState] = {}
        self._free = list(range(num_slots))
        self.record = record
        self.records: dict[str, list[dict[str, object]]] = {}
        lay = self.layout
        self._rel_pre = np.arange(lay.out_marker + 1, dtype=np.int64)
        self._rel_dec = np.array(
            [lay.text_out + j for j in range(lay.n_text_out)]
            + [lay.audio_out + j for j in range(lay.n_audio_out - 1)],
            dtype=np.int64,
        )
        self._h_off = np.arange(self.ex.nkv, dtype=np.int64) * self.ex.ctx

    # ---- properties -------------------------------------------------------------------------------
    @property
    def model_version(self) -> str:
        return self.model.version

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def slot_bytes(self) -> int:
        """Device memory one slot owns (KV ring + ring positions + audio/vocoder history)."""
        ex = self.ex
        per = lambda t, n: t.element_size() * t.numel() // n  # noqa: E731
        return (
            per(ex.k_cache, ex.num_slots + 1)
            + per(ex.v_cache, ex.num_slots + 1)
            + per(ex.ring_pos, ex.num_slots + 1)
            + per(ex.audio_hist, ex.num_slots)
            + per(ex.voc_tail, ex.num_slots)
            + per(ex.pending, ex.num_slots)
        )

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
        if self.record:
            self.records[session_id] = []

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
        if not inputs:
            return []
        seen: set[str] = set()
        sess: list[SessionState] = []
        for c in inputs:
            s = self._get(c.session_id)
            if c.session_id in seen:
                raise InvalidChunkError(f"session_id: {c.session_id!r} appears twice in one step")
            seen.add(c.session_id)
            self.validate(c)
            sess.append(s)
        ex, lay, cfg = self.ex, self.layout, self.cfg
        slots = np.array([s.slot for s in sess], dtype=np.int64)
        lo = int(slots.min())
        rows = int(slots.max()) - lo + 1
        P, S, T, ring, nkv, ctx, trash = ex.P, ex.S, ex.T, ex.ring, ex.nkv, ex.ctx, ex.trash

        # stage inputs
        ex.h_has_video[:rows] = False
        ex.h_text[:rows] = tk.PAD
        part = np.zeros(rows, dtype=bool)
        base = np.zeros(rows, dtype=np.int64)
        pend = np.full(rows, -1, dtype=np.int64)
        seeds: list[tuple[int, int]] = []
        for c, s in zip(inputs, sess, strict=True):
            r = s.slot - lo
            part[r] = True
            np.copyto(ex.h_pcm[r], c.pcm)
            if c.video is not None and c.video.shape[0] > 0:
                np.copyto(ex.h_video[r], c.video[-1])
                ex.h_has_video[r] = True
            for t in c.text:
                s.queue.extend(tk.encode_text(t))
            for t in c.background:
                s.queue.extend(tk.encode_background(t))
            for j in range(min(lay.n_text_in, len(s.queue))):
                ex.h_text[r, j] = s.queue.popleft()
            base[r] = S + int(c.chunk_index) * T
            if s.last_index is not None:
                pend[r] = S + (s.last_index + 1) * T - 1
            seeds.append((r, step_seed(s.seed, int(c.chunk_index))))
        # positions and write indices (holes and the missing pending token of a first chunk go to trash)
        slot_col = (lo + np.arange(rows, dtype=np.int64))[:, None]
        pos_pre = base[:, None] + np.concatenate([[-1], self._rel_pre])[None]
        pos_pre[:, 0] = pend
        valid_pre = np.repeat(part[:, None], P, axis=1)
        valid_pre[:, 0] &= pend >= 0
        pos_pre[~valid_pre] = 0
        pos_dec = (base[:, None] + self._rel_dec[None]).T.copy()  # [n_dec, rows]
        pos_dec[:, ~part] = 0
        for blk, pos, valid, ws in (
            (0, pos_pre, valid_pre, np.where(valid_pre, slot_col, trash)),
            *(
                (1 + j, pos_dec[j][:, None], part[:, None], np.where(part, slot_col[:, 0], trash)[:, None])
                for j in range(ex.n_dec)
            ),
        ):
            del valid
            ring_i = S + (pos - S) % ring
            n = pos.size
            ex.h_pos[blk, :n] = pos.reshape(-1)
            ex.h_rpidx[blk, :n] = (ws * ctx + ring_i).reshape(-1)
            ex.h_kvidx[blk, : n * nkv] = ((ws * nkv * ctx + ring_i)[..., None] + self._h_off).reshape(-1)
        pr = np.nonzero(part)[0]
        ex.h_part[0, : len(pr)] = pr
        ex.h_part[1, : len(pr)] = pr + lo

        if self.record:
            ex.records = []
        ex.run(lo, rows, len(pr), seeds)

        outputs = []
        for c, s in zip(inputs, sess, strict=True):
            r = s.slot - lo
            events: list[EngineEvent] = []
            ids = [int(ex.h_ids[j, r]) for j in range(lay.n_text_out)]
            text = self._parse_text(s, ids, events)
            speaking = bool(ex.h_energy[r] > self.speaking_threshold)
            if speaking != s.speaking:
                s.speaking = speaking
                events.append(SpeakingChanged(speaking=speaking))
            s.last_index = int(c.chunk_index)
            outputs.append(
                ChunkOutput(
                    session_id=c.session_id,
                    chunk_index=int(c.chunk_index),
                    pcm=ex.h_pcm_out[r].copy(),
                    text=text,
                    events=events,
                    model_version=self.model_version,
                )
            )
            if self.record and ex.records:
                rec: dict[str, object] = {k: v[r].clone() for k, v in ex.records[0].items()}
                rec["text_in"] = ex.t_text[r].clone()
                rec["text_out"] = torch.tensor(ids)
                rec["audio_out"] = ex.lb(
                    "aout", rows, lay.n_audio_out, cfg.frames_per_audio_token, cfg.n_mels
                )[r].clone()
                rec["has_video"] = bool(ex.h_has_video[r])
                self.records[c.session_id].append(rec)
        if self.record:
            ex.records = None
        return outputs

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
