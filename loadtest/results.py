"""The result of a load-test run: what every caller recorded, boiled down to histograms, a
per-second timeline and (for step profiles) one row per load level, in a versioned ``result.json``.

Everything is derived from the callers' ``SessionRecord``s (wall-clock times), so shard results
from several generator machines merge into the result one big generator would have produced:
histograms add bucket by bucket, sessions concatenate, the timeline is rebuilt by second. The
generator's own health (CPU, event-loop lag) travels along, because an overloaded generator
measures itself: such a run is marked ``overloaded`` and its gates mean nothing.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .histograms import LatencyHistogram, merged
from .records import SCHEMA_VERSION, SessionRecord, TurnRecord
from .slo import LATENCY_METRICS, RATE_METRICS, Slo, Verdict, evaluate, format_value, parse

HISTOGRAMS = tuple(LATENCY_METRICS)  # turn_latency, setup, first_audio, barge_in_yield, audio_gap
# Audio gaps carry no times, so a step (a time window) cannot be gated on them.
STEP_METRICS = frozenset(HISTOGRAMS) - {"audio_gap"} | frozenset(RATE_METRICS)
RESULT_FILE = "result.json"
SESSIONS_FILE = "sessions.csv"
# The generator is overloaded (results invalid) when its event loop stalled this long once, or its
# CPU stayed this busy for OVERLOAD_CPU_SECONDS samples in a row. A caller can decide instead.
OVERLOAD_LOOP_LAG_MS = 100.0
OVERLOAD_CPU_PCT = 90.0
OVERLOAD_CPU_SECONDS = 3
SESSION_COLUMNS = (
    "active_sessions", "dials", "setup_failures", "call_failures", "turns", "unanswered_turns",
    "turn_p50_ms", "turn_p95_ms", "packet_loss_pct", "concealed_pct",
)  # fmt: skip
GENERATOR_COLUMNS = ("generator_cpu_pct", "loop_lag_ms")


class ResultError(ValueError):
    """A result file that cannot be read or results that cannot be merged."""


@dataclass
class Totals:
    """Counts over a run or a window: the denominators of the rate gates."""

    sessions: int = 0  # calls dialed
    connected: int = 0
    setup_failures: int = 0  # dialed, never connected
    call_failures: int = 0  # connected, then failed (dropped, error)
    turns: int = 0
    answered_turns: int = 0
    barge_ins: int = 0
    packets_received: int = 0
    packets_lost: int = 0
    samples_received: int = 0
    concealed_samples: int = 0
    underruns: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def setup_fail_rate_pct(self) -> float | None:
        return _pct(self.setup_failures, self.sessions)

    @property
    def call_fail_rate_pct(self) -> float | None:
        return _pct(self.call_failures, self.connected)

    @property
    def packet_loss_pct(self) -> float | None:
        return _pct(self.packets_lost, self.packets_received + self.packets_lost)

    @property
    def concealed_pct(self) -> float | None:
        return _pct(self.concealed_samples, self.samples_received)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Totals:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Measures:
    """Histograms and totals of a window (a step): what ``slo.evaluate`` reads."""

    histograms: dict[str, LatencyHistogram]
    totals: Totals


@dataclass
class RunResult:
    """One run (or several shards merged). ``timeline`` has one row per second (``t`` from the
    run's start, ``at`` the epoch second); ``steps`` one row per load level of a step profile."""

    schema_version: int
    config: dict[str, Any]
    target: dict[str, Any]  # edge URL(s), model versions seen
    started_at: float
    ended_at: float
    shards: list[int]
    sessions: list[SessionRecord]
    histograms: dict[str, LatencyHistogram]
    totals: Totals
    timeline: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    generator: dict[str, Any]  # cores, cpu_pct_max, loop_lag_ms_max, overloaded, reason
    slo: list[dict[str, Any]]  # Verdict.to_dict() of each gate

    @property
    def duration_s(self) -> float:
        return max(0.0, self.ended_at - self.started_at)

    @property
    def overloaded(self) -> bool:
        return bool(self.generator.get("overloaded"))

    def verdicts(self) -> list[Verdict]:
        return [Verdict.from_dict(v) for v in self.slo]

    def gates(self) -> list[Slo]:
        """The gates this run was judged by (parsed back from its verdicts)."""
        return [parse(v["spec"]) for v in self.slo]


# ---------------------------------------------------------------- measuring


def _pct(num: float, den: float) -> float | None:
    return 100.0 * num / den if den > 0 else None


def nearest_rank(values: Sequence[float], p: float) -> float | None:
    """Percentile by nearest rank (what HdrHistogram reports, without its bucketing)."""
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[max(1, math.ceil(p / 100.0 * len(ordered))) - 1])


def turn_end(t: TurnRecord) -> float | None:
    """When the turn's wait ended: the onset of the answer (None if none came)."""
    if t.answer_onset_at is not None:
        return t.answer_onset_at
    if t.turn_latency_ms is None:
        return None
    base = t.speech_end_at if t.speech_end_at is not None else t.said_at
    return base + t.turn_latency_ms / 1000.0


def failed_at(s: SessionRecord) -> float:
    """When a failure is counted: at the hangup if known, else when the call was dialed."""
    return s.ended_at if s.ended_at is not None else (s.connected_at or s.dialed_at)


def stats_deltas(s: SessionRecord) -> list[tuple[float, int, int, int, int]]:
    """(at, packets received, lost, samples received, concealed) per stats sample, from the
    cumulative counters (which start at zero with the call); counter resets count as zero."""
    out = []
    prev = (0, 0, 0, 0)
    for st in sorted(s.stats, key=lambda x: x.at):
        cur = (st.packets_received, max(0, st.packets_lost), st.total_samples_received, st.concealed_samples)
        out.append((st.at, *(max(0, c - p) for c, p in zip(cur, prev, strict=True))))
        prev = cur
    return out


def measure(
    sessions: Iterable[SessionRecord], start: float | None = None, end: float | None = None
) -> Measures:
    """Histograms and totals of everything (no window), or of ``[start, end)``: calls dialed in
    it, turns whose answer came in it, failures and stats samples that fell in it."""
    windowed = start is not None and end is not None

    def inside(x: float | None) -> bool:
        return x is not None and (not windowed or start <= x < end)  # type: ignore[operator]

    hs = {name: LatencyHistogram() for name in HISTOGRAMS if not (windowed and name == "audio_gap")}
    t = Totals()
    for s in sessions:
        if inside(s.dialed_at):
            t.sessions += 1
            if s.failed_setup:
                t.setup_failures += 1
            for name, v in (("setup", s.setup_ms), ("first_audio", s.first_audio_ms)):
                if v is not None:
                    hs[name].record(v)
        alive = s.connected_at is not None and (
            not windowed or (s.connected_at < end and (s.ended_at is None or s.ended_at >= start))  # type: ignore[operator]
        )
        if alive:
            t.connected += 1
            if s.failure and inside(failed_at(s)):
                t.call_failures += 1
        if not windowed:
            t.underruns += s.underruns
            for code, n in s.errors.items():
                t.errors[code] = t.errors.get(code, 0) + n
            for gap in s.audio_gaps_ms:
                hs["audio_gap"].record(gap)
        for turn in s.turns:
            if inside(turn.said_at):
                t.turns += 1
            if turn.turn_latency_ms is not None and inside(turn_end(turn) if windowed else turn.said_at):
                t.answered_turns += 1
                hs["turn_latency"].record(turn.turn_latency_ms)
            if turn.kind == "barge_in" and inside(turn.barge_in_at or turn.said_at):
                t.barge_ins += 1
                if turn.yield_ms is not None:
                    hs["barge_in_yield"].record(turn.yield_ms)
        for at, rx, lost, samples, concealed in stats_deltas(s):
            if inside(at):
                t.packets_received += rx
                t.packets_lost += lost
                t.samples_received += samples
                t.concealed_samples += concealed
    return Measures(hs, t)


def _timeline(
    sessions: Sequence[SessionRecord],
    started_at: float,
    ended_at: float,
    generator_samples: Sequence[Mapping[str, Any]],
    target_samples: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """One row per second of the run; events outside it are counted in the first/last second."""
    s0 = math.floor(started_at)
    n = max(1, math.ceil(ended_at) - s0)

    def sec(x: float) -> int:
        return min(max(math.floor(x) - s0, 0), n - 1)

    active = [0] * (n + 1)
    count = {k: [0] * n for k in ("dials", "setup_failures", "call_failures", "turns", "unanswered_turns")}
    latencies: list[list[float]] = [[] for _ in range(n)]
    packets = [[0, 0, 0, 0] for _ in range(n)]  # received, lost, samples, concealed
    for s in sessions:
        count["dials"][sec(s.dialed_at)] += 1
        if s.failed_setup:
            count["setup_failures"][sec(failed_at(s))] += 1
        else:
            assert s.connected_at is not None
            a = sec(s.connected_at)
            b = max(a, sec(s.ended_at if s.ended_at is not None else ended_at))
            active[a] += 1
            active[b + 1] -= 1
            if s.failure:
                count["call_failures"][sec(failed_at(s))] += 1
        for turn in s.turns:
            end = turn_end(turn)
            if end is None or turn.turn_latency_ms is None:
                count["unanswered_turns"][sec(turn.said_at)] += 1
                continue
            count["turns"][sec(end)] += 1
            latencies[sec(end)].append(turn.turn_latency_ms)
        for at, *deltas in stats_deltas(s):
            row = packets[sec(at)]
            for i, d in enumerate(deltas):
                row[i] += d
    gen = _per_second(generator_samples, sec, n)
    tgt = _per_second(target_samples, sec, n)
    rows: list[dict[str, Any]] = []
    running = 0
    for i in range(n):
        running += active[i]
        rx, lost, samples, concealed = packets[i]
        row: dict[str, Any] = {"t": i, "at": s0 + i, "active_sessions": running}
        row.update({k: v[i] for k, v in count.items()})
        row["turn_p50_ms"] = nearest_rank(latencies[i], 50)
        row["turn_p95_ms"] = nearest_rank(latencies[i], 95)
        row["packet_loss_pct"] = _pct(lost, rx + lost)
        row["concealed_pct"] = _pct(concealed, samples)
        row["generator_cpu_pct"] = gen[i].get("cpu_pct")
        row["loop_lag_ms"] = gen[i].get("loop_lag_ms")
        row.update(tgt[i])
        rows.append(row)
    return rows


def _per_second(samples: Sequence[Mapping[str, Any]], sec: Any, n: int) -> list[dict[str, float]]:
    """The largest value of each numeric key per second (samples need an ``at``)."""
    out: list[dict[str, float]] = [{} for _ in range(n)]
    for sample in samples:
        if sample.get("at") is None:
            raise ResultError(f"a generator/target sample has no 'at' time: {dict(sample)}")
        row = out[sec(float(sample["at"]))]
        for k, v in sample.items():
            if k != "at" and isinstance(v, int | float) and not isinstance(v, bool):
                row[k] = max(row.get(k, v), v)
    return out


def _generator_summary(
    given: Mapping[str, Any] | None, samples: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """cores, cpu_pct_max, loop_lag_ms_max, overloaded, reason: the caller's verdict if it gave
    one, otherwise judged from the samples with the OVERLOAD_* thresholds."""
    g: dict[str, Any] = dict(given or {})
    cpu = [float(s["cpu_pct"]) for s in samples if s.get("cpu_pct") is not None]
    lag = [float(s["loop_lag_ms"]) for s in samples if s.get("loop_lag_ms") is not None]
    g.setdefault("cores", None)
    g["cpu_pct_max"] = max(
        [*cpu, *([g["cpu_pct_max"]] if g.get("cpu_pct_max") is not None else [])], default=None
    )
    g["loop_lag_ms_max"] = max(
        [*lag, *([g["loop_lag_ms_max"]] if g.get("loop_lag_ms_max") is not None else [])], default=None
    )
    if "overloaded" not in g:
        reasons = []
        if g["loop_lag_ms_max"] is not None and g["loop_lag_ms_max"] > OVERLOAD_LOOP_LAG_MS:
            reasons.append(f"event loop lag {g['loop_lag_ms_max']:.0f} ms > {OVERLOAD_LOOP_LAG_MS:.0f} ms")
        run = longest = 0
        for c in cpu:
            run = run + 1 if c >= OVERLOAD_CPU_PCT else 0
            longest = max(longest, run)
        if longest >= OVERLOAD_CPU_SECONDS:
            reasons.append(f"CPU >= {OVERLOAD_CPU_PCT:.0f}% for {longest} samples in a row")
        g["overloaded"] = bool(reasons)
        g["reason"] = "; ".join(reasons)
    g["overloaded"] = bool(g["overloaded"])
    g.setdefault("reason", "")
    return g


def _step_row(
    index: int,
    spec: Mapping[str, Any],
    sessions: Sequence[SessionRecord],
    timeline: Sequence[Mapping[str, Any]],
    gates: Sequence[Slo],
) -> dict[str, Any]:
    """One load level: its window's measures, and whether the gates that apply to steps pass."""
    try:
        level, start, end = int(spec["level"]), float(spec["started_at"]), float(spec["ended_at"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultError(f"step {index} needs level, started_at and ended_at, got {dict(spec)}") from exc
    m = measure(sessions, start, end)
    t = m.totals
    involved = sum(
        1
        for s in sessions
        if start <= s.dialed_at < end
        or (
            s.connected_at is not None
            and s.connected_at < end
            and (s.ended_at is None or s.ended_at >= start)
        )
    )
    failures = t.setup_failures + t.call_failures
    active = [r["active_sessions"] for r in timeline if start <= r["at"] < end]
    turn = m.histograms["turn_latency"]
    step_gates = [g for g in gates if g.metric in STEP_METRICS]
    verdicts = evaluate(step_gates, m) if step_gates else []
    return {
        "index": int(spec.get("index", index)),
        "level": level,
        "started_at": start,
        "ended_at": end,
        "sessions": involved,
        "active_max": max(active, default=0),
        "dials": t.sessions,
        "turns": t.answered_turns,
        "turn_p50_ms": turn.percentile(50),
        "turn_p95_ms": turn.percentile(95),
        "turn_p99_ms": turn.percentile(99),
        "setup_failures": t.setup_failures,
        "call_failures": t.call_failures,
        "failures": failures,
        "fail_rate_pct": _pct(failures, involved),
        "passed": all(v.passed for v in verdicts) if verdicts else None,
        "verdicts": [v.to_dict() for v in verdicts],
        "histograms": {k: h.encode() for k, h in m.histograms.items()},
        "totals": t.to_dict(),
    }


def step_measures(step: Mapping[str, Any]) -> Measures:
    """A step row's histograms and totals, for gates (``capacity``)."""
    hs = {k: LatencyHistogram.decode(v) for k, v in step.get("histograms", {}).items()}
    return Measures(hs, Totals.from_dict(step.get("totals", {})))


def _parse_gates(slos: Sequence[Slo | str]) -> list[Slo]:
    return [parse(s) if isinstance(s, str) else s for s in slos]


def build(
    sessions: Sequence[SessionRecord],
    config: Mapping[str, Any],
    *,
    target: Mapping[str, Any] | None = None,
    started_at: float | None = None,
    ended_at: float | None = None,
    shards: Sequence[int] | None = None,
    generator: Mapping[str, Any] | None = None,
    generator_samples: Sequence[Mapping[str, Any]] = (),
    target_samples: Sequence[Mapping[str, Any]] = (),
    steps: Sequence[Mapping[str, Any]] = (),
    slos: Sequence[Slo | str] = (),
) -> RunResult:
    """The result of one run from its callers' records.

    ``generator_samples``: ``{"at", "cpu_pct", "loop_lag_ms"}`` rows (CPU in % of the generator's
    cores); ``generator``: ``cores`` and, if the caller judged it, ``overloaded`` / ``reason``.
    ``target_samples``: ``{"at", "edge_sessions", "tick_ms_p95", "deadline_misses", ...}`` rows
    scraped from the target. ``steps``: ``{"level", "started_at", "ended_at"}`` per load level
    (epoch seconds; the level is the whole run's, as the profile says, not this shard's share).
    ``slos``: gates to judge the run (and each step) by. Times default to the records' span.
    """
    sessions = list(sessions)
    gates = _parse_gates(slos)
    times = [s.dialed_at for s in sessions]
    times += [float(x["at"]) for x in (*generator_samples, *target_samples) if x.get("at") is not None]
    ends = [*times, *(s.ended_at for s in sessions if s.ended_at is not None)]
    ends += [e for s in sessions for t in s.turns if (e := turn_end(t)) is not None]
    ends += [st.at for s in sessions for st in s.stats]
    if started_at is None:
        started_at = min(times, default=0.0)
    if ended_at is None:
        ended_at = max(ends, default=started_at)
    if ended_at < started_at:
        raise ResultError(f"the run ends ({ended_at}) before it starts ({started_at})")
    whole = measure(sessions)
    timeline = _timeline(sessions, started_at, ended_at, generator_samples, target_samples)
    tgt = dict(target or {})
    versions = set(tgt.get("model_versions", [])) | {s.model_version for s in sessions if s.model_version}
    tgt["model_versions"] = sorted(versions)
    result = RunResult(
        schema_version=SCHEMA_VERSION,
        config=dict(config),
        target=tgt,
        started_at=float(started_at),
        ended_at=float(ended_at),
        shards=sorted(set(shards)) if shards is not None else sorted({s.shard for s in sessions} or {0}),
        sessions=sessions,
        histograms=whole.histograms,
        totals=whole.totals,
        timeline=timeline,
        steps=[_step_row(i, spec, sessions, timeline, gates) for i, spec in enumerate(steps)],
        generator=_generator_summary(generator, generator_samples),
        slo=[v.to_dict() for v in evaluate(gates, whole)],
    )
    return result


# ---------------------------------------------------------------- files


def session_row(s: SessionRecord) -> dict[str, Any]:
    """One call as a flat row: sessions.csv and the report's worst-sessions table."""
    lat = [t.turn_latency_ms for t in s.turns if t.turn_latency_ms is not None]
    yields = [t.yield_ms for t in s.turns if t.yield_ms is not None]
    m = measure([s])
    return {
        "caller": s.caller,
        "mode": s.mode,
        "scenario": s.scenario,
        "shard": s.shard,
        "session_id": s.session_id,
        "model_version": s.model_version,
        "dialed_at": s.dialed_at,
        "duration_s": (s.ended_at - s.dialed_at) if s.ended_at is not None else None,
        "setup_ms": s.setup_ms,
        "first_audio_ms": s.first_audio_ms,
        "turns": len(s.turns),
        "answered_turns": len(lat),
        "turn_p50_ms": nearest_rank(lat, 50),
        "turn_p95_ms": nearest_rank(lat, 95),
        "turn_max_ms": max(lat, default=None),
        "yield_p50_ms": nearest_rank(yields, 50),
        "max_audio_gap_ms": max(s.audio_gaps_ms, default=None),
        "underruns": s.underruns,
        "packet_loss_pct": m.totals.packet_loss_pct,
        "concealed_pct": m.totals.concealed_pct,
        "failure": s.failure,
        "errors": ";".join(f"{k}={v}" for k, v in sorted(s.errors.items())),
    }


def to_json(result: RunResult) -> dict[str, Any]:
    """result.json's content (histograms encoded, with their summaries for people reading it)."""
    return {
        "schema_version": result.schema_version,
        "config": result.config,
        "target": result.target,
        "started_at": result.started_at,
        "ended_at": result.ended_at,
        "shards": result.shards,
        "generator": result.generator,
        "slo": result.slo,
        "totals": result.totals.to_dict(),
        "histograms": {
            k: {"summary": h.to_summary(), "encoded": h.encode()} for k, h in result.histograms.items()
        },
        "steps": result.steps,
        "timeline": result.timeline,
        "sessions": [s.to_dict() for s in result.sessions],
    }


def from_json(d: Mapping[str, Any], source: str = "result") -> RunResult:
    """The inverse of ``to_json``; a different schema version is refused, not guessed at."""
    version = d.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ResultError(
            f"{source}: schema_version {version!r}, this microturn reads {SCHEMA_VERSION} "
            "(re-run the load test, or read it with the microturn version that wrote it)"
        )
    try:
        return RunResult(
            schema_version=version,
            config=dict(d["config"]),
            target=dict(d["target"]),
            started_at=float(d["started_at"]),
            ended_at=float(d["ended_at"]),
            shards=[int(x) for x in d["shards"]],
            sessions=[SessionRecord.from_dict(s) for s in d["sessions"]],
            histograms={k: LatencyHistogram.decode(v["encoded"]) for k, v in d["histograms"].items()},
            totals=Totals.from_dict(d["totals"]),
            timeline=list(d["timeline"]),
            steps=list(d["steps"]),
            generator=dict(d["generator"]),
            slo=list(d["slo"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultError(f"{source}: not a load-test result ({type(exc).__name__}: {exc})") from exc


def save(result: RunResult, directory: str | Path) -> Path:
    """Write ``result.json`` and ``sessions.csv`` into ``directory``; returns result.json's path."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULT_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(to_json(result), separators=(",", ":"), default=str))
    tmp.replace(path)  # a reader never sees half a file
    rows = [session_row(s) for s in result.sessions]
    columns = list(rows[0]) if rows else list(session_row(SessionRecord("", "", "")))
    with (out / SESSIONS_FILE).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return path


def load(path: str | Path) -> RunResult:
    """Read a result from its directory or its result.json."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULT_FILE
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        raise ResultError(f"{p}: no such result file") from None
    except json.JSONDecodeError as exc:
        raise ResultError(f"{p}: not JSON ({exc})") from exc
    if not isinstance(d, dict):
        raise ResultError(f"{p}: not a load-test result (top level is {type(d).__name__})")
    return from_json(d, str(p))


# ---------------------------------------------------------------- merging and capacity


def merge(results: Sequence[RunResult]) -> RunResult:
    """Shards of one run as one result: histograms added exactly, sessions concatenated, the
    timeline rebuilt by second (generator and target gauges: the largest shard's value), steps
    merged by index (a step's level is the whole run's, so shards must agree), the generator overloaded if any
    shard was, and the shards' gates judged again on the whole."""
    if not results:
        raise ResultError("nothing to merge")
    seen: dict[int, int] = {}
    for i, r in enumerate(results):
        if r.schema_version != SCHEMA_VERSION:
            raise ResultError(f"result {i}: schema_version {r.schema_version}, expected {SCHEMA_VERSION}")
        for shard in r.shards:
            if shard in seen:
                raise ResultError(f"shard {shard} is in results {seen[shard]} and {i}: it would count twice")
            seen[shard] = i
    sessions = [s for r in results for s in r.sessions]
    gen_samples, tgt_samples = [], []
    for r in results:
        for row in r.timeline:
            gen_samples.append(
                {
                    "at": row["at"],
                    "cpu_pct": row.get("generator_cpu_pct"),
                    "loop_lag_ms": row.get("loop_lag_ms"),
                }
            )
            extra = {
                k: v for k, v in row.items() if k not in ("t", "at", *SESSION_COLUMNS, *GENERATOR_COLUMNS)
            }
            if extra:
                tgt_samples.append({"at": row["at"], **extra})
    steps: dict[int, dict[str, Any]] = {}
    for i, r in enumerate(results):
        for st in r.steps:
            index, level = int(st["index"]), int(st["level"])
            cur = steps.setdefault(
                index, {"index": index, "level": level, "started_at": math.inf, "ended_at": -math.inf}
            )
            if cur["level"] != level:
                raise ResultError(
                    f"step {index} is level {cur['level']} in one shard and {level} in result {i}: "
                    "a step's level is the whole run's (the profile's), the same in every shard"
                )
            cur["started_at"] = min(cur["started_at"], float(st["started_at"]))
            cur["ended_at"] = max(cur["ended_at"], float(st["ended_at"]))
    gates: dict[str, Slo] = {}
    for r in results:
        for g in r.gates():
            gates.setdefault(str(g), g)
    cores = [r.generator.get("cores") for r in results]
    generator = {
        "cores": sum(cores) if all(isinstance(c, int | float) for c in cores) else None,
        "cpu_pct_max": max(
            (r.generator["cpu_pct_max"] for r in results if r.generator.get("cpu_pct_max") is not None),
            default=None,
        ),
        "loop_lag_ms_max": max(
            (
                r.generator["loop_lag_ms_max"]
                for r in results
                if r.generator.get("loop_lag_ms_max") is not None
            ),
            default=None,
        ),
        "overloaded": any(r.overloaded for r in results),
        "reason": "; ".join(
            f"shard {','.join(map(str, r.shards))}: {r.generator.get('reason') or 'overloaded'}"
            for r in results
            if r.overloaded
        ),
        "per_shard": [
            {"shards": r.shards, **{k: v for k, v in r.generator.items() if k != "per_shard"}}
            for r in results
        ],
    }
    config = dict(results[0].config)
    if any(r.config != results[0].config for r in results[1:]):
        config["per_shard"] = [r.config for r in results]
    target = dict(results[0].target)
    urls = sorted({str(u) for r in results for u in _as_list(r.target.get("url"))})
    if len(urls) > 1:
        target["url"] = urls
    target["model_versions"] = sorted({v for r in results for v in r.target.get("model_versions", [])})
    out = build(
        sessions,
        config,
        target=target,
        started_at=min(r.started_at for r in results),
        ended_at=max(r.ended_at for r in results),
        shards=sorted(seen),
        generator=generator,
        generator_samples=[
            s for s in gen_samples if s["cpu_pct"] is not None or s["loop_lag_ms"] is not None
        ],
        target_samples=tgt_samples,
        steps=[steps[k] for k in sorted(steps)],
        slos=list(gates.values()),
    )
    # The shards' own histograms, added: exact whatever the shards kept of their sessions.
    names = {k for r in results for k in r.histograms}
    out.histograms = {
        k: merged([r.histograms[k] for r in results if k in r.histograms]) for k in sorted(names)
    }
    out.slo = [v.to_dict() for v in evaluate(list(gates.values()), out)]
    return out


def _as_list(x: Any) -> list[Any]:
    if x is None:
        return []
    return list(x) if isinstance(x, list | tuple) else [x]


@dataclass
class Capacity:
    """Sessions at SLO: the highest step level, walking up from the lowest, whose gates all pass
    before the first step that fails one (the knee of the capacity curve)."""

    sessions_at_slo: int | None
    knee_index: int | None  # the step index of that level
    first_failing_level: int | None
    failed_gates: list[str]  # what failed at the first failing level
    gates: list[str]
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def capacity(result: RunResult, slos: Sequence[Slo | str] | None = None) -> Capacity:
    """The knee of a step profile, judged by ``slos`` (default: the run's own gates) on each step.
    Gates on audio gaps do not apply to steps (gaps carry no times)."""
    gates = [
        g for g in (_parse_gates(slos) if slos is not None else result.gates()) if g.metric in STEP_METRICS
    ]
    names = [str(g) for g in gates]
    if not result.steps:
        return Capacity(None, None, None, [], names, "the run has no steps (not a step profile)")
    if not gates:
        return Capacity(None, None, None, [], names, "no gate applies to steps")
    knee: tuple[int, int] | None = None
    for step in sorted(result.steps, key=lambda s: (s["level"], s["index"])):
        verdicts = evaluate(gates, step_measures(step))
        failed = [
            f"{v.spec} (observed {format_value(v.observed, v.unit) if v.observed is not None else v.reason})"
            for v in verdicts
            if not v.passed
        ]
        if failed:
            why = "" if knee else f"the lowest level ({step['level']}) already fails"
            return Capacity(
                knee[0] if knee else None, knee[1] if knee else None, step["level"], failed, names, why
            )
        knee = (step["level"], step["index"])
    assert knee is not None
    return Capacity(
        knee[0], knee[1], None, [], names, "every step passed: the knee is above the highest level"
    )
