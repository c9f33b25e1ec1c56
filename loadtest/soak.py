"""Soak test of the whole system as a user runs it.

Starts `microturn up` (free loopback ports, its own state dir in a temp dir), waits for "| ready",
then keeps N synthetic WebRTC callers talking to the edge for --duration seconds, exactly as the
browser client does: POST /api/sessions, POST /api/sessions/{id}/offer, the "events" data channel,
a 48 kHz microphone track, the model's voice played out, DELETE at hangup. Some callers ask
questions that should make the model delegate to the background model (typed on the data channel
and spoken into the microphone, as in the gym's delegation task).

Mid-run it SIGKILLs one Serve replica (Serve starts another; the calls must recover by replay) and
later kills nats-server (`microturn up` restarts it; delegations must survive). At the end it runs
`microturn down` and checks that no process of the run is left.

Reported (table on stdout, JSON with --report): calls completed; per call the output chunks
received, chunk indices lost or repeated, the longest gap between chunk arrivals, error events by
code, delegations opened and background results received (duplicated, unanswered); each fault's
time and the output gap it caused; the RSS of every service process when idle, when the calls are
up, and at the end, with the growth in MB.

Exit status: 0 if every call ran to its end with every chunk exactly once and every service is
alive (restarted where it was killed); 1 otherwise (the reasons are printed); 2 if the stack did
not start. Measured times are reported, never asserted: the machine may be shared.

Examples:
  python -m loadtest.soak                                  # 10 minutes, 4 callers
  python -m loadtest.soak --duration 180 --report soak.json
  python -m loadtest.soak --duration 70 --callers 2 --kill-at 20 --nats-restart-at 40
  python -m loadtest.soak --replicas 2 --env MICROTURN_RAY__NUM_CPUS=4 --log up.log
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from loadtest import report, services
from loadtest.caller import Caller, CallLog, Question, to_mic_rate
from loadtest.stack import Stack

NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
           "nineteen"]  # fmt: skip
# The shapes of the gym's delegation task ("what is X times Y", "what is the weather in CITY").
QUESTIONS = [
    f"what is {NUMBERS[7]} times {NUMBERS[12]}",
    "what is the weather in paris",
    f"what is {NUMBERS[4]} times {NUMBERS[16]}",
    "what is the weather in tokyo",
    f"what is {NUMBERS[9]} times {NUMBERS[11]}",
]


# What the supervisor says when a child dies, comes back, or it gives up.
SUPERVISOR_NEWS = ("exited with code", " is back", "keeps exiting", "error:")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.soak",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=600, help="seconds the callers talk (default 600)")
    p.add_argument("--callers", type=int, default=4, help="concurrent synthetic callers (default 4)")
    p.add_argument(
        "--askers", type=int, default=None,
        help="callers that ask delegating questions instead of humming a tone (default: half, at least 1)",
    )  # fmt: skip
    p.add_argument("--ask-every", type=float, default=20, help="seconds between an asker's questions (20)")
    p.add_argument(
        "--long-callers", type=int, default=1,
        help="callers that hold one call for the whole run; the others hang up after --call-length "
        "and dial again (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--call-length", type=float, default=120, help="seconds per call of the other callers (120)"
    )
    p.add_argument(
        "--kill-at", type=float, default=None,
        help="seconds into the run to SIGKILL a Serve replica (default: a third of --duration; <0: never)",
    )  # fmt: skip
    p.add_argument(
        "--nats-restart-at", type=float, default=None,
        help="seconds into the run to kill nats-server (default: two thirds of --duration; <0: never)",
    )  # fmt: skip
    p.add_argument(
        "--nats-signal", choices=["KILL", "TERM"], default="KILL", help="how nats-server is killed"
    )
    p.add_argument("--replicas", type=int, default=1, help="interaction replicas (default 1, as `make up`)")
    p.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE",
        help="a setting for the run, e.g. MICROTURN_INTERACTION__SESSION_SLOTS=8 (repeatable)",
    )  # fmt: skip
    p.add_argument("--no-speech", action="store_true", help="askers only type their questions (no espeak-ng)")
    p.add_argument(
        "--stall",
        type=float,
        default=3.0,
        help="a call's last chunk must arrive this close to its hangup (3 s)",
    )
    p.add_argument("--sample-every", type=float, default=30, help="seconds between memory samples (30)")
    p.add_argument(
        "--ready-timeout", type=float, default=420, help="seconds to wait for `microturn up` (420)"
    )
    p.add_argument("--report", type=Path, help="write the full report as JSON here")
    p.add_argument("--log", type=Path, help="write the whole `microturn up` output here")
    p.add_argument("--keep-state", action="store_true", help="keep the run's temp dir (state, NATS store)")
    ns = p.parse_args(argv)
    if ns.duration < 10 or ns.callers < 1:
        p.error("--duration must be at least 10 s and --callers at least 1")
    if ns.kill_at is None:
        ns.kill_at = ns.duration / 3
    if ns.nats_restart_at is None:
        ns.nats_restart_at = 2 * ns.duration / 3
    if ns.askers is None:
        ns.askers = max(1, ns.callers // 2)
    for item in ns.env:
        if "=" not in item or not item.startswith("MICROTURN_"):
            p.error(f"--env wants MICROTURN_<SECTION>__<FIELD>=VALUE, got {item!r}")
    return ns


def questions(speech: bool) -> tuple[list[Question], str]:
    """The askers' questions; spoken with espeak-ng (the gym's renderer) when it is installed."""
    if not speech:
        return [Question(q) for q in QUESTIONS], "typed only (--no-speech)"
    try:
        import numpy as np

        from microturn.gym.speech import Voice, place_words, words_duration

        voice = Voice("en-us", 160, 50)
        out = []
        for q in QUESTIONS:
            words = q.split()
            track = np.zeros(words_duration(words, voice, gap=1000) + 4800, np.int16)
            place_words(track, words, 1600, voice, gap=1000)
            out.append(Question(q, to_mic_rate(track)))
        return out, "typed and spoken (espeak-ng)"
    except Exception as exc:  # no espeak-ng/sox: typing still asks
        return [Question(q) for q in QUESTIONS], f"typed only (speech unavailable: {exc})"


class Soak:
    def __init__(self, ns: argparse.Namespace, stack: Stack, qs: list[Question]) -> None:
        self.ns, self.stack, self.questions = ns, stack, qs
        self.t0 = 0.0
        self.end_at = 0.0
        self.logs: list[CallLog] = []
        self.faults: list[dict[str, Any]] = []
        self.samples: dict[str, dict] = {}
        self.timeline: list[dict[str, Any]] = []
        self.loop_lag_max_s = 0.0
        self.loop_lags_over_100ms = 0

    def rel(self, t: float | None) -> float | None:
        return None if t is None else round(t - self.t0, 2)

    async def run(self) -> None:
        ns = self.ns
        self.t0 = time.monotonic()
        self.end_at = self.t0 + ns.duration
        lag = asyncio.create_task(self._watch_loop_lag())
        faults = asyncio.create_task(self._faults())
        sampler = asyncio.create_task(self._sample_memory())
        callers = [asyncio.create_task(self._caller(i)) for i in range(ns.callers)]
        await asyncio.gather(*callers)
        for t in (lag, faults, sampler):
            t.cancel()
        await asyncio.gather(lag, faults, sampler, return_exceptions=True)

    async def _caller(self, i: int) -> None:
        """Calls back to back until the end of the run (one call if a long caller); a call that ends
        early is redialled after 2 s, as a user would."""
        ns = self.ns
        await asyncio.sleep(1.5 * i)  # stagger the dials
        long = i < ns.long_callers
        call = 0
        while self.end_at - time.monotonic() >= 10 or (call == 0 and time.monotonic() < self.end_at):
            planned = self.end_at if long else min(self.end_at, time.monotonic() + ns.call_length)
            log = CallLog(caller=i, call=call, delegator=i >= ns.callers - ns.askers, planned_end=planned)
            self.logs.append(log)
            await Caller(self.stack.edge_url, log, self.questions, ns.ask_every).run()
            call += 1
            if log.ended_early:
                await asyncio.sleep(2.0)
            elif long:
                return

    async def _faults(self) -> None:
        ns = self.ns
        plan = []
        if ns.kill_at >= 0:
            plan.append((ns.kill_at, "replica SIGKILL"))
        if ns.nats_restart_at >= 0:
            plan.append((ns.nats_restart_at, f"nats-server SIG{ns.nats_signal} + restart"))
        for at, what in sorted(plan):
            await asyncio.sleep(max(0.0, self.t0 + at - time.monotonic()))
            print(f"[soak] t={time.monotonic() - self.t0:6.1f}s  {what}", flush=True)
            if what.startswith("replica"):
                info = await asyncio.to_thread(services.kill_replica, self.stack)
            else:
                sig = signal.SIGKILL if ns.nats_signal == "KILL" else signal.SIGTERM
                info = await asyncio.to_thread(services.restart_nats, self.stack, sig)
            info["what"] = what
            if "at" in info:
                info["at_s"] = self.rel(info.pop("at"))
            if "back_after_s" in info:
                info["back_after_s"] = round(info["back_after_s"], 2)
            print(f"[soak] t={time.monotonic() - self.t0:6.1f}s  {what}: {_brief(info)}", flush=True)
            self.faults.append(info)

    async def _sample_memory(self) -> None:
        """'start' once every first call has output (or after 30 s), then every --sample-every, and
        'end' 5 s before the calls hang up (so start and end both have the calls up)."""
        ns = self.ns
        first = lambda: [x for x in self.logs if x.call == 0]  # noqa: E731
        while time.monotonic() < self.t0 + 30 and not (
            len(first()) == ns.callers and all(x.first_chunk_at for x in first())
        ):
            await asyncio.sleep(0.5)
        self.samples["start"] = await self._sample("start")
        end_sample = self.end_at - 5
        while True:
            nxt = min(time.monotonic() + ns.sample_every, end_sample)
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
            if time.monotonic() >= end_sample - 0.5:
                self.samples["end"] = await self._sample("end")
                return
            await self._sample("periodic")

    async def _sample(self, label: str) -> dict:
        try:
            s = await asyncio.to_thread(services.sample, self.stack)
        except Exception as exc:
            print(f"[soak] memory sample failed: {exc}", flush=True)
            return {}
        self.timeline.append(
            {
                "t_s": self.rel(time.monotonic()),
                "label": label,
                "rss_mb": {k: round(v["rss_mb"], 1) for k, v in s.items()},
            }
        )
        return s

    async def _watch_loop_lag(self) -> None:
        """How late this process's event loop runs (the callers' own CPU starvation shows up as
        output gaps that are not the system's fault)."""
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.1)
            late = time.monotonic() - t - 0.1
            self.loop_lag_max_s = max(self.loop_lag_max_s, late)
            self.loop_lags_over_100ms += late > 0.1


def _brief(info: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in info.items() if k not in ("what",))


def build_report(soak: Soak, ns: argparse.Namespace, extra: dict[str, Any]) -> dict[str, Any]:
    calls = [report.analyse_call(x, soak.t0, ns.stall) for x in soak.logs]
    for f in soak.faults:
        if f.get("at_s") is None:
            continue
        at = soak.t0 + f["at_s"]
        gaps = {}
        for x in soak.logs:
            g = report.gap_across(x, at)
            if g is not None:
                gaps[f"{x.caller}.{x.call}"] = round(g, 3)
        f["gaps_s"] = gaps
    health = extra["health"]
    rows = report.merge_samples(
        extra.get("idle_sample", {}), soak.samples.get("start", {}), soak.samples.get("end", {}), health
    )
    all_results = sum(c["results"] for c in calls)
    deleg = {
        "asks": sum(len(c["asks"]) for c in calls),
        "opened": sum(c["delegations_opened"] for c in calls),
        "results": all_results,
        "duplicated": sum(len(c["results_duplicated"]) for c in calls),
        "unanswered_lost": sum(len(c["delegations_unanswered_lost"]) for c in calls),
        "pending_at_hangup": sum(len(c["delegations_pending_at_hangup"]) for c in calls),
        "timer_results": sum(c["timer_results"] for c in calls),
        "orphan_results": sum(len(c["orphan_results"]) for c in calls),
        "cards": sum(c["cards"] for c in calls),
    }
    by_mode: dict[str, list[int]] = {}
    for c in calls:
        for how, (n, k) in c["asks_followed_by_delegation"].items():
            row = by_mode.setdefault(how, [0, 0])
            row[0] += n
            row[1] += k
    deleg["asks_followed_by_delegation"] = by_mode
    failures, warnings = verdict(calls, soak.faults, health, extra, deleg)
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(ns).items()},
        "questions": extra["questions"],
        "ready_after_s": extra["ready_after_s"],
        "calls_total": len(calls),
        "calls_completed": sum(c["completed"] for c in calls),
        "calls": calls,
        "faults": soak.faults,
        "delegations": deleg,
        "services": rows,
        "health_at_end": health,
        "memory_timeline": soak.timeline,
        "edge_sessions_after_hangup": extra.get("edge_sessions_after_hangup"),
        "soak_loop_lag_max_s": round(soak.loop_lag_max_s, 3),
        "soak_loop_lags_over_100ms": soak.loop_lags_over_100ms,
        "log_lines_by_level": extra.get("levels", {}),
        "serve_logs": extra.get("serve_logs", {}),
        "supervisor_lines": extra.get("supervisor_lines", []),
        "down": extra.get("down", {}),
        "failures": failures,
        "warnings": warnings,
        "ok": not failures,
    }


def verdict(
    calls: list[dict[str, Any]],
    faults: list[dict[str, Any]],
    health: dict[str, str],
    extra: dict[str, Any],
    deleg: dict[str, Any],
) -> tuple[list[str], list[str]]:
    failures: list[str] = []
    warnings: list[str] = []
    if not calls:
        failures.append("no call was made")
    for c in calls:
        name = f"call {c['caller']}.{c['call']} ({c['session_id']})"
        if c["ended_early"]:
            failures.append(
                f"{name} ended early at {c['lasted_s']} s of {c['planned_s']} s: {c['ended_early']}"
            )
        elif not c["output_to_end"]:
            failures.append(
                f"{name}: output stopped {c['last_chunk_before_hangup_s']} s before its hangup "
                f"(last chunk index {c['last_index']})"
            )
        if c["lost"]:
            failures.append(f"{name}: {c['lost']} output chunks lost (indices {c['lost_indices']})")
        if c["repeated"]:
            failures.append(
                f"{name}: {c['repeated']} output chunks repeated (indices {c['repeated_indices']})"
            )
        if c["errors"]:
            warnings.append(f"{name}: error events {c['errors']}: {c['error_samples'][:2]}")
        if c["hangup_status"] not in (204, None) and not c["ended_early"]:
            warnings.append(f"{name}: DELETE at hangup answered HTTP {c['hangup_status']}")
        if c["results_duplicated"]:
            warnings.append(f"{name}: background results delivered twice for {c['results_duplicated']}")
        if c["delegations_unanswered_lost"]:
            warnings.append(f"{name}: delegations never answered: {c['delegations_unanswered_lost']}")
    for f in faults:
        if "error" in f:
            failures.append(f"{f['what']}: {f['error']}")
    for name, state in health.items():
        if state != "ok":
            failures.append(f"{name} at the end: {state}")
    down = extra.get("down", {})
    if down.get("exit") not in (0, None):
        failures.append(f"microturn down exited with {down['exit']}")
    if down.get("left"):
        failures.append(f"left running after microturn down: {down['left']}")
    if extra.get("edge_sessions_after_hangup"):
        warnings.append(
            f"the edge still held {extra['edge_sessions_after_hangup']} sessions 10 s after every hangup"
        )
    if deleg["asks"] and not deleg["opened"]:
        warnings.append(f"{deleg['asks']} questions asked, the model opened no delegation")
    return failures, warnings


def print_report(r: dict[str, Any]) -> None:
    print()
    print(f"== calls: {r['calls_completed']} of {r['calls_total']} completed "
          f"(stack ready after {r['ready_after_s']} s; soak loop lag max {r['soak_loop_lag_max_s']} s)")  # fmt: skip
    print(report.calls_table(r["calls"]))
    print()
    print("== faults")
    print(report.faults_table(r["faults"]) if r["faults"] else "(none injected)")
    print()
    d = r["delegations"]
    print(f"== delegations ({r['questions']})")
    flat = {k: v for k, v in d.items() if not isinstance(v, dict)}
    print(report.table(list(flat), [list(flat.values())]))
    modes = ", ".join(f"{how}: {k} of {n}" for how, (n, k) in d["asks_followed_by_delegation"].items())
    print(f"   questions followed by a delegation within {report.FOLLOW_S:.0f} s: {modes or '-'}")
    for c in r["calls"]:
        for t, did, req in c["delegations"]:
            asked = [f"{q} ({how})" for at, q, how in c["asks"] if at <= t]
            got = [x for x in c["result_texts"] if x[1] == did]
            answer = f"-> t={got[0][0]} s {got[0][2][:60]!r}" if got else "-> (no result)"
            print(
                f"   {c['caller']}.{c['call']} t={t} s opened {req[:40]!r} "
                f"(last asked {asked[-1] if asked else '-'!r}) {answer}"
            )
    print()
    print("== services (RSS; growth = end - start, both with the calls up)")
    print(report.services_table(r["services"]))
    print(f"   edge sessions 10 s after the last hangup: {r['edge_sessions_after_hangup']}")
    levels = r["log_lines_by_level"]
    if levels:
        print("   log lines by level: " + ", ".join(f"{k} {n}" for k, n in sorted(levels.items())))
    serve = r["serve_logs"]
    if serve.get("counts"):
        print(
            "   Ray Serve log lines by level: "
            + ", ".join(f"{k} {n}" for k, n in sorted(serve["counts"].items()))
        )
        for line in serve.get("samples", []):
            print(f"     {line}")
    down = r["down"]
    print(f"   microturn down: exit {down.get('exit')}, left running: {down.get('left') or 'nothing'}")
    print()
    for w in r["warnings"]:
        print(f"WARNING: {w}")
    for f in r["failures"]:
        print(f"FAIL: {f}")
    print("SOAK PASSED" if r["ok"] else "SOAK FAILED")


async def _edge_sessions_drain(stack: Stack, timeout_s: float = 10) -> int | None:
    deadline = time.monotonic() + timeout_s
    n = await asyncio.to_thread(services.edge_sessions, stack)
    while n and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        n = await asyncio.to_thread(services.edge_sessions, stack)
    return n


async def amain(ns: argparse.Namespace) -> int:
    qs, how = await asyncio.to_thread(questions, not ns.no_speech)
    env = dict(item.split("=", 1) for item in ns.env)
    env.setdefault("MICROTURN_INTERACTION__REPLICAS", str(ns.replicas))
    stack = Stack(env, ns.log, ns.keep_state)
    print(f"[soak] microturn up (state dir {stack.state}); waiting for ready", flush=True)
    extra: dict[str, Any] = {"questions": how}
    try:
        try:
            await asyncio.to_thread(stack.wait_ready, ns.ready_timeout)
        except (RuntimeError, TimeoutError) as exc:
            print(
                f"[soak] the stack did not start: {exc}\n" + "\n".join(list(stack.tail)[-40:]),
                file=sys.stderr,
            )
            return 2
        extra["ready_after_s"] = round(time.monotonic() - stack.started_at, 1)
        print(f"[soak] ready after {extra['ready_after_s']} s; edge {stack.edge_url}", flush=True)
        extra["idle_sample"] = await asyncio.to_thread(services.sample, stack)
        soak = Soak(ns, stack, qs)
        print(f"[soak] {ns.callers} callers for {ns.duration:.0f} s ({ns.askers} asking: {how})", flush=True)
        await soak.run()
        extra["edge_sessions_after_hangup"] = await _edge_sessions_drain(stack)
        extra["health"] = await asyncio.to_thread(services.health, stack, ns.replicas)
        extra["supervisor_lines"] = [
            [soak.rel(t), line]
            for t, line in stack.supervisor_lines
            if any(w in line for w in SUPERVISOR_NEWS)
        ]
        extra["serve_logs"] = await asyncio.to_thread(services.serve_log_levels, stack)
        code, left = await asyncio.to_thread(stack.down)
        extra["down"] = {"exit": code, "left": left}
        extra["levels"] = {f"{svc} {lvl}": n for (svc, lvl), n in stack.levels.items()}
        r = build_report(soak, ns, extra)
        print_report(r)
        if ns.report:
            ns.report.parent.mkdir(parents=True, exist_ok=True)
            ns.report.write_text(json.dumps(r, indent=2, default=str))
            print(f"[soak] report written to {ns.report}")
        if not r["ok"]:
            print("\n[soak] last lines of `microturn up`:\n" + "\n".join(list(stack.tail)[-30:]))
        return 0 if r["ok"] else 1
    finally:
        if stack.proc.poll() is None:
            code, left = await asyncio.to_thread(stack.down)
            if left:
                stack.kill()
        stack.cleanup()


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    try:
        return asyncio.run(amain(ns))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
