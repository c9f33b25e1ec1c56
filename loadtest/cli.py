"""``microturn loadtest``: load tests of a running microturn from synthetic and real-browser callers,
measuring the turn latency a caller hears (the user's end of speech -> onset of the model's speech
in the received audio), with SLO gates, mergeable HdrHistogram results and an HTML report.

Examples:
  microturn loadtest run --url http://127.0.0.1:8080                        # smoke: 1 caller, 1 pass
  microturn loadtest run --url URL --profile ramp --callers 20 --duration 5m \\
      --slo 'turn_latency.p95<800ms' --slo 'setup_fail_rate<1%' --out results/ramp
  microturn loadtest run --url URL --stages 30s:10,60s:10,30s:0 --join-rate 5/s
  microturn loadtest run --url URL --profile step --step-levels 2,4,8 --step-hold-turns 3
  microturn loadtest run --url URL --mode mixed --callers 40 --browsers 2 --profile soak --duration 30m
  microturn loadtest run --url URL --scenario barge_in --profile ramp --callers 8
  microturn loadtest run --url URL --shard 0/4 --start-at 1767225600 --out /results   # one of 4 machines
  microturn loadtest merge shard0/ shard1/ shard2/ shard3/ --out merged/
  microturn loadtest report merged/result.json --out merged/report.html
  microturn loadtest calibrate --url URL --callers 4 --duration 30s
  microturn loadtest k8s --image ghcr.io/me/microturn:1.0 --shards 4 --url http://edge:8080 \\
      -- --profile ramp --callers 200 --duration 10m --slo 'turn_latency.p95<800ms' | kubectl apply -f -
  microturn loadtest collect --dir /data --port 8080 --shards 4

Exit codes: 0 every gate passed; 1 the run itself broke; 2 bad arguments or scenario; 3 an SLO gate
failed (or had no data); 4 the load generator was overloaded (results invalid)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest import profiles, scenario
from loadtest.slo import EXIT_CONFIG, EXIT_ERROR, EXIT_OK

SUBCOMMANDS = ("run", "merge", "report", "calibrate", "k8s", "collect")


class ConfigError(ValueError):
    """A bad option value (exit EXIT_CONFIG)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so ``main`` returns EXIT_CONFIG with the message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}")


def _percent(text: str) -> float:
    """``90%`` or ``90`` -> 90.0."""
    try:
        v = float(text.strip().removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r} (e.g. 90%)") from None
    if not 0 < v <= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: a percentage in (0, 100]")
    return v


def _share(text: str) -> float:
    """``10%`` -> 0.1; ``0.1`` -> 0.1."""
    t = text.strip()
    try:
        v = float(t.removesuffix("%")) / (100 if t.endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a share: {text!r} (e.g. 10%)") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a share in (0, 100%]")
    return v


def _ms(text: str) -> float:
    t = text.strip()
    try:
        return profiles.parse_duration(t if t.endswith(("ms", "s", "m", "h")) else t + "ms") * 1000
    except profiles.ProfileError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        return profiles.parse_duration(text)
    except profiles.ProfileError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return v


def build_parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="microturn loadtest",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = top.add_subparsers(dest="cmd", metavar="SUBCOMMAND", parser_class=_Parser)

    run = sub.add_parser(
        "run", help="run a load profile against an edge", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Dial the edge at --url with callers playing --scenario, as many at a time as the "
        "profile says; write result.json, sessions.csv and report.html into --out; judge the --slo gates.",
        epilog=RUN_EPILOG,
    )  # fmt: skip
    _run_options(run)

    merge = sub.add_parser("merge", help="merge shard results into one (exact histograms)")
    merge.add_argument(
        "dirs", nargs="+", type=Path, metavar="DIR", help="shard result dirs (or result.json files)"
    )
    merge.add_argument("--out", type=Path, required=True, help="where the merged result and report go")

    report = sub.add_parser("report", help="(re)write the HTML report of a result")
    report.add_argument("result", type=Path, metavar="RESULT.json", help="a result.json (or its directory)")
    report.add_argument("--out", type=Path, help="the report file (default: report.html beside the result)")

    cal = sub.add_parser(
        "calibrate", help="measure the generator's own bias and cost per caller",
        formatter_class=argparse.RawDescriptionHelpFormatter, description=CALIBRATE_HELP,
    )  # fmt: skip
    cal.add_argument("--url", help="an edge to run callers against (without it: only the onset bias)")
    cal.add_argument("--callers", type=_positive_int, default=4, help="aiortc callers (default 4)")
    cal.add_argument("--duration", type=_seconds, default=30.0, help="how long they call (default 30s)")
    cal.add_argument("--scenario", default="smoke", help="scenario for the callers and the bias check")
    cal.add_argument("--workers", type=_positive_int, default=1, help="worker processes (default 1)")
    cal.add_argument("--out", type=Path, help="keep the calibration run's result here")
    cal.add_argument("--placements", type=_positive_int, default=8, help="prompt placements for the bias (8)")
    cal.add_argument("--json", action="store_true", help="print the measurements as one JSON object")

    k8s = sub.add_parser(
        "k8s", help="print the Kubernetes manifests of a sharded run (pipe to kubectl apply -f -)",
        description="Print a collector Service + Deployment and an Indexed Job of --shards pods, each "
        "running `microturn loadtest run --shard i/N --start-at T`; run options go after `--`.",
    )  # fmt: skip
    k8s.add_argument("--image", required=True, help="the microturn image the pods run")
    k8s.add_argument("--shards", type=_positive_int, required=True, help="generator pods")
    k8s.add_argument("--url", required=True, help="the edge as the pods reach it")
    k8s.add_argument("--name", default="microturn-loadtest", help="the Job's name")
    k8s.add_argument("--namespace", help="namespace of every object")
    k8s.add_argument("--cpu", default="2", help="CPU per shard pod (requests = limits), default 2")
    k8s.add_argument("--memory", default="4Gi", help="memory per shard pod, default 4Gi")
    k8s.add_argument("--start-at", type=float, help="common start (epoch s); default now + --start-delay")
    k8s.add_argument("--start-delay", type=_seconds, default=180.0, help="time to schedule the pods (180s)")
    k8s.add_argument("--results-pvc", help="a PVC for the collector's results (default: emptyDir)")
    k8s.add_argument("run_args", nargs=argparse.REMAINDER, help="-- then `loadtest run` options")

    col = sub.add_parser("collect", help="the collector of a sharded run (what its pod runs)")
    col.add_argument("--dir", type=Path, required=True, help="where shard results and the report go")
    col.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    col.add_argument("--shards", type=_positive_int, required=True, help="shards to wait for")
    col.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    return top


RUN_EPILOG = """profiles (concurrent callers over time; --stages overrides --profile):
  smoke   1 caller, one pass of the scenario (the default)
  ramp    up to --callers over the first quarter of --duration, hold half, down the last quarter
  step    --step-levels (default a quarter, half, all of --callers), each held for
          --step-hold-turns turns of every session; the report finds the knee (sessions at SLO)
  soak    up to --callers over min(60 s, a tenth), then hold for the rest of --duration
  spike   a tenth of --callers, a jump to all of them for a fifth of the run, back down
  --stages 30s:10,60s:10,30s:0   k6-style: ramp linearly to each target over each stage

SLO gates (--slo, repeatable or comma-separated): METRIC[.STAT] OP VALUE[UNIT]
  turn_latency.p95<800ms  setup.p99<2s  first_audio.max<5s  barge_in_yield.p90<400ms
  audio_gap.max<500ms  setup_fail_rate<1%  call_fail_rate<0.5%  packet_loss<1%  concealed<2%

modes: aiortc (default; ~25 callers per core), browser (headless Chromium, ~8 per core: the
profile's peak, constant), mixed (aiortc for the load plus --browsers N / --browser-share P
Chromium canaries). The generator watches itself: over --max-cpu or --max-loop-lag for more
than --overload-seconds the run is marked overloaded and exits 4 (results invalid).

examples:
  run --url http://127.0.0.1:8080 --scenario smoke
  run --url URL --profile ramp --callers 20 --duration 5m --slo 'turn_latency.p95<800ms'
  run --url URL --stages 1m:50,5m:50,1m:0 --join-rate 5/s --workers 4 --out results/r1
  run --url URL --profile step --step-levels 4,8,16,32 --step-hold-turns 3 --slo 'turn_latency.p95<1s'
  run --url URL --mode mixed --browser-share 5% --profile soak --callers 60 --duration 1h
  run --url URL --metrics-url http://edge:9464/metrics --metrics-url http://replica:9465/metrics"""

CALIBRATE_HELP = """What the load generator itself adds and costs, on this machine:

1. onset bias: the scenario's prompts, placed at known sample positions after 1.5 s of faint noise,
   fed to the OnsetDetector in 20 ms frames as they are (the detector's own bias) and after an
   Opus encode/decode (as they arrive over WebRTC; adds the codec's delay, which a caller hears
   too): detected onset minus true onset (mean, median, worst), the bias of every measured turn
   latency (positive: latencies read that much too long).
2. with --url: --callers aiortc callers for --duration against that edge (a constant profile),
   then the generator's CPU per caller (% of one core) and its event-loop lag (p50, max): divide
   the cores you have by the per-caller cost to know how many callers one generator can carry."""


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="the edge's base URL, e.g. http://127.0.0.1:8080")
    p.add_argument(
        "--scenario", default="smoke",
        help=f"a scenario YAML file, or a shipped one: {', '.join(scenario.shipped_names())} (default smoke)",
    )  # fmt: skip
    p.add_argument("--mode", choices=("aiortc", "browser", "mixed"), default="aiortc", help="caller kind")
    p.add_argument(
        "--profile", choices=profiles.PRESETS, default=None, help="a preset profile (default smoke)"
    )
    p.add_argument("--stages", help="k6-style DURATION:TARGET,... (overrides --profile)")
    p.add_argument("--duration", type=_seconds, default=300.0, help="length of a preset profile (5m)")
    p.add_argument(
        "--callers", type=_positive_int, default=10, help="peak concurrent callers of a preset (10)"
    )
    p.add_argument("--step-levels", help="step profile: levels, e.g. 2,4,8")
    p.add_argument(
        "--step-hold-turns", type=_positive_int, default=3, help="step: turns per session per level (3)"
    )
    p.add_argument("--join-rate", help="at most this many dials per second over all shards, e.g. 5/s")
    p.add_argument(
        "--slo", action="append", default=[], help="a gate, e.g. 'turn_latency.p95<800ms' (repeatable)"
    )
    p.add_argument("--out", type=Path, help="result directory (default loadtest-results/<time>)")
    p.add_argument("--shard", default="0/1", help="this generator's part of a sharded run: INDEX/COUNT")
    p.add_argument("--start-at", type=float, help="epoch seconds at which every shard starts")
    p.add_argument("--workers", type=_positive_int, help="aiortc worker processes (default: one per core)")
    p.add_argument("--browsers", type=int, default=0, help="mixed: Chromium canaries (over all shards)")
    p.add_argument("--browser-share", type=_share, help="mixed: canaries as a share of the peak, e.g. 10%%")
    p.add_argument("--pages-per-browser", type=_positive_int, default=8, help="calls per Chromium (8)")
    p.add_argument(
        "--max-cpu", type=_percent, default=90.0, help="generator overloaded above this CPU (90%%)"
    )
    p.add_argument("--max-loop-lag", type=_ms, default=50.0, help="... or this event-loop lag (50ms)")
    p.add_argument("--overload-seconds", type=_seconds, default=3.0, help="... for longer than this (3s)")
    p.add_argument(
        "--metrics-url", action="append", default=[], help="a target's Prometheus /metrics (repeatable)"
    )
    p.add_argument("--scrape-every", type=_seconds, default=5.0, help="seconds between scrapes (5s)")
    p.add_argument("--quiet", action="store_true", help="no progress line (also off without a TTY or in CI)")


def profile_from(ns: argparse.Namespace, sc: scenario.Scenario) -> profiles.Profile:
    """The profile the run options describe (--stages, or a preset sized from the scenario)."""
    if ns.stages:
        if ns.profile is not None:
            raise ConfigError("give --stages or --profile, not both")
        return profiles.Profile("stages", profiles.parse_stages(ns.stages))
    levels = profiles.parse_levels(ns.step_levels) if ns.step_levels else None
    if levels is not None and (ns.profile or "smoke") != "step":
        raise ConfigError("--step-levels needs --profile step")
    return profiles.preset(
        ns.profile or "smoke", callers=ns.callers, duration_s=ns.duration, step_levels=levels,
        step_hold_turns=ns.step_hold_turns, turn_s=scenario.estimate_turn_s(sc),
        setup_s=5.0 + sc.join, smoke_s=sc.join + sc.session_s + 15.0,
    )  # fmt: skip


def run_config(ns: argparse.Namespace) -> Any:
    """A runner.RunConfig from ``run``'s options; ConfigError/ScenarioError/... on a bad one."""
    from loadtest import runner, slo

    sc = scenario.load_scenario(ns.scenario)
    prof = profile_from(ns, sc)
    slo.parse_all(ns.slo)
    if ns.mode != "mixed" and (ns.browsers or ns.browser_share):
        raise ConfigError("--browsers / --browser-share are for --mode mixed")
    if ns.browsers < 0:
        raise ConfigError("--browsers must be >= 0")
    out = ns.out or Path("loadtest-results") / time.strftime("%Y%m%d-%H%M%S")
    return runner.RunConfig(
        url=ns.url, scenario=sc, profile=prof, out=out, mode=ns.mode, workers=ns.workers,
        browsers=ns.browsers, browser_share=ns.browser_share, pages_per_browser=ns.pages_per_browser,
        shard=profiles.parse_shard(ns.shard), start_at=ns.start_at,
        join_rate=profiles.parse_rate(ns.join_rate) if ns.join_rate else None, slos=list(ns.slo),
        max_cpu_pct=ns.max_cpu, max_loop_lag_ms=ns.max_loop_lag, overload_s=ns.overload_seconds,
        metrics_urls=list(ns.metrics_url), scrape_every_s=ns.scrape_every, quiet=ns.quiet,
    )  # fmt: skip


def cmd_run(ns: argparse.Namespace) -> int:
    from loadtest import runner

    cfg = run_config(ns)
    return runner.run(cfg).exit_code


def merge_write(paths: list[Path], out: Path) -> Any:
    """Merge result files (or dirs) into ``out`` with its report; returns the merged result."""
    from loadtest import htmlreport, results

    merged = results.merge([results.load(p) for p in paths])
    results.save(merged, out)
    htmlreport.write_report(merged, Path(out) / "report.html")
    return merged


def cmd_merge(ns: argparse.Namespace) -> int:
    from loadtest import runner, slo

    merged = merge_write(list(ns.dirs), ns.out)
    code = slo.exit_code(merged.verdicts(), merged.overloaded)
    runner.print_summary(merged, [], ns.out, code)
    return code


def cmd_report(ns: argparse.Namespace) -> int:
    from loadtest import htmlreport, results

    res = results.load(ns.result)
    base = ns.result if ns.result.is_dir() else ns.result.parent
    path = htmlreport.write_report(res, ns.out or base / "report.html")
    print(path)
    return EXIT_OK


def cmd_k8s(ns: argparse.Namespace) -> int:
    from loadtest import k8s

    extra = ns.run_args[1:] if ns.run_args[:1] == ["--"] else ns.run_args
    args: dict[str, Any] = {
        "image": ns.image, "shards": ns.shards, "url": ns.url, "run_args": extra, "name": ns.name,
        "namespace": ns.namespace, "cpu": ns.cpu, "memory": ns.memory, "start_at": ns.start_at,
        "start_delay_s": ns.start_delay, "results_pvc": ns.results_pvc,
    }  # fmt: skip
    try:
        sys.stdout.write(k8s.render_yaml(args))
    except ValueError as exc:
        raise ConfigError(f"k8s: {exc}") from None
    return EXIT_OK


def cmd_collect(ns: argparse.Namespace) -> int:
    from loadtest import k8s

    def merge(paths: list[Path], out: Path) -> None:
        merge_write(paths, out)

    k8s.serve_collector(ns.dir, ns.port, ns.shards, merge, ns.host)
    return EXIT_OK


# ------------------------------------------------------------------ calibrate


def onset_bias(sc: scenario.Scenario, placements: int = 8, seed: int = 7) -> dict[str, Any]:
    """Detected minus true onset (ms) of the scenario's prompts, as heard raw (the detector's own
    bias) and after an Opus round trip (plus the codec's delay, which a caller hears too); see
    CALIBRATE_HELP. Needs espeak-ng and sox for ``say`` turns."""
    import numpy as np

    from loadtest import prompts
    from loadtest.onset import OnsetDetector

    rendered = list(prompts.render_scenario(sc).values())
    if not rendered:
        raise ConfigError(f"scenario {sc.name} has no spoken turn to calibrate the onset detector with")
    rng = np.random.default_rng(seed)
    errors: dict[str, list[float]] = {"raw": [], "opus": []}
    missed = dict.fromkeys(errors, 0)
    for i in range(placements):
        p = rendered[i % len(rendered)]
        lead = 72_000 + int(rng.integers(0, 960))  # 1.5 s plus a sub-frame offset
        track = rng.normal(0, 20, lead + len(p.pcm) + 48_000)
        track[lead : lead + len(p.pcm)] += p.pcm
        raw = np.clip(track, -32768, 32767).astype(np.int16)
        coded, ok = _opus_round_trip(raw)
        for how, pcm in (("raw", raw), ("opus", coded if ok else None)):
            if pcm is None:
                continue
            det = OnsetDetector(sample_rate=prompts.RATE)
            for k in range(0, len(pcm) - 959, 960):
                det.feed(pcm[k : k + 960], k / prompts.RATE)
            det.flush()
            true_onset = lead / prompts.RATE
            found = det.first_onset_after(true_onset - 0.5)
            if found is None:
                missed[how] += 1
            else:
                errors[how].append((found - true_onset) * 1000)
    out: dict[str, Any] = {"placements": placements}
    for how, errs in errors.items():
        out[how] = {
            "missed": missed[how],
            "bias_ms_mean": round(float(np.mean(errs)), 1) if errs else None,
            "bias_ms_median": round(float(np.median(errs)), 1) if errs else None,
            "bias_ms_worst": round(max(errs, key=abs), 1) if errs else None,
        }
    return out


def _opus_round_trip(pcm: Any) -> tuple[Any, bool]:
    """``pcm`` (int16, 48 kHz mono) through aiortc's Opus encoder and decoder, 20 ms at a time,
    back as mono, and True; unchanged and False if the codec is unavailable."""
    import fractions

    import av
    import numpy as np

    try:
        from aiortc.codecs.opus import OpusDecoder, OpusEncoder
        from aiortc.jitterbuffer import JitterFrame
    except ImportError:
        return pcm, False
    enc, dec = OpusEncoder(), OpusDecoder()
    out = []
    for k in range(0, len(pcm) - 959, 960):
        frame = av.AudioFrame.from_ndarray(pcm[k : k + 960].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48_000, k, fractions.Fraction(1, 48_000)
        payloads, ts = enc.encode(frame)
        for data in payloads:
            for f in dec.decode(JitterFrame(data=data, timestamp=ts)):
                out.append(f.to_ndarray().reshape(-1, 2).mean(axis=1))
    return np.concatenate(out).astype(np.int16), True


def cmd_calibrate(ns: argparse.Namespace) -> int:
    sc = scenario.load_scenario(ns.scenario)
    report: dict[str, Any] = {"onset": onset_bias(sc, ns.placements)}
    if ns.url:
        report["callers"] = calibrate_callers(ns, sc)
    if ns.json:
        print(json.dumps(report))
    else:
        o = report["onset"]
        for how, label in (("raw", "detector alone"), ("opus", "after an Opus round trip")):
            b = o[how]
            print(
                f"onset bias, {label} ({o['placements']} placements): mean {b['bias_ms_mean']} ms, "
                f"median {b['bias_ms_median']} ms, worst {b['bias_ms_worst']} ms, missed {b['missed']}"
            )
        c = report.get("callers")
        if c:
            print(
                f"{c['callers']} aiortc callers on {c['cores']} cores for {c['duration_s']:.0f} s: "
                f"{c['cpu_pct_of_core_per_caller']}% of a core per caller (generator CPU mean "
                f"{c['generator_cpu_pct_mean']}% of all cores), loop lag p50 {c['loop_lag_ms_p50']} ms, "
                f"max {c['loop_lag_ms_max']} ms -> about {c['callers_per_core']} callers per core "
                f"(calls {c['calls']}, failures {c['failures']})"
            )
    return EXIT_OK


def calibrate_callers(ns: argparse.Namespace, sc: scenario.Scenario) -> dict[str, Any]:
    """A constant profile of --callers for --duration; the generator's cost per caller."""
    import numpy as np

    from loadtest import runner

    out = ns.out or Path(tempfile.mkdtemp(prefix="microturn-calibrate-"))
    cfg = runner.RunConfig(
        url=ns.url, scenario=sc, profile=profiles.constant(ns.callers, ns.duration, "calibrate"),
        out=out, workers=ns.workers, quiet=True, max_cpu_pct=100.0, max_loop_lag_ms=1e9,
    )  # fmt: skip
    outcome = runner.run(cfg)
    rows = [r for r in outcome.result.timeline if r.get("generator_cpu_pct") is not None]
    busy = [r for r in rows if r.get("active_sessions", 0) >= ns.callers] or rows
    cpu = float(np.mean([r["generator_cpu_pct"] for r in busy])) if busy else math.nan
    lags = [r["loop_lag_ms"] for r in busy if r.get("loop_lag_ms") is not None]
    cores = outcome.result.generator.get("cores") or 1
    per_caller = cpu * cores / ns.callers if busy else math.nan
    return {
        "callers": ns.callers,
        "cores": cores,
        "duration_s": ns.duration,
        "generator_cpu_pct_mean": round(cpu, 1),
        "cpu_pct_of_core_per_caller": round(per_caller, 2),
        "callers_per_core": round(100.0 / per_caller, 1) if per_caller and per_caller > 0 else None,
        "loop_lag_ms_p50": round(float(np.median(lags)), 1) if lags else None,
        "loop_lag_ms_max": round(max(lags), 1) if lags else None,
        "calls": outcome.result.totals.sessions,
        "failures": outcome.result.totals.setup_failures + outcome.result.totals.call_failures,
        "out": str(out),
    }


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    """``microturn loadtest SUBCOMMAND ...``; returns the exit code (see the module's help)."""
    from loadtest import prompts, results, runner, slo

    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
        if ns.cmd is None:
            parser.print_help()
            return EXIT_CONFIG
        handler = {
            "run": cmd_run, "merge": cmd_merge, "report": cmd_report, "calibrate": cmd_calibrate,
            "k8s": cmd_k8s, "collect": cmd_collect,
        }[ns.cmd]  # fmt: skip
        return handler(ns)
    except SystemExit as exc:  # --help
        return int(exc.code) if isinstance(exc.code, int) else EXIT_OK
    except (
        ConfigError,
        scenario.ScenarioError,
        profiles.ProfileError,
        slo.SloError,
        results.ResultError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (prompts.PromptError, runner.RunError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
