"""Padding in training batches: of the micro-turns a training step computes, the share that are real
sessions rather than padding, without and with length grouping (``TrainPreset.length_group``).

    python benchmarks/bench_train_padding.py [--seeds 32] [--batch 8] [--steps 400] [--groups 1,2,4,8]

Session lengths come from the gym itself (the first ``--seeds`` training seeds of every family);
batches are planned exactly as training plans them (``train.data.plan_batch``), so the share is what a
run's tokens/s gains: compute scales with padded micro-turns, tokens/s counts real ones.
"""

from __future__ import annotations

import argparse
import sys
from functools import cache

from microturn.gym import FAMILIES, generate
from microturn.train.data import group_rng, plan_batch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=32, help="training seeds per family whose lengths are used")
    p.add_argument("--batch", type=int, default=8, help="sessions per batch (tiny-cpu: 8)")
    p.add_argument("--max-turns", type=int, default=96)
    p.add_argument("--steps", type=int, default=400, help="batches planned per setting")
    p.add_argument("--groups", default="1,2,4,8", help="length_group values to compare")
    args = p.parse_args(argv)
    groups = [int(g) for g in args.groups.split(",")]
    families = list(FAMILIES)

    @cache
    def n_turns(family: str, seed: int) -> int:
        return generate(family, seed).num_chunks

    print(
        f"session lengths: {len(families)} families x {args.seeds} seeds (rendering them) ...",
        file=sys.stderr,
    )
    lengths = [n_turns(f, s) for f in families for s in range(args.seeds)]
    print(f"micro-turns per session: min {min(lengths)}, median {sorted(lengths)[len(lengths) // 2]}, "
          f"max {max(lengths)}")  # fmt: skip
    print(f"{'length_group':>12}  {'real share':>10}  {'padded turns/step':>17}  {'speed-up':>8}")
    base = None
    for g in groups:
        real = computed = 0
        for step in range(args.steps):
            rng, index = group_rng(0, step, g)
            crops = plan_batch(
                n_turns, families, range(args.seeds), args.batch, args.max_turns, rng, g, index
            )
            real += sum(c.turns for c in crops)
            computed += len(crops) * max(c.turns for c in crops)
        share = real / computed
        base = base or share
        print(f"{g:>12}  {share:>10.1%}  {computed / args.steps:>17.0f}  {share / base:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
