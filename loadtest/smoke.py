"""One synthetic call against any edge URL, with a verdict: ``python -m loadtest.smoke --url URL``.

It dials the way a browser does (POST /api/sessions, SDP offer, "events" data channel, a microphone
with a tone), holds the call for ``--seconds``, types one question, hangs up, and passes when the
model's output kept coming for the whole call: chunks cover the call (``--min-coverage`` of the
micro-turns), no silence between chunks longer than ``--max-gap``, model audio frames received, no
error event, and the hang-up accepted. The Helm chart's ``helm test`` and the chart wiring test run
it; on a laptop it checks a `make up`. Prints one JSON line; exit code 0 pass, 1 fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from loadtest.caller import Caller, CallLog, Question

CHUNK_S = 0.2


def verdict(log: CallLog, seconds: float, min_coverage: float, max_gap_s: float) -> dict[str, Any]:
    """What the call saw, and the reasons it failed (none: it passed)."""
    gaps = [b - a for a, b in zip(log.chunk_at, log.chunk_at[1:], strict=False)]
    held = (log.hangup_at or time.monotonic()) - (log.first_chunk_at or log.dialed_at)
    expected = max(1, int(min(seconds, held) / CHUNK_S))
    out: dict[str, Any] = {
        "session_id": log.session_id,
        "chunks": len(log.chunk_index),
        "expected_chunks": expected,
        "max_gap_s": round(max(gaps, default=0.0), 3),
        "audio_frames": log.audio_frames,
        "first_chunk_s": round(log.first_chunk_at - log.dialed_at, 3) if log.first_chunk_at else None,
        "errors": dict(log.errors),
        "model_versions": sorted(log.model_versions),
        "delegations": len(log.delegations),
        "hangup_status": log.hangup_status,
    }
    failures = []
    if log.ended_early:
        failures.append(f"call ended early: {log.ended_early}")
    if len(log.chunk_index) < min_coverage * expected:
        failures.append(f"{len(log.chunk_index)} output chunks, wanted >= {min_coverage:.0%} of {expected}")
    if out["max_gap_s"] > max_gap_s:
        failures.append(f"output stopped for {out['max_gap_s']} s (limit {max_gap_s} s)")
    if log.audio_frames == 0:
        failures.append("no model audio frames arrived over WebRTC")
    if log.errors:
        failures.append(f"error events: {log.error_samples}")
    if log.hangup_status not in (200, 204):
        failures.append(f"hang-up answered {log.hangup_status}")
    out["failures"] = failures
    out["passed"] = not failures
    return out


async def call(url: str, seconds: float, question: str, first_chunk_timeout_s: float) -> CallLog:
    log = CallLog(caller=0, call=0, delegator=bool(question), planned_end=0.0)
    caller = Caller(url, log, [Question(question)] if question else [], ask_every_s=seconds)
    log.planned_end = time.monotonic() + first_chunk_timeout_s + seconds  # refined below

    async def hold() -> None:
        while log.first_chunk_at is None and not log.ended_early:
            await asyncio.sleep(0.1)
        if log.first_chunk_at is not None:
            log.planned_end = log.first_chunk_at + seconds

    holder = asyncio.create_task(hold())
    await caller.run(first_chunk_timeout_s)
    holder.cancel()
    return log


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.smoke",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", required=True, help="the edge's base URL, e.g. http://127.0.0.1:8080")
    p.add_argument(
        "--seconds", type=float, default=15.0, help="how long to hold the call after the first chunk"
    )
    p.add_argument(
        "--question", default="what is two plus three", help="typed once during the call; '' for none"
    )
    p.add_argument(
        "--first-chunk-timeout", type=float, default=90.0, help="seconds to wait for the first chunk"
    )
    p.add_argument(
        "--min-coverage", type=float, default=0.8, help="share of the call's micro-turns that must arrive"
    )
    p.add_argument(
        "--max-gap", type=float, default=1.5, help="longest allowed silence between output chunks (s)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    log = asyncio.run(call(ns.url, ns.seconds, ns.question, ns.first_chunk_timeout))
    result = verdict(log, ns.seconds, ns.min_coverage, ns.max_gap)
    print(json.dumps(result), flush=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
