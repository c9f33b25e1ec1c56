"""Training presets: what to train (a model preset) and how (batch, schedule, data, loss weights, evals).

A preset plus a seed fixes a run completely; the CLI can override the step count and eval cadence.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrainPreset:
    name: str
    model: str  # a microturn.model preset
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # data: whole gym sessions (3-18 s, median 9 s), padded to the longest in the batch; longer ones are
    # cropped to max_turns (96 = 19.2 s keeps every current gym session whole, instruction included)
    batch_size: int = 8
    max_turns: int = 96
    train_seeds: int = 256  # sessions per family: seeds 0 .. train_seeds-1 (rendered once, then cached)
    families: tuple[str, ...] | None = None  # None: all gym families
    # batches of similar lengths (data.sample_batch): 1 = off (each batch padded to its longest of
    # batch_size random sessions); g draws g batches at once and sorts them by length
    length_group: int = 1
    # optimisation (AdamW, linear warmup then cosine decay to min_lr_frac * lr)
    steps: int = 2000
    lr: float = 2e-3
    min_lr_frac: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    # loss weighting: the first token of every spoken word / delegation after silence is rare (~2% of
    # text-out slots) but decides *when* the model speaks; weight it (and the audio of the chunk where
    # speech starts) so it is not drowned by the easy <sil> predictions
    onset_weight: float = 8.0
    speech_weight: float = 2.0  # other non-<sil> text-out tokens (the rest of each word)
    flow_onset_weight: float = 4.0
    aux_weight: float = 0.01  # MoE load-balance loss (0 for dense models)
    # the model's own audio read back as input is corrupted (objective.corrupt_feedback): per row Gaussian
    # noise of up to feedback_sigma levels, per micro-turn replaced by noise with feedback_replace, so the
    # model does not learn to read *what* it says from target speech it will never produce that cleanly
    feedback_sigma: float = 4.0
    feedback_replace: float = 0.25
    # sinks use absolute RoPE positions: shift a fraction of batches to a random start so sessions
    # minutes long stay in distribution
    offset_prob: float = 0.5
    max_offset_turns: int = 3000  # 10 minutes
    # evals on validation seeds (below the held-out eval seeds, never trained on)
    eval_every: int = 250
    val_batches: int = 2
    eval_sessions: int = 2  # per family, through the streaming engine (0: loss only)
    ckpt_every: int = 250
    # device and precision
    device: str = "auto"  # "auto": cuda if available
    bf16: bool = False  # bf16 autocast (on CUDA; on CPU it is slower)
    threads: int = 2  # torch CPU threads (results are bit-identical only for the same count)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, TrainPreset] = {
    # the embedded default model: ~4 M parameters on 2 CPU cores in about 2 hours (measured ~3 s/step on
    # 2 shared cores, plus ~6 min rendering the 2048 sessions once and ~15 s per engine eval)
    # text is sampled greedily: measured at step 600 on 4 validation sessions per family, mean gym text
    # score 47.8 greedy vs 24.8 at temperature 1 (sampling spells a word wrong once in a while)
    "tiny-cpu": TrainPreset(
        name="tiny-cpu",
        model="tiny",
        model_overrides={"temperature": 0.0},
        length_group=8,  # 93% real micro-turns per batch, 69% ungrouped (benchmarks/bench_train_padding.py)
        steps=1800,
        eval_every=300,
        ckpt_every=300,
    ),
    # the same data and loop at GPU scale: 0.9 B-parameter MoE (0.2 B active), bf16 autocast
    "gpu-moe": TrainPreset(
        name="gpu-moe",
        model="gpu-moe",
        batch_size=32,
        train_seeds=4000,
        steps=20000,
        lr=3e-4,
        warmup=500,
        weight_decay=0.1,
        eval_every=1000,
        ckpt_every=1000,
        eval_sessions=4,
        device="cuda",
        bf16=True,
        threads=8,
    ),
    # tests: the test-sized model on a handful of short sessions
    "test": TrainPreset(
        name="test",
        model="test",
        batch_size=4,
        max_turns=24,
        train_seeds=2,
        families=("timespeak", "turntaking"),
        steps=30,
        lr=3e-3,
        warmup=5,
        max_offset_turns=200,
        eval_every=0,
        val_batches=1,
        eval_sessions=0,
        ckpt_every=0,
        threads=1,
    ),
}


def train_preset(name: str, **overrides: Any) -> TrainPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown training preset {name!r}; known: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
