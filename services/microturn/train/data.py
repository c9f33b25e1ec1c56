"""Gym sessions -> model-ready training batches.

A session is rendered by the gym and featurised once (dMel levels of the input and target audio, text-in
and text-out token ids exactly as the engine would see them), then cached as one ``.npz`` per session
under ``$MICROTURN_CACHE_DIR/train/<feature key>/`` and kept in a small in-memory LRU. Featurising is
the expensive part of a batch; caching it means each step only gathers and pads arrays.

Batches are a pure function of ``(seed, step)`` (``sample_batch``), so a resumed run sees exactly the
batches it would have seen without stopping.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from microturn.model import ModelConfig, TurnBatch
from microturn.model import tokens as tk
from microturn.model.dmel import DMel

# validation sessions: below the held-out eval seeds (gym.eval.EVAL_SEED_BASE), far above training seeds
VAL_SEED_BASE = 900_000


@dataclass(frozen=True)
class Example:
    """One featurised session, chunk axis first (n = number of micro-turns)."""

    family: str
    seed: int
    levels_in: np.ndarray  # uint8 [n * frames_per_chunk, n_mels]: dMel levels of the user audio
    video: np.ndarray  # uint8 [n, H, W, 3]: the frame at each chunk's end
    text_in: np.ndarray  # int16 [n, n_text_in]: typed text / background updates through the engine's queue
    text_out: np.ndarray  # int16 [n, n_text_out]: ``Session.text_out_tokens``
    levels_out: np.ndarray  # uint8 [n, n_audio_out, frames_per_audio_token, n_mels]: the model-voice target
    speaking: np.ndarray  # bool [n]: target speech audible in the chunk

    @property
    def n_turns(self) -> int:
        return len(self.text_out)


def feature_key(cfg: ModelConfig) -> str:
    """The config fields a featurised session depends on (the cache directory name)."""
    fields = ("sample_rate", "chunk_ms", "hop", "win", "n_mels", "n_levels", "log_min", "log_max")
    fields += ("frames_per_audio_token", "frame_size", "n_text_in", "n_text_out")
    d = {f: getattr(cfg, f) for f in fields}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def text_in_tokens(text_in: list[list[str]], background_in: list[list[str]], per_chunk: int) -> np.ndarray:
    """Typed text and background updates through a FIFO queue, ``per_chunk`` tokens per micro-turn,
    ``<pad>`` when empty: what ``Engine.step`` feeds the model."""
    queue: list[int] = []
    out = np.full((len(text_in), per_chunk), tk.PAD, dtype=np.int16)
    for k, (typed, bg) in enumerate(zip(text_in, background_in, strict=True)):
        for t in typed:
            queue += tk.encode_text(t)
        for t in bg:
            queue += tk.encode_background(t)
        take, queue = queue[:per_chunk], queue[per_chunk:]
        out[k, : len(take)] = take
    return out


def render_example(family: str, seed: int, cfg: ModelConfig, dmel: DMel | None = None) -> Example:
    """Generate one gym session and featurise it for ``cfg``."""
    from microturn.gym import generate

    s = generate(family, seed)
    dmel = DMel(cfg) if dmel is None else dmel
    n = s.num_chunks
    with torch.no_grad():
        lin = dmel.levels(torch.from_numpy(s.pcm_in)[None])[0]
        lout = dmel.levels(torch.from_numpy(s.target_pcm)[None])[0]
    fpt = cfg.frames_per_audio_token
    return Example(
        family=family,
        seed=seed,
        levels_in=lin.to(torch.uint8).numpy(),
        video=np.ascontiguousarray(s.video[:, -1]),
        text_in=text_in_tokens(s.text_in, s.background_in, cfg.n_text_in),
        text_out=np.asarray(s.text_out_tokens(cfg.n_text_out), dtype=np.int16),
        levels_out=lout.to(torch.uint8).numpy().reshape(n, cfg.frames_per_chunk // fpt, fpt, cfg.n_mels),
        speaking=s.target_speaking().astype(bool),
    )


def cache_root() -> Path:
    return Path(os.environ.get("MICROTURN_CACHE_DIR", ".state/cache")) / "train"


class SessionBank:
    """Featurised sessions by (family, seed): memory LRU, then the on-disk cache, then the gym."""

    def __init__(self, cfg: ModelConfig, cache_dir: Path | None = None, memory: int = 1024) -> None:
        self.cfg = cfg
        self.dir = (cache_root() if cache_dir is None else cache_dir) / feature_key(cfg)
        self.memory = memory
        self._lru: OrderedDict[tuple[str, int], Example] = OrderedDict()
        self._dmel = DMel(cfg)
        self.rendered = 0  # sessions rendered by this process (cache misses)

    def path(self, family: str, seed: int) -> Path:
        return self.dir / f"{family}-{seed}.npz"

    def get(self, family: str, seed: int) -> Example:
        from microturn.gym.eval import EVAL_SEED_BASE

        if not 0 <= seed < EVAL_SEED_BASE:
            raise ValueError(f"seed {seed}: training and validation seeds must be in [0, {EVAL_SEED_BASE})")
        key = (family, seed)
        if key in self._lru:
            self._lru.move_to_end(key)
            return self._lru[key]
        p = self.path(family, seed)
        if p.is_file():
            with np.load(p) as z:
                ex = Example(family, seed, **{k: z[k] for k in z.files})
        else:
            ex = render_example(family, seed, self.cfg, self._dmel)
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = p.with_suffix(".tmp.npz")
            arrays = {k: getattr(ex, k) for k in ("levels_in", "video", "text_in", "text_out")}
            arrays |= {"levels_out": ex.levels_out, "speaking": ex.speaking}
            np.savez_compressed(tmp, **arrays)
            tmp.replace(p)
            self.rendered += 1
        self._lru[key] = ex
        if len(self._lru) > self.memory:
            self._lru.popitem(last=False)
        return ex


def loss_weights(
    text_out: np.ndarray, speaking: np.ndarray, onset: float, speech: float, flow_onset: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-slot text weights [n, n_text_out] and per-chunk flow weights [n] for one session.

    A text-out slot that starts a span (a non-``<sil>`` token right after ``<sil>``, or first in the
    session) is a "start speaking" event and gets ``onset``; the rest of a span gets ``speech``;
    ``<sil>`` gets 1. The audio of a chunk where the target speech becomes audible gets ``flow_onset``.
    """
    flat = text_out.reshape(-1)
    voiced = flat != tk.SIL
    prev_voiced = np.concatenate([[False], voiced[:-1]])
    w = np.where(voiced, np.where(prev_voiced, speech, onset), 1.0).astype(np.float32)
    prev_speaking = np.concatenate([[False], speaking[:-1]])
    fw = np.where(speaking & ~prev_speaking, flow_onset, 1.0).astype(np.float32)
    return w.reshape(text_out.shape), fw


@dataclass
class TrainBatch:
    """A model batch plus what the objective needs: per-slot loss weights (0 on padding)."""

    turns: TurnBatch
    text_weight: Tensor  # float [B, n, n_text_out]
    flow_weight: Tensor  # float [B, n] (per chunk; each of its audio-out tokens)
    pos_offset: int  # micro-turns to shift every position by (sinks stay at 0 .. S-1)
    n_real_turns: int  # unpadded micro-turns in the batch (for tokens/s)

    def to(self, device: torch.device | str) -> TrainBatch:
        t = self.turns
        turns = TurnBatch(
            **{
                k: (getattr(t, k).to(device, non_blocking=True) if getattr(t, k) is not None else None)
                for k in ("pcm", "video", "has_video", "text_in", "text_out", "audio_out", "audio_in_levels")
            }
        )
        return TrainBatch(
            turns,
            self.text_weight.to(device),
            self.flow_weight.to(device),
            self.pos_offset,
            self.n_real_turns,
        )


def collate(
    examples: list[Example],
    starts: list[int],
    n: int,
    cfg: ModelConfig,
    weights: tuple[float, float, float],
    pos_offset: int = 0,
) -> TrainBatch:
    """Crop each example to ``[start, start + n)`` and pad the rest with silent, masked micro-turns."""
    b, fpc, lay_text_in, lay_text_out = len(examples), cfg.frames_per_chunk, cfg.n_text_in, cfg.n_text_out
    ex0 = examples[0]
    levels_in = np.zeros((b, n * fpc, cfg.n_mels), np.int64)
    video = np.zeros((b, n, *ex0.video.shape[1:]), np.uint8)
    has_video = np.zeros((b, n), bool)
    text_in = np.full((b, n, lay_text_in), tk.PAD, np.int64)
    text_out = np.full((b, n, lay_text_out), tk.SIL, np.int64)
    levels_out = np.zeros((b, n, *ex0.levels_out.shape[1:]), np.int64)
    tw = np.zeros((b, n, lay_text_out), np.float32)
    fw = np.zeros((b, n), np.float32)
    real = 0
    for i, (ex, s0) in enumerate(zip(examples, starts, strict=True)):
        m = min(n, ex.n_turns - s0)
        if m <= 0:
            raise ValueError(f"crop start {s0} is past the end of {ex.family}-{ex.seed} ({ex.n_turns} turns)")
        sl = slice(s0, s0 + m)
        levels_in[i, : m * fpc] = ex.levels_in[s0 * fpc : (s0 + m) * fpc]
        video[i, :m] = ex.video[sl]
        has_video[i, :m] = True
        text_in[i, :m] = ex.text_in[sl]
        text_out[i, :m] = ex.text_out[sl]
        levels_out[i, :m] = ex.levels_out[sl]
        # weights see the whole session so an onset at the crop boundary is judged by its true past
        w, f = loss_weights(ex.text_out, ex.speaking, *weights)
        tw[i, :m], fw[i, :m] = w[sl], f[sl]
        real += m
    turns = TurnBatch(
        pcm=torch.zeros(b, 0, dtype=torch.int16),  # unused: audio_in_levels is given
        video=torch.from_numpy(video),
        has_video=torch.from_numpy(has_video),
        text_in=torch.from_numpy(text_in),
        text_out=torch.from_numpy(text_out),
        audio_out=torch.from_numpy(levels_out),
        audio_in_levels=torch.from_numpy(levels_in),
    )
    return TrainBatch(turns, torch.from_numpy(tw), torch.from_numpy(fw), pos_offset, real)


def batch_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """The random stream of one step (data order, crops, offsets): a pure function of its arguments."""
    return np.random.default_rng([seed, step, stream])


def group_rng(seed: int, step: int, group: int) -> tuple[np.random.Generator, int]:
    """The stream that draws step ``step``'s length group, and the step's batch index in it (for
    ``plan_batch``; a group of 1 is the step's own stream, as without grouping)."""
    if group == 1:
        return batch_rng(seed, step), 0
    return batch_rng(seed, step // group, stream=3), step % group


@dataclass(frozen=True)
class Crop:
    family: str
    seed: int
    start: int  # first micro-turn
    turns: int  # micro-turns taken


def plan_batch(
    n_turns: Callable[[str, int], int],
    families: list[str],
    seeds: range,
    batch_size: int,
    max_turns: int,
    rng: np.random.Generator,
    group: int = 1,
    index: int = 0,
) -> list[Crop]:
    """Which sessions a batch takes, and where (``n_turns(family, seed)``: a session's length).

    ``batch_size`` random sessions (family and seed uniform), each whole when it fits in
    ``max_turns``; longer ones are cropped at the start half the time (the instruction is there) and at
    a random place otherwise. Length grouping: ``rng`` draws ``group`` batches' worth of crops, sorted
    by length, and this is the ``index``-th batch of them. Every session is still drawn uniformly;
    only which ones share a batch changes, so a batch pads its short sessions to a length close to
    theirs, not to the longest of ``batch_size`` random ones."""
    if not 0 <= index < group:
        raise ValueError(f"batch index {index} outside a group of {group}")
    crops = []
    for _ in range(batch_size * group):
        fam = families[int(rng.integers(len(families)))]
        seed = int(seeds[int(rng.integers(len(seeds)))])
        n = n_turns(fam, seed)
        extra = n - max_turns
        s0 = int(rng.integers(extra + 1)) if extra > 0 and rng.random() < 0.5 else 0
        crops.append(Crop(fam, seed, s0, min(max_turns, n - s0)))
    if group > 1:
        crops = sorted(crops, key=lambda c: c.turns)[index * batch_size : (index + 1) * batch_size]
    return crops


def sample_batch(
    bank: SessionBank,
    families: list[str],
    seeds: range,
    batch_size: int,
    max_turns: int,
    rng: np.random.Generator,
    weights: tuple[float, float, float],
    offset_prob: float = 0.0,
    max_offset_turns: int = 0,
    group: int = 1,
    index: int = 0,
    offset_rng: np.random.Generator | None = None,
) -> TrainBatch:
    """The batch ``plan_batch`` picks, padded to its longest crop; with probability ``offset_prob``
    every position is shifted by a random number of micro-turns (drawn from ``offset_rng``, default
    ``rng``)."""
    crops = plan_batch(lambda f, s: bank.get(f, s).n_turns, families, seeds, batch_size, max_turns, rng,
                       group, index)  # fmt: skip
    orng = rng if offset_rng is None else offset_rng
    offset = (
        int(orng.integers(max_offset_turns + 1))
        if max_offset_turns > 0 and orng.random() < offset_prob
        else 0
    )
    examples = [bank.get(c.family, c.seed) for c in crops]
    n = max(c.turns for c in crops)
    return collate(examples, [c.start for c in crops], n, bank.cfg, weights, pos_offset=offset)


def fixed_batches(
    bank: SessionBank, families: list[str], n_batches: int, batch_size: int, max_turns: int, weights: tuple
) -> list[TrainBatch]:
    """Validation batches: sessions VAL_SEED_BASE + i of every family in turn, from their start."""
    out = []
    keys = [(f, VAL_SEED_BASE + i) for i in range(n_batches * batch_size) for f in families]
    keys = keys[: n_batches * batch_size]
    for j in range(n_batches):
        exs = [bank.get(f, s) for f, s in keys[j * batch_size : (j + 1) * batch_size]]
        n = min(max_turns, max(e.n_turns for e in exs))
        out.append(collate(exs, [0] * len(exs), n, bank.cfg, weights))
    return out
