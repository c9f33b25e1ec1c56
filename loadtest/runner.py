"""Runs a load profile against an edge URL and turns what the callers measured into a result.

aiortc callers run in ``workers`` spawned processes (one asyncio loop each, many callers per loop;
records come back over a queue as each call ends); Chromium callers (mode ``browser``, or a few
canaries in ``mixed``) run in this process through loadtest.browser_caller. The parent plans the
profile (loadtest.profiles.plan), hands start/stop events to the least busy worker, and watches the
generator itself: the CPU of its own processes against the cores it has, and each worker's event
loop lag. A generator that is too busy measures itself, not the target: past ``max_cpu_pct`` or
``max_loop_lag_ms`` for more than ``overload_s`` the run is marked overloaded, its results invalid
(exit EXIT_OVERLOADED), and it says so loudly. Optionally it scrapes the target's Prometheus
/metrics into the timeline. The result goes to ``out`` (result.json, sessions.csv, report.html)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import queue
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil

from loadtest import profiles, prompts
from loadtest.profiles import Event, Profile, Shard
from loadtest.records import SessionRecord, TurnRecord
from loadtest.scenario import Scenario

Mode = Literal["aiortc", "browser", "mixed"]
SAMPLE_EVERY_S = 1.0
LAG_EVERY_S = 0.1
READY_TIMEOUT_S = 180.0


class RunError(RuntimeError):
    """The run could not be done at all (a worker never started, prompts could not be rendered)."""


@dataclass
class RunConfig:
    """Everything ``run`` needs; the CLI fills it from its options, a test directly."""

    url: str
    scenario: Scenario
    profile: Profile
    out: Path
    mode: Mode = "aiortc"
    workers: int | None = None  # aiortc worker processes; default one per core, at most one per caller
    browsers: int = 0  # mixed: this many Chromium canaries
    browser_share: float | None = None  # mixed: or this share of the peak (0.1 = 10 %)
    pages_per_browser: int = 8
    shard: Shard = field(default_factory=Shard)
    start_at: float | None = None  # epoch seconds every shard starts at
    join_rate: float | None = None  # callers started per second, over all shards
    slos: list[str] = field(default_factory=list)
    max_cpu_pct: float = 90.0
    max_loop_lag_ms: float = 50.0
    overload_s: float = 3.0
    metrics_urls: list[str] = field(default_factory=list)
    scrape_every_s: float = 5.0
    quiet: bool = False
    stop_grace_s: float = 30.0  # after the last stop, how long calls get to hang up

    def to_dict(self) -> dict[str, Any]:
        """What result.json's ``config`` records about the run."""
        return {
            "url": self.url,
            "scenario": self.scenario.model_dump(mode="json"),
            "profile": self.profile.describe(),
            "profile_name": self.profile.name,
            "once": self.profile.once,
            "mode": self.mode,
            "workers": self.workers,
            "browsers": self.browsers,
            "browser_share": self.browser_share,
            "shard": f"{self.shard.index}/{self.shard.count}",
            "start_at": self.start_at,
            "join_rate": self.join_rate,
            "slos": list(self.slos),
            "max_cpu_pct": self.max_cpu_pct,
            "max_loop_lag_ms": self.max_loop_lag_ms,
            "overload_s": self.overload_s,
            "metrics_urls": list(self.metrics_urls),
            **{f"profile_{k}": v for k, v in self.profile.notes.items()},
        }


@dataclass
class RunOutcome:
    exit_code: int
    out_dir: Path
    result: Any  # results.RunResult
    overloaded: str  # why the generator was overloaded ("" if it was not)
    problems: list[str]  # what went wrong in the generator itself (a worker died, ...)


# ------------------------------------------------------------------ the overload decision (pure)


@dataclass(frozen=True)
class LoadSample:
    at: float
    cpu_pct: float  # the generator's processes, % of all its cores
    loop_lag_ms: float  # the worst worker's event-loop lag over the last second


def overload_reason(
    samples: Sequence[LoadSample],
    max_cpu_pct: float = 90.0,
    max_loop_lag_ms: float = 50.0,
    sustain_s: float = 3.0,
) -> str:
    """Why the generator was overloaded, "" if it was not: CPU over ``max_cpu_pct`` or loop lag
    over ``max_loop_lag_ms`` in consecutive samples spanning more than ``sustain_s`` seconds (one
    slow second, a GC pause or a burst of dials, is not overload)."""
    ordered = sorted(samples, key=lambda x: x.at)
    reasons = []
    for name, values, limit, unit in (
        ("generator CPU", [s.cpu_pct for s in ordered], max_cpu_pct, "%"),
        ("event-loop lag", [s.loop_lag_ms for s in ordered], max_loop_lag_ms, " ms"),
    ):
        span, worst = _longest_run_over(ordered, values, limit)
        if span > sustain_s:
            reasons.append(f"{name} over {limit:g}{unit} for {span:.0f} s (up to {worst:.0f}{unit})")
    return "; ".join(reasons)


def _longest_run_over(
    samples: Sequence[LoadSample], values: list[float], limit: float
) -> tuple[float, float]:
    """(seconds, worst value) of the longest run of consecutive samples over ``limit``."""
    best = (0.0, 0.0)
    start: float | None = None
    worst = 0.0
    for s, v in zip(samples, values, strict=True):
        if v <= limit:
            start = None
            continue
        if start is None:
            start, worst = s.at, v
        worst = max(worst, v)
        if s.at - start >= best[0]:
            best = (s.at - start, worst)
    return best


# ------------------------------------------------------------------ the target's metrics


def parse_metrics(text: str) -> dict[str, float]:
    """The few numbers of a Prometheus /metrics page the timeline shows: edge sessions (gauge),
    deadline misses (counter total), tick-duration histogram count/sum and cumulative buckets."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        name = fam.name
        for s in fam.samples:
            if name.startswith("microturn_edge_sessions") and s.name.startswith("microturn_edge_sessions"):
                out["edge_sessions"] = out.get("edge_sessions", 0.0) + s.value
            elif name.startswith("microturn_chunk_deadline_misses") and s.name.endswith("_total"):
                out["deadline_misses"] = out.get("deadline_misses", 0.0) + s.value
            elif name.startswith("microturn_tick_duration"):
                if s.name.endswith("_count"):
                    out["tick_count"] = out.get("tick_count", 0.0) + s.value
                elif s.name.endswith("_sum"):
                    out["tick_sum_ms"] = out.get("tick_sum_ms", 0.0) + s.value
                elif s.name.endswith("_bucket"):
                    key = f"tick_le_{s.labels.get('le', '+Inf')}"
                    out[key] = out.get(key, 0.0) + s.value
    return out


def tick_p95(prev: dict[str, float], cur: dict[str, float]) -> float | None:
    """p95 tick time (ms, the bucket's upper bound) over the ticks between two scrapes."""
    n = cur.get("tick_count", 0.0) - prev.get("tick_count", 0.0)
    if n <= 0:
        return None
    bounds = sorted(
        (float(k.removeprefix("tick_le_")), cur[k] - prev.get(k, 0.0))
        for k in cur
        if k.startswith("tick_le_")
    )
    for le, cum in bounds:
        if cum >= 0.95 * n:
            return None if math.isinf(le) else le
    return None


async def scrape_loop(urls: list[str], every_s: float, out: list[dict[str, Any]]) -> None:
    """Scrape each URL every ``every_s``; a row per URL and scrape (failures are rows too)."""
    import httpx

    prev: dict[str, dict[str, float]] = {}
    async with httpx.AsyncClient(timeout=min(5.0, every_s)) as http:
        while True:
            for url in urls:
                at = time.time()
                try:
                    r = await http.get(url)
                    r.raise_for_status()
                    cur = parse_metrics(r.text)
                except Exception as exc:
                    out.append({"at": at, "metrics_url": url, "scrape_error": f"{type(exc).__name__}"[:80]})
                    continue
                row: dict[str, Any] = {"at": at, "metrics_url": url}
                for k in ("edge_sessions", "deadline_misses"):
                    if k in cur:
                        row[k] = cur[k]
                p = prev.get(url)
                if p is not None:
                    dn = cur.get("tick_count", 0.0) - p.get("tick_count", 0.0)
                    if dn > 0:
                        row["tick_ms_mean"] = (cur.get("tick_sum_ms", 0.0) - p.get("tick_sum_ms", 0.0)) / dn
                        row["tick_ms_p95"] = tick_p95(p, cur)
                    if "deadline_misses" in cur:
                        row["deadline_misses_delta"] = cur["deadline_misses"] - p.get("deadline_misses", 0.0)
                prev[url] = cur
                out.append(row)
            await asyncio.sleep(every_s)


# ------------------------------------------------------------------ a worker process


def worker_main(
    index: int, url: str, scenario: Scenario, prompt_map: dict[str, prompts.Prompt], shard: int,
    once: bool, cmd_q: Any, out_q: Any,
) -> None:  # fmt: skip
    """A spawned worker: an asyncio loop of aiortc callers, driven by ``cmd_q`` ("start"/"stop"
    slot, "end"), reporting records, progress and its loop lag on ``out_q``."""
    try:
        asyncio.run(_worker(index, url, scenario, prompt_map, shard, once, cmd_q, out_q))
    except Exception as exc:  # the parent says so; the worker must not die silently
        out_q.put(("crashed", index, f"{type(exc).__name__}: {exc}"[:500]))


async def _worker(
    index: int, url: str, scenario: Scenario, prompt_map: dict[str, prompts.Prompt], shard: int,
    once: bool, cmd_q: Any, out_q: Any,
) -> None:  # fmt: skip
    from loadtest.aiortc_caller import run_slot, warm_up

    warm_up()
    out_q.put(("ready", index, os.getpid()))
    slots: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
    state = {"dials": 0, "calls": 0, "failures": 0}
    latencies: list[float] = []
    lags: list[float] = []

    def on_record(rec: SessionRecord) -> None:
        state["calls"] += 1
        state["failures"] += bool(rec.failure)
        out_q.put(("record", index, rec.to_dict()))

    def on_turn(t: TurnRecord) -> None:
        if t.turn_latency_ms is not None:
            latencies.append(t.turn_latency_ms)

    def on_dial() -> None:
        state["dials"] += 1

    async def lag_monitor() -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(LAG_EVERY_S)
            lags.append(max(0.0, (time.monotonic() - t - LAG_EVERY_S) * 1000))

    async def progress() -> None:
        while True:
            await asyncio.sleep(SAMPLE_EVERY_S)
            window = sorted(lags)
            lags.clear()
            p90 = window[min(len(window) - 1, int(0.9 * len(window)))] if window else 0.0
            active = sum(1 for task, _ in slots.values() if not task.done())
            out_q.put(("progress", index, {
                "at": time.time(), "slots": active, "dials": state["dials"], "calls": state["calls"],
                "failures": state["failures"], "latencies": list(latencies),
                "loop_lag_ms": p90, "loop_lag_max_ms": window[-1] if window else 0.0,
            }))  # fmt: skip
            latencies.clear()

    bg = [asyncio.create_task(lag_monitor()), asyncio.create_task(progress())]
    loop = asyncio.get_running_loop()
    while True:
        cmd = await loop.run_in_executor(None, cmd_q.get)
        kind = cmd[0]
        if kind == "start":
            slot = int(cmd[1])
            stop = asyncio.Event()
            task = asyncio.create_task(
                run_slot(url, scenario, prompt_map, f"aiortc-{shard}-{index}-{slot}", stop, on_record,
                         once=once, shard=shard, on_turn=on_turn, on_dial=on_dial)
            )  # fmt: skip
            slots[slot] = (task, stop)
        elif kind == "stop":
            entry = slots.get(int(cmd[1]))
            if entry is not None:
                entry[1].set()
        elif kind == "end":
            for _, stop in slots.values():
                stop.set()
            await asyncio.gather(*(t for t, _ in slots.values()), return_exceptions=True)
            break
    for t in bg:
        t.cancel()
    await asyncio.gather(*bg, return_exceptions=True)
    out_q.put(("done", index, state))


# ------------------------------------------------------------------ the parent


class Generator:
    """The processes this run started (workers, browsers) and how busy they are."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.worker_pids: set[int] = set()
        self._procs: dict[int, psutil.Process] = {}
        self.cores = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        )
        self.me.cpu_percent(None)

    def _ours(self) -> list[psutil.Process]:
        """This process, the workers and their children, and any browser (Playwright driver and
        Chromium) it started; not other children (a test's ``microturn up`` is the target)."""
        procs = [self.me]
        with contextlib.suppress(psutil.Error):
            for child in self.me.children(recursive=False):
                with contextlib.suppress(psutil.Error):
                    if child.pid in self.worker_pids or _is_browser(child):
                        procs.append(child)
                        procs.extend(child.children(recursive=True))
        return procs

    def cpu_pct(self) -> float:
        """CPU of the generator's processes since the last call, as % of all its cores."""
        total = 0.0
        live: dict[int, psutil.Process] = {}
        for p in self._ours():
            known = self._procs.get(p.pid, p)
            with contextlib.suppress(psutil.Error):
                v = known.cpu_percent(None)
                total += v if p.pid in self._procs else 0.0  # a new process's first reading is 0 anyway
                live[p.pid] = known
        self._procs = live
        return total / self.cores


def _is_browser(p: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        cmd = " ".join(p.cmdline()[:3]).lower()
        return "playwright" in cmd or "chromium" in cmd or "chrome" in cmd
    return False


def _quiet(cfg: RunConfig) -> bool:
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    return cfg.quiet or ci or not sys.stderr.isatty()


def _say(text: str) -> None:
    print(f"[loadtest] {text}", file=sys.stderr, flush=True)


def default_workers(cfg: RunConfig, aiortc_peak: int, cores: int) -> int:
    """One per core, never more than there are aiortc callers at the peak (at least one)."""
    wanted = cfg.workers if cfg.workers is not None else cores
    return max(1, min(wanted, max(1, aiortc_peak)))


def browser_count(cfg: RunConfig) -> int:
    """Chromium callers of this shard: the peak (mode browser), or the canaries (mode mixed)."""
    peak = cfg.shard.share(cfg.profile.peak)
    if cfg.mode == "browser":
        return peak
    if cfg.mode == "mixed":
        if cfg.browsers:
            return cfg.shard.share(cfg.browsers)
        if cfg.browser_share is not None:
            return max(1, math.ceil(peak * cfg.browser_share)) if peak else 0
        return 1
    return 0


def step_specs(profile: Profile, t0: float) -> list[dict[str, Any]]:
    """The steps (levels held) of a step profile as results.build takes them (epoch seconds)."""
    if profile.name != "step":
        return []
    return [
        {"index": i, "level": level, "started_at": t0 + a, "ended_at": t0 + b}
        for i, (a, b, level) in enumerate(profiles.level_spans(profile))
    ]


class _Run:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.gen = Generator()
        self.records: list[SessionRecord] = []
        self.problems: list[str] = []
        self.load: list[LoadSample] = []
        self.target_samples: list[dict[str, Any]] = []
        self.progress: dict[int, dict[str, Any]] = {}
        self.latencies: deque[tuple[float, float]] = deque()
        self.parent_lags: list[float] = []
        self.overloaded = ""
        self.browser_live = 0
        self.quiet = _quiet(cfg)
        self.t0 = 0.0
        self.done_workers: set[int] = set()

    async def main(self) -> None:
        cfg = self.cfg
        n_browsers = browser_count(cfg)
        aiortc = cfg.mode != "browser"
        prompt_map = await asyncio.to_thread(prompts.render_scenario, cfg.scenario)
        events = list(profiles.plan(cfg.profile, cfg.shard, cfg.join_rate)) if aiortc else []
        n_workers = default_workers(cfg, peak_of(events), self.gen.cores) if events else 0
        ctx = mp.get_context("spawn")
        out_q = ctx.Queue()
        cmd_qs = [ctx.Queue() for _ in range(n_workers)]
        args = (cfg.url, cfg.scenario, prompt_map, cfg.shard.index, cfg.profile.once)
        procs = [
            ctx.Process(
                target=worker_main,
                name=f"loadtest-worker-{i}",
                args=(i, *args, cmd_qs[i], out_q),
                daemon=True,
            )
            for i in range(n_workers)
        ]
        for p in procs:
            p.start()
        try:
            await self._wait_ready(procs, out_q)
            await self._wait_start()
            now = time.time()
            on_time = cfg.start_at is not None and now - cfg.start_at < 1.0  # every shard's plan from it
            self.t0 = cfg.start_at if on_time and cfg.start_at is not None else now
            _say(f"{cfg.profile.describe()} against {cfg.url}: {n_workers} aiortc worker(s), "
                 f"{n_browsers} browser caller(s), shard {cfg.shard.index}/{cfg.shard.count}")  # fmt: skip
            bg = [asyncio.create_task(self._monitor(out_q, procs))]
            if cfg.metrics_urls:
                bg.append(
                    asyncio.create_task(
                        scrape_loop(cfg.metrics_urls, cfg.scrape_every_s, self.target_samples)
                    )
                )
            stop_browsers = asyncio.Event()
            browsers = (
                asyncio.create_task(self._browsers(n_browsers, prompt_map, stop_browsers))
                if n_browsers
                else None
            )
            await self._drive(events, cmd_qs)
            if browsers is not None:  # browser mode has no aiortc plan: the profile's length
                end = self.t0 + cfg.profile.duration_s
                while time.time() < end and not browsers.done():
                    await asyncio.sleep(0.25)
            stop_browsers.set()
            for q in cmd_qs:
                q.put(("end",))
            await self._wait_done(procs)
            if browsers is not None:
                await browsers
            for t in bg:
                t.cancel()
            await asyncio.gather(*bg, return_exceptions=True)
        finally:
            for p in procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
                    p.join(timeout=5)

    async def _wait_ready(self, procs: list[Any], out_q: Any) -> None:
        ready: set[int] = set()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(ready) < len(procs):
            for msg in _drain(out_q):
                if msg[0] == "ready":
                    ready.add(msg[1])
                    self.gen.worker_pids.add(int(msg[2]))
                elif msg[0] == "crashed":
                    raise RunError(f"worker {msg[1]} failed to start: {msg[2]}")
            dead = [p.name for i, p in enumerate(procs) if i not in ready and not p.is_alive()]
            if dead:
                raise RunError(f"{', '.join(dead)} exited before it was ready")
            if time.monotonic() > deadline:
                raise RunError(f"workers not ready after {READY_TIMEOUT_S:.0f} s (loading Silero VAD?)")
            await asyncio.sleep(0.1)

    async def _wait_start(self) -> None:
        wait, late = profiles.start_wait(self.cfg.start_at, time.time())
        if late > 0:
            _say(f"WARNING: --start-at is {late:.1f} s in the past: starting now (shards are out of step)")
            self.problems.append(f"started {late:.1f} s after --start-at")
        elif wait > 0:
            _say(f"waiting {wait:.1f} s for --start-at {self.cfg.start_at:.0f}")
            await asyncio.sleep(wait)

    async def _drive(self, events: list[Event], cmd_qs: list[Any]) -> None:
        """Hand each planned event to a worker at its time; for a ``once`` profile, finish as soon
        as every caller has made its call."""
        owner: dict[int, int] = {}
        load = [0] * len(cmd_qs)
        for ev in events:
            while True:
                wait = self.t0 + ev.at - time.time()
                if wait <= 0:
                    break
                if self.cfg.profile.once and owner and self._all_calls_done(len(owner)):
                    return
                await asyncio.sleep(min(wait, 0.25))
            if ev.action == "start":
                w = min(range(len(cmd_qs)), key=lambda i: load[i])
                owner[ev.slot] = w
                load[w] += 1
                cmd_qs[w].put(("start", ev.slot))
            else:
                w = owner.get(ev.slot, -1)
                if w >= 0:
                    load[w] -= 1
                    cmd_qs[w].put(("stop", ev.slot))

    def _all_calls_done(self, started: int) -> bool:
        return sum(1 for r in self.records if r.mode == "aiortc") >= started

    async def _wait_done(self, procs: list[Any]) -> None:
        """Every worker's "done" (the monitor takes the messages), or its death, or the grace."""
        deadline = time.monotonic() + self.cfg.stop_grace_s
        dead: set[int] = set()
        while len(self.done_workers | dead) < len(procs):
            await asyncio.sleep(0.1)
            for i, p in enumerate(procs):
                if i not in self.done_workers and i not in dead and not p.is_alive():
                    dead.add(i)
                    self.problems.append(
                        f"worker {i} died (exit code {p.exitcode}): its calls in progress are lost"
                    )
            if time.monotonic() > deadline:
                missing = sorted(set(range(len(procs))) - self.done_workers - dead)
                self.problems.append(
                    f"workers {missing} did not finish within {self.cfg.stop_grace_s:.0f} s of the end"
                )
                return
        await asyncio.sleep(2 * LAG_EVERY_S)  # the monitor takes the last records

    async def _monitor(self, out_q: Any, procs: list[Any]) -> None:
        """Take the workers' messages, sample the generator's CPU and loop lag every second,
        decide overload, print the progress line."""
        next_sample = time.monotonic() + SAMPLE_EVERY_S
        while True:
            t = time.monotonic()
            await asyncio.sleep(LAG_EVERY_S)
            self.parent_lags.append(max(0.0, (time.monotonic() - t - LAG_EVERY_S) * 1000))
            for msg in _drain(out_q):
                self._take(msg)
            if time.monotonic() >= next_sample:
                next_sample += SAMPLE_EVERY_S
                self._sample()

    def _take(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "record":
            self.records.append(SessionRecord.from_dict(msg[2]))
        elif kind == "progress":
            self.progress[msg[1]] = msg[2]
            now = time.time()
            self.latencies.extend((now, ms) for ms in msg[2]["latencies"])
        elif kind == "done":
            self.done_workers.add(int(msg[1]))
        elif kind == "crashed":
            self.problems.append(f"worker {msg[1]} crashed: {msg[2]}")
            _say(f"ERROR: worker {msg[1]} crashed: {msg[2]}")

    def _sample(self) -> None:
        now = time.time()
        lag = max([p.get("loop_lag_ms", 0.0) for p in self.progress.values() if now - p["at"] < 3],
                  default=0.0)  # fmt: skip
        window = sorted(self.parent_lags)
        self.parent_lags.clear()
        if window:
            lag = max(lag, window[min(len(window) - 1, int(0.9 * len(window)))])
        cpu = self.gen.cpu_pct()
        self.load.append(LoadSample(now, cpu, lag))
        if not self.overloaded:
            why = overload_reason(
                self.load[-120:], self.cfg.max_cpu_pct, self.cfg.max_loop_lag_ms, self.cfg.overload_s
            )
            if why:
                self.overloaded = why
                _say("!" * 78)
                _say(f"GENERATOR OVERLOADED: {why}")
                _say("the results of this run are INVALID (it measures the generator, not the target):")
                _say("use more --workers/cores or shards (--shard i/N on more machines), or fewer callers")
                _say("!" * 78)
        if not self.quiet:
            while self.latencies and now - self.latencies[0][0] > 30:
                self.latencies.popleft()
            lat = sorted(ms for _, ms in self.latencies)
            p95 = f"{lat[min(len(lat) - 1, int(0.95 * len(lat)))]:.0f} ms" if lat else "-"
            active = sum(p.get("slots", 0) for p in self.progress.values()) + self.browser_live
            dials = sum(p.get("dials", 0) for p in self.progress.values())
            fails = sum(1 for r in self.records if r.failure)
            target = self.cfg.shard.share(profiles.targets(self.cfg.profile, now - self.t0))
            print(
                f"\r[loadtest] {now - self.t0:6.0f}s  callers {active}/{target}  dials {dials}  "
                f"calls done {len(self.records)}  failures {fails}  turn p95(30s) {p95}  "
                f"cpu {cpu:.0f}%  lag {lag:.0f} ms{'  OVERLOADED' if self.overloaded else ''}   ",
                end="", file=sys.stderr, flush=True,
            )  # fmt: skip

    async def _browsers(self, count: int, prompt_map: dict[str, prompts.Prompt], stop: asyncio.Event) -> None:
        """Chromium callers, ``count`` at a time, batch after batch until the profile ends (a
        browser call is one call of ``session_s``)."""
        try:
            from loadtest.browser_caller import run_browser_callers
        except ImportError as exc:
            self.problems.append(f"browser callers unavailable: {exc}")
            _say(f"ERROR: browser callers unavailable: {exc}")
            return

        def on_record(rec: SessionRecord) -> None:
            self.records.append(rec)

        end = self.t0 + self.cfg.profile.duration_s
        while not stop.is_set() and time.time() < end - 5:
            self.browser_live = count
            try:
                await run_browser_callers(
                    self.cfg.url, self.cfg.scenario, count, self.cfg.pages_per_browser, on_record, stop,
                    shard=self.cfg.shard.index, prompts=prompt_map,
                )  # fmt: skip
            except Exception as exc:
                self.problems.append(f"browser fleet failed: {type(exc).__name__}: {exc}"[:300])
                return
            finally:
                self.browser_live = 0
            if self.cfg.profile.once:
                return


def peak_of(events: Sequence[Event]) -> int:
    """The most callers the events have running at once."""
    running = peak = 0
    for e in events:
        running += 1 if e.action == "start" else -1
        peak = max(peak, running)
    return peak


def _drain(q: Any) -> list[tuple[Any, ...]]:
    out = []
    with contextlib.suppress(queue.Empty):
        while True:
            out.append(q.get_nowait())
    return out


def run(cfg: RunConfig) -> RunOutcome:
    """Run ``cfg`` to the end and write its result into ``cfg.out``; returns the exit code
    (slo.EXIT_*), the output directory and the result. Raises RunError when nothing could run."""
    from loadtest import results, slo

    gates = slo.parse_all(cfg.slos)  # a bad gate fails before anything starts (SloError)
    r = _Run(cfg)
    started = time.time()
    try:
        asyncio.run(r.main())
    except KeyboardInterrupt:
        r.problems.append("interrupted (Ctrl-C): the result covers the run so far")
    if not r.quiet:
        print(file=sys.stderr)
    t0 = r.t0 or started
    generator = {
        "cores": r.gen.cores,
        "overloaded": bool(r.overloaded),
        "reason": r.overloaded,
        "workers": len(r.gen.worker_pids),
        "problems": r.problems,
        "max_cpu_pct": cfg.max_cpu_pct,
        "max_loop_lag_ms": cfg.max_loop_lag_ms,
    }
    result = results.build(
        r.records, cfg.to_dict(),
        target={"url": cfg.url}, started_at=t0, ended_at=time.time(),
        shards=[cfg.shard.index], generator=generator,
        generator_samples=[{"at": s.at, "cpu_pct": s.cpu_pct, "loop_lag_ms": s.loop_lag_ms} for s in r.load],
        target_samples=[s for s in r.target_samples if "scrape_error" not in s],
        steps=step_specs(cfg.profile, t0), slos=gates,
    )  # fmt: skip
    cfg.out.mkdir(parents=True, exist_ok=True)
    results.save(result, cfg.out)
    report_path = cfg.out / "report.html"
    try:
        from loadtest import htmlreport

        htmlreport.write_report(result, report_path)
    except Exception as exc:  # the result is saved; `loadtest report` can redo the page
        r.problems.append(f"report.html not written: {type(exc).__name__}: {exc}"[:300])
    code = slo.exit_code(result.verdicts(), bool(r.overloaded))
    if code == slo.EXIT_OK and _fatal(r, result):
        code = slo.EXIT_ERROR
    print_summary(result, r.problems, cfg.out, code)
    return RunOutcome(code, cfg.out, result, r.overloaded, r.problems)


def _fatal(r: _Run, result: Any) -> bool:
    """The run broke (EXIT_ERROR): a worker died, or no call was made at all."""
    return any("died" in p or "crashed" in p for p in r.problems) or result.totals.sessions == 0


def print_summary(result: Any, problems: list[str], out: Path, code: int) -> None:
    """A few lines on stdout: what was measured, the gates, the verdict, where the files are."""
    from loadtest import slo

    t = result.totals
    turn = result.histograms.get("turn_latency")
    lines = [
        f"calls {t.sessions} (connected {t.connected}, setup failures {t.setup_failures}, "
        f"call failures {t.call_failures}); turns {t.turns}, answered {t.answered_turns}",
    ]
    if turn is not None and turn.count:
        s = turn.to_summary()
        lines.append(
            "turn latency (end of speech -> answer onset): "
            + ", ".join(f"{k} {v:.0f} ms" for k, v in s.items() if k != "count" and v is not None)
        )
    for v in result.verdicts():
        lines.append(
            f"SLO {'PASS' if v.passed else 'FAIL'}  {v.spec}  observed {slo.format_value(v.observed, v.unit)}"
            + (f" ({v.reason})" if v.reason else "")
        )
    g = result.generator
    cpu = g.get("cpu_pct_max")
    lag = g.get("loop_lag_ms_max")
    lines.append(
        f"generator: {g.get('cores')} cores, cpu max {cpu:.0f}%, loop lag max {lag:.0f} ms"
        if cpu is not None and lag is not None
        else f"generator: {g.get('cores')} cores"
    )
    if result.overloaded:
        lines.append(f"GENERATOR OVERLOADED: {g.get('reason')}: RESULTS INVALID")
    lines += [f"problem: {p}" for p in problems]
    lines.append(f"results in {out} (result.json, sessions.csv, report.html); exit {code}")
    print("\n".join(f"[loadtest] {x}" for x in lines), flush=True)
