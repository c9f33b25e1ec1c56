"""``microturn rollout``: roll a model version out to a local run (``microturn up``), step by step.

  microturn rollout start --to microturn-tiny-v1 --steps 10,50,100 --hold 60s
  microturn rollout status [--json]
  microturn rollout pause | resume | abort
  microturn rollout controller        (run by `microturn up`: carries the rollout out)
  microturn rollout operator          (on Kubernetes: reconciles InteractionRollout resources)

New calls move to the candidate by the step weights; calls already running finish on the version
they started on. After each step's hold the candidate's SLO metrics are compared with the stable
version's; a candidate that fails ``--failure-limit`` analyses is rolled back automatically.
Exit codes: 0 ok, 1 failure, 2 bad spec or usage, 3 no rollout controller is running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
import time

import yaml

from microturn.config import Settings
from microturn.rollout import store
from microturn.rollout.analysis import AnalysisSpec, Threshold, default_thresholds
from microturn.rollout.machine import Command, RolloutSpec, SpecError, Step

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}
STALE_S = 10.0  # a status older than this: the controller is not running


def duration(text: str) -> float:
    """``90``, ``90s``, ``1.5m``, ``2h``, ``500ms`` -> seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 90s, 5m, 1h)")
    return float(m.group(1)) * _UNIT[m.group(2)]


def weights(text: str) -> list[int]:
    try:
        return [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: steps are percents separated by commas, e.g. 10,50,100"
        ) from None


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("rollout", help="roll a model version out, step by step (see microturn rollout --help)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    rsub = p.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")
    s = rsub.add_parser("start", help="start (or change) the rollout of a version")
    s.add_argument("--to", required=True, metavar="VERSION", help="the candidate's model version")
    s.add_argument(
        "--checkpoint", default="", help="its checkpoint file (default: the one shipped with VERSION)"
    )
    s.add_argument(
        "--steps", type=weights, default=[10, 50, 100], help="percent of new calls per step (10,50,100)"
    )
    s.add_argument("--hold", type=duration, default=60.0, help="time each step holds at least (60s)")
    s.add_argument(
        "--min-sessions", type=int, default=5, help="candidate calls per step before it may end (5)"
    )
    s.add_argument("--interval", type=duration, default=10.0, help="time between analyses (10s)")
    s.add_argument("--failure-limit", type=int, default=2, help="failed analyses that roll it back (2)")
    s.add_argument("--drain-deadline", type=duration, default=1800.0,
                   help="how long the losing version's calls may finish (30m)")  # fmt: skip
    s.add_argument(
        "--provision-timeout", type=duration, default=600.0, help="for the candidate to serve (10m)"
    )
    s.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE", dest="candidate_settings",
                   help="an interaction setting of the candidate's replicas, e.g. session_slots=16 or "
                   "fault_tick_delay_ms=300 (rehearse a rollback); repeatable")  # fmt: skip
    s.add_argument("--threshold", action="append", default=[], metavar="METRIC=LIMIT[:MARGIN]",
                   dest="thresholds", help="an analysis threshold: the candidate fails on METRIC above LIMIT "
                   "and above stable x (1 + MARGIN); e.g. tick_p99_ms=150:0.25; metrics: "
                   f"{', '.join(default_thresholds())}; repeatable")  # fmt: skip
    s.add_argument("--replay-compatible", action="store_true",
                   help="past the deadline, migrate calls to the other version instead of ending them")  # fmt: skip
    s.set_defaults(rollout_fn=cmd_start)
    st = rsub.add_parser("status", help="the rollout's phase, step, weights and versions")
    st.add_argument("--json", action="store_true", help="the whole status as JSON")
    st.set_defaults(rollout_fn=cmd_status)
    for name, what in (("pause", "hold the current step"), ("resume", "go on (the step's hold starts again)"),
                       ("abort", "send new calls back to the stable version and retire the candidate")):  # fmt: skip
        rsub.add_parser(name, help=what).set_defaults(rollout_fn=cmd_command, command_name=name)
    rsub.add_parser("controller", help="carry rollouts out (microturn up runs it)").set_defaults(
        rollout_fn=cmd_controller
    )
    op = rsub.add_parser(
        "operator",
        help="the Kubernetes operator: reconcile InteractionRollouts (the chart runs it)",
        description="Runs in a pod with in-cluster credentials: one RayService per version, the routing "
        "ConfigMap the edges read, status and Events on each InteractionRollout. Several replicas "
        "elect one active operator through kopf peering (rollout.peering).",
    )
    op.add_argument(
        "--liveness", metavar="URL", help="serve kopf's liveness probe here, e.g. http://0.0.0.0:8080/healthz"
    )
    op.set_defaults(rollout_fn=cmd_operator)
    return p


def thresholds_from_args(items: list[str]) -> dict[str, Threshold]:
    """The default thresholds with ``METRIC=LIMIT[:MARGIN]`` overrides (a SpecError names a bad one)."""
    out = default_thresholds()
    for item in items:
        name, sep, value = item.partition("=")
        limit, _, margin = value.partition(":")
        if not sep or name not in out:
            raise SpecError(f"--threshold {item!r}: use METRIC=LIMIT[:MARGIN], METRIC one of {sorted(out)}")
        try:
            out[name] = Threshold(float(limit), float(margin) if margin else out[name].margin)
        except ValueError:
            raise SpecError(f"--threshold {item!r}: LIMIT and MARGIN are numbers") from None
        if not all(math.isfinite(v) and v >= 0 for v in (out[name].limit, out[name].margin)):
            raise SpecError(f"--threshold {item!r}: LIMIT and MARGIN must be finite and >= 0")
    return out


def spec_from_args(ns: argparse.Namespace, settings: Settings) -> RolloutSpec:
    from microturn.rollout.local import Deployed, app_for, resolve_checkpoint, version_settings

    checkpoint = resolve_checkpoint(ns.to, ns.checkpoint)
    overrides = {}
    for item in ns.candidate_settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r}: use SETTING=VALUE (an interaction setting)")
        overrides[key.removeprefix("interaction.")] = yaml.safe_load(value)
    spec = RolloutSpec(
        candidate=ns.to,
        steps=tuple(Step(w, ns.hold, ns.min_sessions) for w in ns.steps),
        analysis=AnalysisSpec(
            thresholds=thresholds_from_args(ns.thresholds), min_sessions=max(1, ns.min_sessions)
        ),
        analysis_interval_s=ns.interval,
        failure_limit=ns.failure_limit,
        provision_timeout_s=ns.provision_timeout,
        drain_deadline_s=ns.drain_deadline,
        replay_compatible=ns.replay_compatible,
        checkpoint=checkpoint,
        candidate_settings=overrides,
    )
    version_settings(settings, Deployed(app_for(settings, ns.to), checkpoint, overrides))  # validates them
    return spec


def _status(settings: Settings) -> dict | None:
    from microturn.rollout.store import rollout_dir

    path = rollout_dir(settings) / "status.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _controller_running(settings: Settings) -> bool:
    doc = _status(settings)
    return doc is not None and time.time() * 1000 - doc.get("updated_unix_ms", 0) < STALE_S * 1000


def _no_controller(settings: Settings) -> int:
    print(f"microturn rollout: no rollout controller is running for {settings.state_dir} "
          "(start the system with `microturn up`)", file=sys.stderr)  # fmt: skip
    return 3


def cmd_start(ns: argparse.Namespace, settings: Settings) -> int:
    from microturn.rollout.store import rollout_dir, write_json

    try:
        spec = spec_from_args(ns, settings)
    except SpecError as exc:
        print(f"microturn rollout start: {exc}", file=sys.stderr)
        return 2
    if not _controller_running(settings):
        return _no_controller(settings)
    write_json(rollout_dir(settings) / "spec.json", store.spec_to_doc(spec))
    print(f"rollout of {spec.candidate} requested: steps {','.join(str(s.weight) for s in spec.steps)}, "
          f"hold {spec.steps[0].hold_s:g}s; follow it with `microturn rollout status`")  # fmt: skip
    return 0


def cmd_command(ns: argparse.Namespace, settings: Settings) -> int:
    from microturn.rollout.store import rollout_dir, write_json

    if not _controller_running(settings):
        return _no_controller(settings)
    write_json(rollout_dir(settings) / "command.json", {"command": Command(ns.command_name).value})
    print(f"{ns.command_name} sent", flush=True)
    return 0


def cmd_status(ns: argparse.Namespace, settings: Settings) -> int:
    doc = _status(settings)
    if doc is None:
        return _no_controller(settings)
    if ns.json:
        print(json.dumps(doc, indent=1, sort_keys=True))
        return 0
    st = doc["status"]
    age = time.time() - doc.get("updated_unix_ms", 0) / 1000
    print(
        f"phase     {st['phase']}"
        + (f"  (step {st['step'] + 1})" if st["phase"] in ("Shifting", "Paused") else "")
    )
    print(
        f"stable    {st['stable']}" + (f"    candidate {st['spec']['candidate']}" if st.get("spec") else "")
    )
    print(
        f"weights   {', '.join(f'{v} {w}%' for v, w in sorted(st['weights'].items()))}    epoch {st['epoch']}"
    )
    print(f"message   {st['message']}")
    print(
        f"failures  {st['failures']}"
        + (f"    (status {age:.0f} s old: is the controller running?)" if age > STALE_S else "")
    )
    print(
        f"\n{'version':<24} {'app':<32} {'ready':>5} {'sessions':>8} {'opened':>7} {'misses':>7} {'errors':>7}"
    )
    for v, info in sorted(doc.get("versions", {}).items()):
        m = info.get("metrics") or {}
        miss = f"{m['deadline_miss_ratio']:.1%}" if m.get("deadline_miss_ratio") is not None else "-"
        err = f"{m['stream_error_ratio']:.1%}" if m.get("stream_error_ratio") is not None else "-"
        print(f"{v:<24} {info['app']:<32} {'yes' if info.get('ready') else 'no':>5} {info.get('sessions', 0):>8} "
              f"{info.get('opened', 0):>7} {miss:>7} {err:>7}")  # fmt: skip
    return 0


def cmd_operator(ns: argparse.Namespace, settings: Settings) -> int:
    from microturn.rollout.operator import run
    from microturn.telemetry import configure_logging, setup_telemetry

    configure_logging("rollout", settings.telemetry.log_format, settings.telemetry.log_level)
    setup_telemetry("rollout", settings.telemetry.model_copy(update={"metrics_port": 0}))
    run(settings, liveness=ns.liveness)
    return 0


def cmd_controller(ns: argparse.Namespace, settings: Settings) -> int:
    from microturn.rollout.local import LocalController
    from microturn.telemetry import configure_logging, setup_telemetry

    configure_logging("rollout", settings.telemetry.log_format, settings.telemetry.log_level)
    # events and weights go out by OTLP when telemetry.otlp_endpoint is set (no local HTTP port)
    setup_telemetry("rollout", settings.telemetry.model_copy(update={"metrics_port": 0}))
    asyncio.run(LocalController(settings).run())
    return 0
