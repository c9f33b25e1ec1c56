"""One self-contained HTML file per run: the SLO verdicts, latency distributions, the per-second
timeline, the capacity curve of a step profile and the worst sessions.

Self-contained because reports are attached to CI runs and read offline months later: plots are
matplotlib PNGs inlined as base64 (no CDN, no script), CSS is inline, and the whole file stays
small (interactive plotting libraries inline megabytes of JavaScript).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from .histograms import LatencyHistogram
from .results import GENERATOR_COLUMNS, SESSION_COLUMNS, RunResult, capacity, session_row
from .slo import format_value

DPI = 80
WORST_SESSIONS = 20
DISTRIBUTIONS = (("turn_latency", "turn latency"), ("setup", "setup"), ("first_audio", "first audio"))
PERCENTILE_TICKS = (
    (0, "0%"),
    (50, "50%"),
    (90, "90%"),
    (99, "99%"),
    (99.9, "99.9%"),
    (99.99, "99.99%"),
    (99.999, "99.999%"),
)

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin:1.4em 0 .4em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}tr.pass td.v{background:#dff5df;color:#135e13;font-weight:bold}
tr.fail td.v{background:#fbdcdc;color:#8a1010;font-weight:bold}
.banner{background:#8a1010;color:#fff;padding:.7em 1em;font-weight:bold;border-radius:4px;margin:.6em 0}
.ok{background:#135e13}.meta td{text-align:left}img{max-width:100%;display:block;margin:.4em 0}
.muted{color:#777}details{margin:.4em 0}pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:12px}
"""


def write_report(result: RunResult, path: str | Path) -> Path:
    """Write the report for ``result`` to ``path`` (one .html file); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render(result), encoding="utf-8")
    return p


def render(result: RunResult) -> str:
    """The report as one HTML string."""
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>load test: {_e(_target_url(result))}</title><style>{CSS}</style></head><body>",
        _header(result),
        _slo_section(result),
        _latency_section(result),
        _timeline_section(result),
        _capacity_section(result),
        _worst_section(result),
        "</body></html>",
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------- sections


def _header(r: RunResult) -> str:
    g = r.generator
    cfg = r.config
    started = (
        datetime.fromtimestamp(r.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if r.started_at else "?"
    )
    t = r.totals
    rows = [
        ("target", _target_url(r)),
        ("model versions", ", ".join(r.target.get("model_versions", [])) or "unknown"),
        ("profile", cfg.get("profile_desc") or cfg.get("profile") or "?"),
        ("scenario", cfg.get("scenario", "?")),
        ("callers", cfg.get("mode", ", ".join(sorted({s.mode for s in r.sessions})) or "?")),
        ("started", started),
        ("duration", f"{r.duration_s:.0f} s"),
        ("shards", ", ".join(map(str, r.shards))),
        ("calls", f"{t.sessions} dialed, {t.connected} connected, {t.setup_failures} setup failures, "
                  f"{t.call_failures} call failures; {t.answered_turns} of {t.turns} turns answered"),
        ("generator", f"{g.get('cores') or '?'} cores, CPU max {_num(g.get('cpu_pct_max'), '%')}, "
                      f"event-loop lag max {_num(g.get('loop_lag_ms_max'), ' ms')}"),
    ]  # fmt: skip
    out = ["<h1>microturn load test</h1>"]
    if r.overloaded:
        out.append(
            '<div class="banner" id="overloaded">The load generator was overloaded'
            f" ({_e(g.get('reason') or 'no reason given')}): these results measure the generator, "
            "not the target. Use more generator cores or shards and run again.</div>"
        )
    out.append(
        '<table class="meta">'
        + "".join(f'<tr><th class="l">{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in rows)
        + "</table>"
    )
    out.append(
        f"<details><summary>run configuration</summary><pre>{_e(json.dumps(cfg, indent=1, default=str))}</pre></details>"
    )
    return "\n".join(out)


def _slo_section(r: RunResult) -> str:
    out = ["<h2>SLO gates</h2>"]
    if not r.slo:
        return out[0] + '<p class="muted">No gates were given (--slo).</p>'
    out.append(
        '<table class="slo" id="slo"><tr><th class="l">gate</th><th>observed</th><th>limit</th><th>result</th><th class="l">note</th></tr>'
    )
    for v in r.slo:
        passed = bool(v["passed"])
        cls = "pass" if passed else "fail"
        out.append(
            f'<tr class="{cls}" data-gate="{_e(v["spec"])}" data-passed="{str(passed).lower()}">'
            f'<td class="l">{_e(v["spec"])}</td><td>{_e(format_value(v["observed"], v["unit"]))}</td>'
            f"<td>{_e(v['op'])} {_e(format_value(v['limit'], v['unit']))}</td>"
            f'<td class="v">{"PASS" if passed else "FAIL"}</td><td class="l">{_e(v.get("reason", ""))}</td></tr>'
        )
    out.append("</table>")
    return "\n".join(out)


def _latency_section(r: RunResult) -> str:
    out = [
        "<h2>Latency</h2>",
        '<table id="latency"><tr><th class="l">metric</th><th>count</th><th>p50</th><th>p90</th><th>p95</th><th>p99</th><th>max</th></tr>',
    ]
    for name, h in r.histograms.items():
        s = h.to_summary()
        cells = "".join(f"<td>{_num(s[k], ' ms')}</td>" for k in ("p50", "p90", "p95", "p99", "max"))
        out.append(f'<tr><td class="l">{_e(name)}</td><td>{s["count"]}</td>{cells}</tr>')
    out.append("</table>")
    present = [(k, label) for k, label in DISTRIBUTIONS if k in r.histograms and r.histograms[k].count]
    if present:
        out.append(_img(_percentile_plot(r.histograms, present), "latency by percentile", "plot-percentiles"))
        out.append(_img(_cdf_plot(r.histograms, present), "latency CDF", "plot-cdf"))
    else:
        out.append('<p class="muted">No latencies were measured.</p>')
    return "\n".join(out)


def _timeline_section(r: RunResult) -> str:
    if not r.timeline:
        return ""
    return "<h2>Timeline (per second)</h2>\n" + _img(
        _timeline_plot(r), "per-second timeline", "plot-timeline"
    )


def _capacity_section(r: RunResult) -> str:
    if not r.steps:
        return ""
    cap = capacity(r)
    headline = (
        f"<p><b>sessions at SLO: {cap.sessions_at_slo}</b>"
        if cap.sessions_at_slo is not None
        else "<p><b>sessions at SLO: none</b>"
    )
    if cap.first_failing_level is not None:
        headline += f" (level {cap.first_failing_level} fails: {_e('; '.join(cap.failed_gates))})"
    if cap.reason:
        headline += f' <span class="muted">{_e(cap.reason)}</span>'
    headline += f'<br><span class="muted">gates: {_e(", ".join(cap.gates) or "none")}</span></p>'
    rows = [
        '<table id="steps"><tr><th>level</th><th>sessions</th><th>turns</th><th>turn p50</th><th>turn p95</th><th>failures</th><th>fail rate</th><th>SLO</th></tr>'
    ]
    for st in sorted(r.steps, key=lambda s: (s["level"], s["index"])):
        ok = st.get("passed")
        verdict = "-" if ok is None else ("PASS" if ok else "FAIL")
        cls = "" if ok is None else ("pass" if ok else "fail")
        rows.append(
            f'<tr class="{cls}"><td>{st["level"]}</td><td>{st["sessions"]}</td><td>{st["turns"]}</td>'
            f"<td>{_num(st['turn_p50_ms'], ' ms')}</td><td>{_num(st['turn_p95_ms'], ' ms')}</td>"
            f'<td>{st["failures"]}</td><td>{_num(st["fail_rate_pct"], "%")}</td><td class="v">{verdict}</td></tr>'
        )
    rows.append("</table>")
    plot = _img(_capacity_plot(r, cap.sessions_at_slo), "capacity curve", "plot-capacity")
    return "<h2>Capacity (step profile)</h2>\n" + headline + plot + "\n".join(rows)


def _worst_section(r: RunResult) -> str:
    rows = worst_sessions(session_row(s) for s in r.sessions)
    if not rows:
        return '<h2>Worst sessions</h2><p class="muted">No sessions.</p>'
    cols = [
        ("caller", "caller"), ("scenario", "scenario"), ("shard", "shard"), ("setup_ms", "setup"),
        ("first_audio_ms", "first audio"), ("turns", "turns"), ("turn_p50_ms", "turn p50"),
        ("turn_p95_ms", "turn p95"), ("max_audio_gap_ms", "max gap"), ("packet_loss_pct", "loss"),
        ("concealed_pct", "concealed"), ("failure", "failure"), ("errors", "errors"),
    ]  # fmt: skip
    left = {"caller", "scenario", "failure", "errors"}
    head = "".join(f'<th class="{"l" if k in left else ""}">{_e(label)}</th>' for k, label in cols)
    body = []
    for row in rows:
        cells = []
        for k, _ in cols:
            v = row[k]
            text = (
                _num(v, " ms")
                if k.endswith("_ms")
                else _num(v, "%")
                if k.endswith("_pct")
                else ("" if v is None else str(v))
            )
            cells.append(f'<td class="{"l" if k in left else ""}">{_e(text)}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    note = (
        f'<p class="muted">{len(rows)} of {len(r.sessions)} sessions: failures first, then by turn p95.</p>'
    )
    return f'<h2>Worst sessions</h2>{note}<table id="worst"><tr>{head}</tr>{"".join(body)}</table>'


def worst_sessions(rows: Iterable[dict[str, Any]], n: int = WORST_SESSIONS) -> list[dict[str, Any]]:
    """Failed calls first, then the highest turn p95 (calls without answered turns last)."""

    def key(row: dict[str, Any]) -> tuple[int, float]:
        p95 = row.get("turn_p95_ms")
        return (0 if row.get("failure") else 1, -(p95 if p95 is not None else -math.inf))

    return sorted(rows, key=key)[:n]


# ---------------------------------------------------------------- plots


def _percentile_plot(hs: dict[str, LatencyHistogram], present: Sequence[tuple[str, str]]) -> Figure:
    """HdrHistogram's percentile distribution: value against 1/(1-q) on a log axis, so the tail
    (99 %, 99.9 %) gets as much room as the median."""
    fig = Figure(figsize=(10, 3.6))
    ax = fig.add_subplot()
    x_cap = 10.0
    for name, label in present:
        h = hs[name]
        n = h.count
        cap = 10.0 ** math.ceil(math.log10(max(n, 1) * 10))
        x_cap = max(x_cap, cap)
        xs, ys = [], []
        acc = 0
        for value, count in h.buckets():
            q0 = acc / n
            acc += count
            q1 = acc / n
            xs += [1.0 / (1.0 - q0), 1.0 / (1.0 - q1) if q1 < 1 else cap]
            ys += [value, value]
        ax.plot(xs, ys, label=f"{label} (n={n})", lw=1.6)
    ax.set_xscale("log")
    ticks = [
        (1.0 / (1.0 - p / 100.0), t) for p, t in PERCENTILE_TICKS if 1.0 / (1.0 - p / 100.0) <= x_cap * 1.001
    ]
    ax.set_xticks([x for x, _ in ticks], [t for _, t in ticks])
    ax.minorticks_off()
    ax.set_xlim(1, x_cap)
    ax.set_xlabel("percentile")
    ax.set_ylabel("ms")
    ax.set_title("latency by percentile (HdrHistogram)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    return fig


def _cdf_plot(hs: dict[str, LatencyHistogram], present: Sequence[tuple[str, str]]) -> Figure:
    fig = Figure(figsize=(10, 3.2))
    ax = fig.add_subplot()
    lo, hi = math.inf, 0.0
    for name, label in present:
        pts = hs[name].cdf()
        xs = [v for v, _ in pts]
        ys = [f for _, f in pts]
        ax.step(xs, ys, where="post", label=label, lw=1.6)
        lo, hi = min(lo, max(xs[0], 1.0)), max(hi, xs[-1])
    if hi / max(lo, 1.0) > 50:
        ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction <= x")
    ax.set_title("latency CDF")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def _series(rows: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [math.nan if row.get(key) is None else float(row[key]) for row in rows]


def _timeline_plot(r: RunResult) -> Figure:
    rows = r.timeline
    t = [row["t"] for row in rows]
    target_keys = sorted(
        {k for row in rows for k in row if k not in ("t", "at", *SESSION_COLUMNS, *GENERATOR_COLUMNS)}
    )[:3]
    panels = 5 + len(target_keys)
    fig = Figure(figsize=(10, 1.7 * panels))
    axes = fig.subplots(panels, 1, sharex=True)
    a = axes[0]
    a.plot(t, _series(rows, "active_sessions"), label="active sessions", color="C0")
    a.bar(t, _series(rows, "dials"), width=1.0, label="dials", color="C1", alpha=0.5)
    a.set_ylabel("sessions")
    a = axes[1]
    a.plot(t, _series(rows, "turn_p50_ms"), ".", ms=3, label="turn p50", color="C2")
    a.plot(t, _series(rows, "turn_p95_ms"), ".", ms=3, label="turn p95", color="C3")
    a.set_ylabel("ms")
    a = axes[2]
    a.bar(t, _series(rows, "setup_failures"), width=1.0, label="setup failures", color="C3")
    a.bar(t, _series(rows, "call_failures"), width=1.0, label="call failures", color="C4",
          bottom=[0 if math.isnan(x) else x for x in _series(rows, "setup_failures")])  # fmt: skip
    a.bar(t, _series(rows, "unanswered_turns"), width=0.4, label="unanswered turns", color="C7")
    a.set_ylabel("count")
    a = axes[3]
    a.plot(t, _series(rows, "packet_loss_pct"), label="packet loss", color="C5")
    a.plot(t, _series(rows, "concealed_pct"), label="concealed", color="C6")
    a.set_ylabel("%")
    a = axes[4]
    a.plot(t, _series(rows, "generator_cpu_pct"), label="generator CPU", color="C0")
    a.set_ylabel("CPU %")
    a.set_ylim(0, 105)
    lag = a.twinx()
    lag.plot(t, _series(rows, "loop_lag_ms"), label="event-loop lag", color="C3", lw=0.8)
    lag.set_ylabel("lag ms")
    lag.legend(loc="upper right", fontsize=8)
    for i, key in enumerate(target_keys):
        a = axes[5 + i]
        a.plot(t, _series(rows, key), label=f"target {key}", color=f"C{(i + 7) % 10}")
        a.set_ylabel(key.split("_")[0])
    for a in axes:
        a.grid(True, alpha=0.3)
        a.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("seconds since start")
    fig.tight_layout()
    return fig


def _capacity_plot(r: RunResult, knee: int | None) -> Figure:
    steps = sorted(r.steps, key=lambda s: (s["level"], s["index"]))
    levels = [s["level"] for s in steps]
    fig = Figure(figsize=(10, 3.4))
    ax = fig.add_subplot()
    ax.plot(
        levels,
        [math.nan if s["turn_p95_ms"] is None else s["turn_p95_ms"] for s in steps],
        "-",
        color="C0",
        label="turn p95",
    )
    for s in steps:
        if s["turn_p95_ms"] is not None:
            color = "#999" if s.get("passed") is None else ("#1a8a1a" if s["passed"] else "#c01010")
            ax.plot([s["level"]], [s["turn_p95_ms"]], "o", color=color, ms=8)
    for v in r.slo:
        if v["name"] == "turn_latency.p95":
            ax.axhline(v["limit"], color="C0", ls=":", lw=1, label=f"gate {v['spec']}")
    ax.set_xlabel("sessions (step level)")
    ax.set_ylabel("turn p95 ms")
    fr = ax.twinx()
    fr.plot(
        levels,
        [math.nan if s["fail_rate_pct"] is None else s["fail_rate_pct"] for s in steps],
        "s--",
        color="C3",
        label="fail rate",
    )
    fr.set_ylabel("fail rate %")
    fr.set_ylim(bottom=0)
    if knee is not None:
        ax.axvline(knee, color="#1a8a1a", ls="--", lw=1.5, label=f"sessions at SLO: {knee}")
    ax.set_title("capacity: turn p95 and failures per step (green: gates pass, red: fail)")
    ax.grid(True, alpha=0.3)
    lines = ax.get_legend_handles_labels()
    more = fr.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)
    return fig


# ---------------------------------------------------------------- helpers


def _img(fig: Figure, alt: str, ident: str) -> str:
    """The figure as an inline PNG <img> (Agg canvas, no display, no pyplot state)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pil_kwargs={"optimize": True})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img id="{ident}" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(v: Any, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    v = float(v)
    if unit == "%":
        return f"{v:.2f}%"
    return f"{v:.0f}{unit}" if abs(v) >= 10 else f"{v:.1f}{unit}"


def _target_url(r: RunResult) -> str:
    url = r.target.get("url") or r.target.get("edge_url") or "?"
    return ", ".join(url) if isinstance(url, list) else str(url)
