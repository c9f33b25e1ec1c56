"""``make eval``: score the oracle, silence, the turn-based baseline and a model on every family.

    python -m microturn.gym.eval [--seeds 16] [--families timespeak,cuespeak] [--checkpoint PATH]
                                 [--out .state/eval] [--asr sphinx|template]

Seeds are held out from training: eval seeds are EVAL_SEED_BASE + i (training uses seeds below it).
Without --checkpoint the shipped model (microturn.model.SHIPPED_CHECKPOINT) is used if present,
otherwise a randomly initialised tiny model, labelled untrained.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from microturn.gym.harness import RunResult, evaluate
from microturn.gym.model_responder import EngineResponder, default_checkpoint, load_model
from microturn.gym.report import markdown_table, metrics_table, write
from microturn.gym.responders import (
    CodecOracleResponder,
    OracleResponder,
    Responder,
    SilenceResponder,
    StreamOracleResponder,
    TurnBasedResponder,
)
from microturn.gym.tasks import FAMILIES

EVAL_SEED_BASE = 1_000_000
RESPONDERS = ("oracle", "oracle-codec", "oracle-stream", "silence", "baseline", "model")


def eval_seeds(n: int, offset: int = 0) -> list[int]:
    return [EVAL_SEED_BASE + offset + i for i in range(n)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m microturn.gym.eval", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=16, help="held-out sessions per family (default 16)")
    p.add_argument(
        "--seed-offset",
        type=int,
        default=0,
        help="first held-out seed index (a disjoint seed set: --seed-offset N with --seeds <= N)",
    )
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated family names")
    p.add_argument("--checkpoint", type=Path, default=None, help="model checkpoint (.safetensors)")
    p.add_argument("--untrained-preset", default="tiny", help="preset for the untrained row (no checkpoint)")
    p.add_argument(
        "--responders",
        default="oracle,oracle-codec,silence,baseline,model",
        help="rows: oracle, oracle-codec (targets through the model's audio path: what the recogniser can "
        "hear at best), oracle-stream (targets through a 3-token text-out budget), silence, baseline, model",
    )
    p.add_argument(
        "--asr",
        default="sphinx",
        choices=["sphinx", "template"],
        help="speech recogniser: pocketsphinx constrained to the gym's vocabulary (default) or the "
        "template matcher",
    )
    p.add_argument("--slots", type=int, default=16, help="engine session slots (sessions per step)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="engine matmul precision of the model row (interaction.precision)",
    )
    p.add_argument("--out", type=Path, default=Path(".state/eval"), help="output directory")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if args.seed_offset < 0:
        p.error("--seed-offset must be >= 0")
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        p.error(f"unknown families {unknown}; choose from {sorted(FAMILIES)}")
    args.responders = [r.strip() for r in args.responders.split(",") if r.strip()]
    bad = [r for r in args.responders if r not in RESPONDERS]
    if bad:
        p.error(f"unknown responders {bad}")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        p.error(f"checkpoint {args.checkpoint} does not exist")
    return args


def build_responders(args: argparse.Namespace) -> list[Responder]:
    out: list[Responder] = []
    for name in args.responders:
        if name == "oracle":
            out.append(OracleResponder())
        elif name == "oracle-codec":
            out.append(CodecOracleResponder("tiny"))  # the audio path every shipped preset shares
        elif name == "oracle-stream":
            out.append(StreamOracleResponder(3))
        elif name == "silence":
            out.append(SilenceResponder())
        elif name == "baseline":
            out.append(TurnBasedResponder())
        else:
            ckpt = args.checkpoint or default_checkpoint()
            model, label = load_model(ckpt, args.untrained_preset)
            out.append(
                EngineResponder(
                    model, label, num_slots=args.slots, device=args.device, precision=args.precision
                )
            )
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seeds = eval_seeds(args.seeds, args.seed_offset)
    results: list[RunResult] = []
    for responder in build_responders(args):
        print(
            f"running {responder.label} on {len(args.families)} families × {len(seeds)} seeds ...",
            file=sys.stderr,
        )
        results.append(evaluate(responder, args.families, seeds, args.asr))
    print(markdown_table(results))
    print(metrics_table(results))
    config = {
        "seeds": seeds,
        "families": args.families,
        "asr": args.asr,
        "checkpoint": str(args.checkpoint or ""),
        "precision": args.precision,
    }
    json_path, md_path = write(results, args.out, config)
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
