"""What the soak measured, from the callers' logs and the service samples: per-call chunk accounting,
output gaps (overall and across each fault), delegations, memory; as printed tables and as JSON.

Chunk events carry the output chunk index, so a lost chunk is an index below the highest one seen
that never arrived, and a repeated chunk is an index that arrived twice. Gaps are arrival-time
differences between consecutive chunk events at the caller."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from loadtest.caller import CallLog

# A delegation still unanswered this long after it opened is counted lost, not pending: the
# default delegation deadline is 30 s, after which the background sends a DEADLINE_EXCEEDED error.
ANSWER_WITHIN_S = 35.0
FOLLOW_S = 12.0  # a delegation opened this soon after a question counts as following it
FAULT_WINDOW_S = 60.0  # a fault's gap is the longest one among arrivals this long after it


def ranges(values: Sequence[int], limit: int = 20) -> str:
    """[3, 4, 5, 9] -> "3-5, 9" (at most ``limit`` ranges, then "...")."""
    out: list[str] = []
    vals = sorted(values)
    i = 0
    while i < len(vals) and len(out) < limit:
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        out.append(str(vals[i]) if i == j else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ", ".join(out) + (", ..." if i < len(vals) else "")


def gap_across(log: CallLog, at: float, window_s: float = FAULT_WINDOW_S) -> float | None:
    """The longest arrival gap among this call's chunks from the one before ``at`` to ``window_s``
    after it; None if the call was not live at ``at``. If output never came back, the time from the
    last chunk before ``at`` to the hangup."""
    t = log.chunk_at
    if not t or t[0] > at or (log.hangup_at is not None and log.hangup_at < at):
        return None
    after = [i for i in range(1, len(t)) if t[i] > at and t[i - 1] < at + window_s]
    if not after:
        end = log.hangup_at or t[-1]
        return end - t[-1]
    return max(t[i] - t[i - 1] for i in after)


def analyse_call(log: CallLog, t0: float, stall_s: float) -> dict[str, Any]:
    idx, at = log.chunk_index, log.chunk_at
    seen = Counter(idx)
    top = max(idx) if idx else -1
    lost = [k for k in range(top + 1) if k not in seen]
    repeated = sorted(k for k, n in seen.items() if n > 1)
    gaps = np.diff(np.asarray(at)) if len(at) > 1 else np.zeros(0)
    worst = int(np.argmax(gaps)) if len(gaps) else -1
    end = log.hangup_at if log.hangup_at is not None else (at[-1] if at else log.dialed_at)
    to_end = bool(at) and end - at[-1] <= stall_s
    planned = log.planned_end - log.dialed_at
    # delegations
    opened = {d: t for t, d, _ in log.delegations}
    results = Counter(d for _, d, _ in log.results)
    dup = sorted(d for d, n in results.items() if n > 1)
    unanswered = [d for d in opened if d not in results]
    pending = [d for d in unanswered if end - opened[d] < ANSWER_WITHIN_S]
    lost_deleg = [d for d in unanswered if d not in pending]
    timers = sum(n for d, n in results.items() if d.startswith("timer-"))
    orphans = sorted(d for d in results if d not in opened and not d.startswith("timer-"))
    completed = not log.ended_early and to_end and not lost and not repeated
    return {
        "caller": log.caller,
        "call": log.call,
        "role": "asks" if log.delegator else "tone",
        "session_id": log.session_id,
        "dialed_at_s": round(log.dialed_at - t0, 2),
        "first_chunk_after_s": round(log.first_chunk_at - log.dialed_at, 2) if log.first_chunk_at else None,
        "planned_s": round(planned, 1),
        "lasted_s": round(end - log.dialed_at, 1),
        "ended_early": log.ended_early,
        "output_to_end": to_end,
        "last_chunk_before_hangup_s": round(end - at[-1], 2) if at else None,
        "completed": completed,
        "chunks": len(idx),
        "first_index": idx[0] if idx else None,
        "last_index": top,
        "lost": len(lost),
        "lost_indices": ranges(lost),
        "repeated": sum(n - 1 for n in seen.values() if n > 1),
        "repeated_indices": ranges(repeated),
        "out_of_order": sum(1 for a, b in itertools.pairwise(idx) if b < a),
        "longest_gap_s": round(float(gaps[worst]), 3) if worst >= 0 else None,
        "longest_gap_at_s": round(at[worst + 1] - t0, 1) if worst >= 0 else None,
        "gap_p50_ms": round(float(np.percentile(gaps, 50)) * 1000, 1) if len(gaps) else None,
        "gap_p99_ms": round(float(np.percentile(gaps, 99)) * 1000, 1) if len(gaps) else None,
        "gaps_over_1s": [
            [round(at[i + 1] - t0, 1), round(float(g), 2)] for i, g in enumerate(gaps) if g > 1.0
        ][:50],
        "errors": dict(log.errors),
        "error_samples": log.error_samples,
        "states": [[round(t - t0, 1), s, d] for t, s, d in log.states][:50],
        "recoveries": sum(1 for _, _, d in log.states if d.startswith("recovered")),
        "captions": log.captions,
        "audio_frames": log.audio_frames,
        "model_versions": sorted(log.model_versions),
        "asks": [[round(t - t0, 1), q, how] for t, q, how in log.asks],
        "asks_followed_by_delegation": followed_asks(log),
        "delegations_opened": len(opened),
        "delegations": [[round(t - t0, 1), d, r] for t, d, r in log.delegations],
        "results": len(log.results),
        "result_texts": [[round(t - t0, 1), d, x[:160]] for t, d, x in log.results],
        "results_duplicated": dup,
        "delegations_unanswered_lost": lost_deleg,
        "delegations_pending_at_hangup": pending,
        "timer_results": timers,
        "orphan_results": orphans,
        "cards": log.cards,
        "hangup_status": log.hangup_status,
    }


def followed_asks(log: CallLog, within_s: float = FOLLOW_S) -> dict[str, list[int]]:
    """Per way of asking: [questions asked, questions followed by a delegation within ``within_s``]."""
    out: dict[str, list[int]] = {}
    for t, _, how in log.asks:
        row = out.setdefault(how, [0, 0])
        row[0] += 1
        row[1] += any(t <= d < t + within_s for d, _, _ in log.delegations)
    return out


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(_is_num(r[i]) for r in rows) if rows else False for i in range(len(headers))]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(vals, widths, numeric, strict=True)
        )

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers)), sep, *(line(r) for r in cells)])


def _is_num(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) or v is None


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def calls_table(calls: list[dict[str, Any]]) -> str:
    rows = []
    for c in calls:
        errors = ", ".join(f"{k}×{n}" for k, n in sorted(c["errors"].items())) or "-"
        end = (
            "ok"
            if c["completed"]
            else (c["ended_early"] or ("output stopped" if not c["output_to_end"] else "chunks"))
        )
        rows.append(
            [
                f"{c['caller']}.{c['call']}",
                c["role"],
                c["lasted_s"],
                c["chunks"],
                c["lost"],
                c["repeated"],
                c["longest_gap_s"],
                c["longest_gap_at_s"],
                c["gap_p99_ms"],
                c["recoveries"],
                errors,
                f"{c['delegations_opened']}/{c['results']}",
                c["hangup_status"],
                end[:60],
            ]
        )
    return table(
        ["call", "mic", "secs", "chunks", "lost", "rep", "max gap s", "at s", "p99 ms", "recov", "errors",
         "deleg/res", "DELETE", "end"],
        rows,
    )  # fmt: skip


def faults_table(faults: list[dict[str, Any]]) -> str:
    rows = []
    for f in faults:
        gaps = f.get("gaps_s", {})
        worst = max((g for g in gaps.values() if g is not None), default=None)
        per_call = ", ".join(f"{k}: {v:.2f}" for k, v in gaps.items() if v is not None) or "-"
        rows.append([f["what"], f.get("at_s"), f.get("back_after_s"), worst, per_call, f.get("error", "")])
    return table(["fault", "at s", "back after s", "max gap s", "gap per call (s)", "problem"], rows)


def services_table(services: dict[str, dict[str, Any]]) -> str:
    rows = [
        [name, s.get("pids", ""), s.get("idle_mb"), s.get("start_mb"), s.get("end_mb"), s.get("growth_mb"),
         s.get("note", ""), s.get("health", "")]
        for name, s in services.items()
    ]  # fmt: skip
    return table(
        ["service", "pids (start -> end)", "idle MB", "start MB", "end MB", "growth MB", "note", "health"],
        rows,
    )


def merge_samples(idle: dict, start: dict, end: dict, health: dict[str, str]) -> dict[str, dict[str, Any]]:
    """One row per service over the three samples; growth only where the same processes were measured
    at start and end (a killed replica and its replacement are two rows; a restarted NATS is flagged)."""
    names = list(dict.fromkeys([*idle, *start, *end]))
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        i, s, e = idle.get(name), start.get(name), end.get(name)
        row: dict[str, Any] = {
            "idle_mb": round(i["rss_mb"], 1) if i else None,
            "start_mb": round(s["rss_mb"], 1) if s else None,
            "end_mb": round(e["rss_mb"], 1) if e else None,
        }
        first, last = (s or i), e
        pids_first = first["pids"] if first else []
        pids_last = last["pids"] if last else []
        row["pids"] = _pids(pids_first) + (" -> " + _pids(pids_last) if pids_last != pids_first else "")
        if first and last:
            row["growth_mb"] = round(last["rss_mb"] - first["rss_mb"], 1)
            if first.get("pgid") != last.get("pgid"):
                row["note"] = "restarted"
            elif set(pids_first) != set(pids_last):
                row["note"] = "processes changed"
        elif first and not last:
            row["note"] = "gone (killed)"
        elif last and not first:
            row["note"] = "new"
        key = name.split(" ")[0]
        row["health"] = health.get("interaction" if key == "replica" else key, "")
        out[name] = row
    return out


def _pids(pids: list[int]) -> str:
    return ",".join(map(str, pids[:3])) + (f",+{len(pids) - 3}" if len(pids) > 3 else "")
