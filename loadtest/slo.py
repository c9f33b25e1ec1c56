"""SLO gates of a load test: ``METRIC[.STAT] OP VALUE[UNIT]``, e.g. ``turn_latency.p95<800ms``.

A gate turns a run into a verdict a CI job can act on. Latency metrics are HdrHistograms and need a
statistic (``p95``, ``p99.9``, ``max``, ``mean``, ``min``, ``count``); values are milliseconds
unless written in ``s``. Rate metrics are percentages and must be written with ``%`` (``0.5`` alone
could mean 0.5 % or 50 %). A gate on something the run did not measure fails ("no data"): a gate
that cannot be checked must not pass silently.

Exit codes of ``microturn loadtest``: the generator being overloaded beats an SLO failure, because
an overloaded generator measures itself, not the target, so the results are invalid either way.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from .histograms import LatencyHistogram

EXIT_OK = 0  # every gate passed on a valid run
EXIT_ERROR = 1  # the run itself broke (the stack did not answer, a crash)
EXIT_CONFIG = 2  # bad arguments: an unparsable gate, an unknown scenario
EXIT_SLO = 3  # a gate failed (or had no data)
EXIT_OVERLOADED = 4  # the generator was overloaded: results invalid, whatever the gates say

LATENCY_METRICS: dict[str, str] = {
    "turn_latency": "user's end of speech -> onset of the model's speech, as received",
    "setup": "dial -> media connected",
    "first_audio": "dial -> first model audio received",
    "barge_in_yield": "caller talks over the model -> the model's speech stops",
    "audio_gap": "gaps over 100 ms in the received audio",
}
RATE_METRICS: dict[str, str] = {
    "setup_fail_rate": "calls that never connected, of calls dialed",
    "call_fail_rate": "connected calls that failed (dropped, error), of calls connected",
    "packet_loss": "received-audio packets lost, of packets expected",
    "concealed": "received-audio samples concealed, of samples played",
}
NAMED_STATS = ("min", "max", "mean", "count")
STATS_HELP = "min, max, mean, count, pN (N in 0..100, e.g. p50, p95, p99, p99.9)"
OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
# Gaps are recorded only over 100 ms: a run with connected calls and no gap had none that long.
EMPTY_MEANS_ZERO = {"audio_gap"}

_OP_RE = re.compile(r"<=|>=|<|>")
_BAD_OP_RE = re.compile(r"==|!=|=<|=>|=")
_VALUE_RE = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([a-zA-Z%]*)$")
_PCT_RE = re.compile(r"^p(\d+(?:\.\d+)?)$")


class SloError(ValueError):
    """A gate that does not parse; the message says what is allowed."""


def _known_metrics() -> str:
    return (
        f"latency metrics (ms, need .STAT): {', '.join(LATENCY_METRICS)}; "
        f"rate metrics (%): {', '.join(RATE_METRICS)}"
    )


@dataclass(frozen=True)
class Slo:
    """One parsed gate. ``limit`` is in ms for latency stats, % for rates, a number for count."""

    spec: str  # as written (stripped)
    metric: str
    stat: str | None  # None for rate metrics
    op: str
    limit: float
    unit: str  # "ms" | "%" | "" (count)

    @property
    def name(self) -> str:
        return f"{self.metric}.{self.stat}" if self.stat else self.metric

    def check(self, observed: float) -> bool:
        return OPS[self.op](observed, self.limit)

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.limit:g}{self.unit}"


def parse(spec: str) -> Slo:
    """Parse one gate; raises ``SloError`` naming what is wrong and what is allowed."""
    text = spec.strip()
    if not text:
        raise SloError(
            f"empty SLO gate: write METRIC[.STAT] OP VALUE[UNIT], e.g. turn_latency.p95<800ms; {_known_metrics()}"
        )
    m = _OP_RE.search(text)
    bad = _BAD_OP_RE.search(text)
    if bad and (m is None or bad.start() < m.start() or text[bad.start() : bad.end()] in ("=<", "=>")):
        raise SloError(f"SLO gate {text!r}: unknown operator {bad.group()!r} (use <, <=, > or >=)")
    if m is None:
        raise SloError(
            f"SLO gate {text!r} has no operator: write METRIC[.STAT] OP VALUE, OP one of <, <=, >, >="
        )
    lhs, op, rhs = text[: m.start()].strip(), m.group(), text[m.end() :].strip()
    if not lhs:
        raise SloError(f"SLO gate {text!r} has no metric before {op!r}; {_known_metrics()}")
    metric, _, stat = lhs.partition(".")
    metric, stat = metric.strip(), stat.strip()
    if metric in LATENCY_METRICS:
        if not stat:
            raise SloError(
                f"SLO gate {text!r}: {metric} needs a statistic, e.g. {metric}.p95{op}{rhs or '800ms'} (stats: {STATS_HELP})"
            )
        _check_stat(text, metric, stat)
    elif metric in RATE_METRICS:
        if stat:
            raise SloError(
                f"SLO gate {text!r}: {metric} is a rate and takes no statistic (write {metric}{op}{rhs or '1%'})"
            )
    else:
        raise SloError(f"SLO gate {text!r}: unknown metric {metric!r}; {_known_metrics()}")
    if not rhs:
        raise SloError(f"SLO gate {text!r} has no value after {op!r}")
    vm = _VALUE_RE.match(rhs)
    if vm is None:
        raise SloError(f"SLO gate {text!r}: value {rhs!r} is not a number with an optional unit (ms, s, %)")
    value, unit = float(vm.group(1)), vm.group(2).lower()
    if value < 0:
        raise SloError(f"SLO gate {text!r}: value must be >= 0, got {vm.group(1)}")
    limit, unit_out = _convert(text, metric, stat or None, value, unit)
    return Slo(text, metric, stat or None, op, limit, unit_out)


def _check_stat(text: str, metric: str, stat: str) -> None:
    if stat in NAMED_STATS:
        return
    pm = _PCT_RE.match(stat)
    if pm is None:
        raise SloError(f"SLO gate {text!r}: unknown statistic {stat!r} for {metric} (stats: {STATS_HELP})")
    p = float(pm.group(1))
    if not 0 < p <= 100:
        raise SloError(f"SLO gate {text!r}: percentile {stat!r} is outside 0..100 (e.g. p50, p99.9)")


def _convert(text: str, metric: str, stat: str | None, value: float, unit: str) -> tuple[float, str]:
    """The limit in the unit the metric is measured in."""
    if metric in RATE_METRICS:
        if unit != "%":
            got = f"unit {unit!r}" if unit else "no unit"
            raise SloError(
                f"SLO gate {text!r}: {metric} is a percentage, write it with % (e.g. {metric}<1%), got {got}"
            )
        if value > 100:
            raise SloError(f"SLO gate {text!r}: {value:g}% is over 100%")
        return value, "%"
    if stat == "count":
        if unit:
            raise SloError(
                f"SLO gate {text!r}: {metric}.count is a number of values and takes no unit, got {unit!r}"
            )
        return value, ""
    if unit in ("", "ms"):
        return value, "ms"
    if unit == "s":
        return value * 1000.0, "ms"
    raise SloError(
        f"SLO gate {text!r}: unit {unit!r} does not fit {metric} (a latency: ms or s; no unit means ms)"
    )


def parse_all(specs: Iterable[str]) -> list[Slo]:
    """Gates from repeated options and/or comma-separated lists; the first bad one raises."""
    out: list[Slo] = []
    for spec in specs:
        out.extend(parse(part) for part in spec.split(",") if part.strip())
    return out


class Totals(Protocol):
    """The denominators and counts the rate metrics read (``results.Totals`` has them)."""

    sessions: int
    setup_failures: int
    connected: int
    call_failures: int
    packets_received: int
    packets_lost: int
    samples_received: int
    concealed_samples: int


class Measured(Protocol):
    """Anything with histograms and totals: a whole run's ``RunResult`` or one step's measures."""

    @property
    def histograms(self) -> Mapping[str, LatencyHistogram]: ...

    @property
    def totals(self) -> Totals: ...


@dataclass
class Verdict:
    """One gate's outcome. ``observed`` is ``None`` when there was no data (which fails)."""

    name: str  # metric[.stat]
    spec: str  # the gate as written
    op: str
    limit: float
    unit: str
    observed: float | None
    passed: bool
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Verdict:
        return cls(**d)


def observe(slo: Slo, measured: Measured) -> tuple[float | None, str]:
    """The value ``slo`` compares, or ``(None, why)`` when the run has no data for it."""
    t = measured.totals
    if slo.metric in RATE_METRICS:
        num, den, what = {
            "setup_fail_rate": (t.setup_failures, t.sessions, "no call was dialed"),
            "call_fail_rate": (t.call_failures, t.connected, "no call connected"),
            "packet_loss": (t.packets_lost, t.packets_received + t.packets_lost, "no audio packets received"),
            "concealed": (t.concealed_samples, t.samples_received, "no audio samples received"),
        }[slo.metric]
        return (100.0 * num / den, "") if den > 0 else (None, f"no data: {what}")
    h = measured.histograms.get(slo.metric)
    count = h.count if h is not None else 0
    if slo.stat == "count":
        return float(count), ""
    if count == 0 or h is None:
        if slo.metric in EMPTY_MEANS_ZERO and t.connected > 0:
            return 0.0, "no gap over 100 ms was recorded"
        return None, f"no data: no {slo.metric} values were measured"
    if slo.stat == "max":
        return h.max, ""
    if slo.stat == "min":
        return h.min, ""
    if slo.stat == "mean":
        return h.mean, ""
    assert slo.stat is not None
    return h.percentile(float(slo.stat[1:])), ""


def evaluate(slos: Sequence[Slo | str], measured: Measured) -> list[Verdict]:
    """One verdict per gate, in order; "no data" fails with the reason."""
    verdicts: list[Verdict] = []
    for s in slos:
        slo = parse(s) if isinstance(s, str) else s
        observed, reason = observe(slo, measured)
        passed = observed is not None and slo.check(observed)
        verdicts.append(Verdict(slo.name, slo.spec, slo.op, slo.limit, slo.unit, observed, passed, reason))
    return verdicts


def exit_code(verdicts: Sequence[Verdict | Mapping[str, Any]], overloaded: bool) -> int:
    """EXIT_OVERLOADED if the generator was overloaded (invalid run), else EXIT_SLO if any gate
    failed, else EXIT_OK. (EXIT_CONFIG and EXIT_ERROR are decided before there are results.)"""
    if overloaded:
        return EXIT_OVERLOADED
    for v in verdicts:
        passed = v.passed if isinstance(v, Verdict) else bool(v["passed"])
        if not passed:
            return EXIT_SLO
    return EXIT_OK


def format_value(value: float | None, unit: str) -> str:
    """How tables print an observed value or a limit."""
    if value is None:
        return "no data"
    if unit == "%":
        return f"{value:.3g}%"
    if unit == "ms":
        return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"
    return f"{value:g}"
