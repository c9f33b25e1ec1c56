"""``python -m microturn.train``: train an interaction model on the gym.

python -m microturn.train --preset tiny-cpu [--steps N] [--out DIR] [--resume] [--seed S]
                          [--eval-every N] [--device cpu|cuda] [--prepare] [--ship --version V [--ship-to PATH]]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from microturn.model import SHIPPED_CHECKPOINT
from microturn.train.loop import STATE_FILE, Trainer, summarize
from microturn.train.presets import PRESETS, train_preset


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m microturn.train", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny-cpu", choices=sorted(PRESETS))
    p.add_argument("--steps", type=int, default=None, help="schedule length (default: the preset's)")
    p.add_argument(
        "--stop-at",
        type=int,
        default=None,
        help="pause at this step (resume later; the schedule is unchanged)",
    )
    p.add_argument("--out", type=Path, default=None, help="run directory (default .state/train/PRESET)")
    p.add_argument(
        "--resume", nargs="?", const="auto", default=None, help="continue from OUT/state.pt (or a given path)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=None, help="0 disables evals (default: the preset's)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the preset's)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the preset's)")
    p.add_argument(
        "--prepare", action="store_true", help="render and cache every training session, then exit"
    )
    p.add_argument("--ship", action="store_true", help="copy the final weights to the shipped checkpoint")
    p.add_argument("--version", default=None, help="version string of the shipped checkpoint")
    p.add_argument(
        "--ship-to",
        type=Path,
        default=SHIPPED_CHECKPOINT,
        help="where --ship writes (default: the shipped default model)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 0:
        p.error("--steps must be >= 0")
    if args.out is None:
        args.out = Path(".state/train") / args.preset
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {"steps": args.steps} if args.steps is not None else {}
    tp = train_preset(args.preset, **overrides)
    torch.set_num_threads(args.threads or tp.threads)
    trainer = Trainer(tp, seed=args.seed, out=args.out, device=args.device)
    n_params = trainer.model.num_params()
    print(
        f"{tp.name}: model {tp.model} ({n_params / 1e6:.2f} M parameters) on {trainer.device}, "
        f"{len(trainer.families)} families x {tp.train_seeds} seeds, batch {tp.batch_size} x <= {tp.max_turns} "
        f"micro-turns, {tp.steps} steps -> {args.out}",
        file=sys.stderr,
    )
    if args.prepare:
        t0 = time.perf_counter()
        for seed in range(tp.train_seeds):
            for fam in trainer.families:
                trainer.bank.get(fam, seed)
        print(
            f"{trainer.bank.rendered} sessions rendered in {time.perf_counter() - t0:.0f} s", file=sys.stderr
        )
        return 0
    if args.resume is not None:
        path = args.out / STATE_FILE if args.resume == "auto" else Path(args.resume)
        trainer.load(path)
        print(f"resumed from {path} at step {trainer.step}", file=sys.stderr)
    rows = trainer.run(steps=args.stop_at, eval_every=args.eval_every, quiet=args.quiet)
    if rows:
        s = summarize(rows)
        print(
            f"done: step {trainer.step}, loss {rows[-1]['total']:.3f}, {s['s_per_step']:.2f} s/step, "
            f"{s['tok_s']:,.0f} tokens/s (median)",
            file=sys.stderr,
        )
    trainer.save()  # also when --steps is already reached: OUT/model.safetensors matches OUT/state.pt
    if args.ship:
        dest = trainer.ship(args.version, args.ship_to)
        print(f"shipped {dest} (version {args.version or trainer.version()})", file=sys.stderr)
    print(f"checkpoint: {args.out / 'model.safetensors'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
