"""The training loop: AdamW on gym batches, warmup + cosine schedule, periodic validation and engine
evals, resumable checkpoints.

Everything random in a step (which sessions, crops, position offset, flow-matching noise) is drawn from
streams seeded by ``(seed, step)``, so a run resumed from a checkpoint takes exactly the steps an
uninterrupted run would have taken (bit-identical on the same machine and thread count).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from microturn.model import SHIPPED_CHECKPOINT, InteractionModel, ModelConfig, preset, save_checkpoint
from microturn.train.data import (
    VAL_SEED_BASE,
    SessionBank,
    TrainBatch,
    batch_rng,
    fixed_batches,
    group_rng,
    sample_batch,
)
from microturn.train.objective import compute_losses
from microturn.train.presets import TrainPreset
from microturn.train.progress import Progress

STATE_FILE = "state.pt"  # model + optimiser + step: what --resume reads
MODEL_FILE = "model.safetensors"  # the servable checkpoint (microturn.model.load_checkpoint)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


SAMPLING_FIELDS = ("temperature", "flow_temperature")


class Trainer:
    def __init__(
        self,
        tp: TrainPreset,
        seed: int = 0,
        out: Path | str = ".state/train",
        device: str | None = None,
        bank: SessionBank | None = None,
    ) -> None:
        self.tp, self.seed, self.out = tp, seed, Path(out)
        self.device = pick_device(device or tp.device)
        self.cfg = preset(tp.model, **tp.model_overrides)
        torch.manual_seed(seed)
        self.model = InteractionModel(self.cfg, version=f"{tp.name}-untrained").to(self.device)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": tp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=tp.lr,
            betas=(0.9, 0.95),
            eps=1e-8,
        )
        self.step = 0
        self.bank = SessionBank(self.cfg) if bank is None else bank
        from microturn.gym import FAMILIES

        self.families = list(tp.families) if tp.families else list(FAMILIES)
        self.weights = (tp.onset_weight, tp.speech_weight, tp.flow_onset_weight)
        self.feedback = (tp.feedback_sigma, tp.feedback_replace)
        self._val: list[TrainBatch] | None = None

    # --- schedule and data ------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        tp = self.tp
        if step < tp.warmup:
            return tp.lr * (step + 1) / tp.warmup
        frac = min(1.0, (step - tp.warmup) / max(1, tp.steps - tp.warmup))
        return tp.lr * (tp.min_lr_frac + (1 - tp.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))

    def batch_at(self, step: int) -> TrainBatch:
        tp = self.tp
        rng, index = group_rng(self.seed, step, tp.length_group)
        return sample_batch(
            self.bank,
            self.families,
            range(tp.train_seeds),
            tp.batch_size,
            tp.max_turns,
            rng,
            self.weights,
            tp.offset_prob,
            tp.max_offset_turns,
            group=tp.length_group,
            index=index,
            offset_rng=None if tp.length_group == 1 else batch_rng(self.seed, step, stream=2),
        )

    def generator_at(self, step: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(int(batch_rng(self.seed, step, stream=1).integers(2**62)))
        return g

    def autocast(self) -> Any:
        on = self.tp.bf16 and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=on)

    # --- one step ---------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One optimiser step on ``batch_at(self.step)``; returns losses, lr, grad norm and timing."""
        t0 = time.perf_counter()
        batch = self.batch_at(self.step).to(self.device)
        t_data = time.perf_counter() - t0
        lr = self.lr_at(self.step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.model.train()
        with self.autocast():
            losses = compute_losses(
                self.model,
                batch,
                self.generator_at(self.step),
                self.tp.aux_weight,
                feedback_noise=self.feedback,
            )
        self.opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tp.grad_clip)
        self.opt.step()
        self.step += 1
        dt = time.perf_counter() - t0
        tokens = batch.n_real_turns * self.model.layout.turn_len
        row = {k: float(v.detach()) for k, v in losses.items()}
        row |= {"lr": lr, "grad_norm": float(gnorm), "dt": dt, "data_s": t_data, "tok_s": tokens / dt}
        return row

    # --- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def val_loss(self) -> dict[str, float]:
        """Mean losses on fixed validation sessions (seeds from VAL_SEED_BASE, never trained on)."""
        tp = self.tp
        if self._val is None:
            self._val = fixed_batches(
                self.bank, self.families, tp.val_batches, tp.batch_size, tp.max_turns, self.weights
            )
        self.model.eval()
        sums: dict[str, float] = {}
        for i, b in enumerate(self._val):
            g = torch.Generator(device=self.device)
            g.manual_seed(i)
            with self.autocast():
                losses = compute_losses(
                    self.model, b.to(self.device), g, tp.aux_weight, feedback_noise=self.feedback
                )
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v) / len(self._val)
        return sums

    def engine_eval(self, sessions_per_family: int | None = None) -> dict[str, dict[str, float]]:
        """Gym scores through the streaming engine on validation seeds: {family: {text, speech}}."""
        from microturn.gym import evaluate
        from microturn.gym.model_responder import EngineResponder

        n = self.tp.eval_sessions if sessions_per_family is None else sessions_per_family
        seeds = [VAL_SEED_BASE + i for i in range(n)]
        # the engine freezes the model it is given (eval mode, requires_grad off): give it a copy
        model = copy.deepcopy(self.model).to("cpu")
        model.version = f"{self.tp.name}-s{self.step}"
        slots = min(16, n * len(self.families))
        result = evaluate(EngineResponder(model, model.version, num_slots=slots), self.families, seeds)
        return {name: dict(f.score) for name, f in result.families.items()}

    # --- checkpoints ------------------------------------------------------------------------------
    def version(self) -> str:
        return f"{self.tp.name}-s{self.step}"

    def save(self) -> Path:
        """``state.pt`` (resumable) and ``model.safetensors`` (servable) in the output directory."""
        self.out.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.model.state_dict(),
            "optim": self.opt.state_dict(),
            "step": self.step,
            "seed": self.seed,
            "preset": self.tp.to_dict(),
            "cfg": self.cfg.to_dict(),
        }
        tmp = self.out / (STATE_FILE + ".tmp")
        torch.save(state, tmp)
        tmp.replace(self.out / STATE_FILE)
        self.model.version = self.version()
        return save_checkpoint(self.model, self.out / MODEL_FILE, self.version())

    def load(self, path: Path | str) -> None:
        """Restore a ``state.pt`` written by ``save`` (same preset and seed)."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        saved = ModelConfig.from_dict(state["cfg"])  # fields added since take their defaults
        # sampling settings say how the engine draws from the weights, not what they are: the preset's win
        saved = dataclasses.replace(saved, **{f: getattr(self.cfg, f) for f in SAMPLING_FIELDS})
        if saved != self.cfg:
            raise ValueError(f"{path}: model config differs from preset {self.tp.name!r}")
        if state["seed"] != self.seed:
            raise ValueError(f"{path}: trained with seed {state['seed']}, not {self.seed} (pass --seed)")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optim"])
        self.step = int(state["step"])

    def ship(self, version: str | None = None, dest: Path = SHIPPED_CHECKPOINT) -> Path:
        """Write the current weights as an embedded model (default: the default model of ``make up``),
        stored in float16 so a shipped version costs half the bytes in the repository."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        return save_checkpoint(self.model, dest, version or self.version(), dtype=torch.float16)

    # --- the loop ---------------------------------------------------------------------------------
    def log(self, row: dict[str, Any]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def run(self, steps: int | None = None, eval_every: int | None = None, quiet: bool = False) -> list[dict]:
        """Train until step ``steps`` (default: the preset's), evaluating every ``eval_every`` steps."""
        tp = self.tp
        total = tp.steps if steps is None else steps
        every = tp.eval_every if eval_every is None else eval_every
        bar = None if quiet else Progress(total, self.step)
        rows: list[dict] = []
        ema = None
        while self.step < total:
            row = self.train_step()
            row["step"] = self.step
            rows.append(row)
            self.log(row)
            ema = row["tok_s"] if ema is None else 0.9 * ema + 0.1 * row["tok_s"]
            if bar:
                bar.update(
                    self.step,
                    f"loss {row['total']:.3f} (ce {row['text_ce']:.3f} flow {row['flow']:.3f}) "
                    f"lr {row['lr']:.1e} {ema:,.0f} tok/s {row['dt']:.2f} s/step",
                )
            last = self.step == total
            if tp.ckpt_every and (self.step % tp.ckpt_every == 0 or last):
                self.save()
            if every and (self.step % every == 0 or last):
                t0 = time.perf_counter()
                ev: dict[str, Any] = {"step": self.step, "val": self.val_loss()}
                if tp.eval_sessions:
                    ev["eval"] = self.engine_eval()
                ev["eval_s"] = time.perf_counter() - t0
                self.log(ev)
                if bar:
                    bar.write(format_eval(ev))
        if bar:
            bar.close()
        return rows


def format_eval(ev: dict[str, Any]) -> str:
    v = ev["val"]
    line = f"step {ev['step']}: val loss {v['total']:.3f} (ce {v['text_ce']:.3f} flow {v['flow']:.3f})"
    if "eval" in ev:
        scores = " ".join(f"{k} {s['text']:.0f}/{s['speech']:.0f}" for k, s in ev["eval"].items())
        line += f"\n  gym (text/speech): {scores}"
    line += f" [{ev['eval_s']:.0f} s]"
    return line


def summarize(rows: list[dict]) -> dict[str, float]:
    """Median step time and tokens/s over a run's steps (the first step warms caches: skipped)."""
    tail = rows[1:] or rows
    return {
        "s_per_step": float(np.median([r["dt"] for r in tail])),
        "tok_s": float(np.median([r["tok_s"] for r in tail])),
        "data_s": float(np.median([r["data_s"] for r in tail])),
    }
