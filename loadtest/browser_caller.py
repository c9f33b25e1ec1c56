"""Chromium callers: real browsers dialling the edge, one call per page, several pages per browser.

A page (``browser_page/caller.html``) is served by Playwright's ``route`` under the edge's own
origin, so the session API is same-origin without the edge sending CORS headers. Its microphone is
a WebAudio destination fed with the scenario's prompts at exact times, so the user's end of speech
is known to the sample; the model's audio is tapped from the remote track as PCM with wall-clock
times and handed here in batches, where the onset detector finds when the model began to speak.
Each call fills a :class:`SessionRecord` (mode ``browser``); nothing raises out of a call, whatever
went wrong is in ``record.failure``. The resources the browsers cost (RSS per browser and per page,
CPU per caller) go into ``record.caller_metrics``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import psutil

from loadtest.prompts import RATE, Prompt, render_scenario, turn_key
from loadtest.records import SessionRecord, StatsSample, TurnRecord
from loadtest.scenario import Scenario, Turn, play_until
from loadtest.turns import ReceivedSpeech, settle_turns

log = logging.getLogger(__name__)

CHROMIUM = "/usr/bin/chromium"
PAGE_DIR = Path(__file__).with_name("browser_page")
PAGE_PREFIX = "/__loadtest__/"  # where the routed page lives under the edge's origin
POLL_S = 0.2  # how often a page's queue of audio, events and stats is drained
PLAY_LEAD_S = 0.25  # a prompt is handed to the page this long before it is due to start
CONNECT_TIMEOUT_S = 30.0
EVALUATE_TIMEOUT_S = 30.0
GAP_MS = 100.0  # concealed audio over this much in one stats period counts as a gap
ANSWER_POLL_S = 0.05  # how often a waiting turn looks for its answer among the onsets
SAMPLE_EVERY_S = 2.0  # process-tree samples for RSS and CPU
MB = 1024 * 1024

OnRecord = Callable[[SessionRecord], Awaitable[None] | None]


def chromium_args() -> list[str]:
    """Debian's Chromium headless with fake media (DESIGN.md's flags), audio allowed to start
    without a gesture, and loopback peer connections for tests on one machine."""
    return [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--allow-loopback-in-peer-connection",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
        # The mic is WebAudio, not getUserMedia, so Chromium would hide host candidates behind
        # mDNS names the edge cannot resolve; offer the real addresses.
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        # Pages in the background must keep their timers and audio running.
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
    ]


def page_url(url: str) -> str:
    return url.rstrip("/") + PAGE_PREFIX + "caller.html"


def base_path(url: str) -> str:
    """The edge's path prefix (``""`` at the root): the page calls ``<prefix>/api/...``."""
    return urlsplit(url).path.rstrip("/")


# ---------------------------------------------------------------------------------------- audio


def warm_up() -> None:
    """Load Silero VAD now (seconds, blocking: run it in a thread) rather than in a call."""
    ReceivedSpeech(RATE).feed(np.zeros(RATE, np.int16), time.time())


def decode_pcm(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype="<i2").astype(np.int16)


def encode_pcm(pcm: np.ndarray) -> str:
    return base64.b64encode(np.asarray(pcm).astype("<i2").tobytes()).decode("ascii")


def stats_sample(raw: dict[str, Any], prev: dict[str, Any] | None) -> StatsSample:
    """One page getStats() sample (cumulative counters) as a record; the jitter-buffer delay per
    emitted sample and the bitrate are over the period since ``prev``."""
    jb_ms = bitrate = None
    if prev is not None:
        emitted = raw["jitterBufferEmittedCount"] - prev["jitterBufferEmittedCount"]
        if emitted > 0:
            jb_ms = (raw["jitterBufferDelay"] - prev["jitterBufferDelay"]) / emitted * 1000
        dt = (raw["t"] - prev["t"]) / 1000
        if dt > 0:
            bitrate = (raw["bytesReceived"] - prev["bytesReceived"]) * 8 / dt / 1000
    return StatsSample(
        at=float(raw["t"]) / 1000,
        packets_received=int(raw["packetsReceived"]),
        packets_lost=max(0, int(raw["packetsLost"])),
        jitter_ms=None if raw.get("jitter") is None else float(raw["jitter"]) * 1000,
        jitter_buffer_delay_ms=jb_ms,
        concealed_samples=int(raw["concealedSamples"]),
        silent_concealed_samples=int(raw["silentConcealedSamples"]),
        total_samples_received=int(raw["totalSamplesReceived"]),
        rtt_ms=None if raw.get("rtt") is None else float(raw["rtt"]) * 1000,
        bitrate_kbps=bitrate,
    )


# ---------------------------------------------------------------------------------------- one call


class BrowserCall:
    """One call in one page, from dial to hangup, driven by the scenario; ``run`` never raises."""

    def __init__(
        self,
        page: Any,
        url: str,
        scenario: Scenario,
        prompts: dict[str, Prompt],
        record: SessionRecord,
        stop: asyncio.Event | None = None,
        max_passes: int | None = None,
    ) -> None:
        self.page = page
        self.url = url
        self.scenario = scenario
        self.prompts = prompts
        self.record = record
        self.stop = stop or asyncio.Event()
        self.max_passes = max_passes
        self.audio: ReceivedSpeech | None = None
        self.dropped_chunks = 0
        self.tap = ""
        self.page_closed = False
        self._loaded = False  # the page is up: its hangup() releases whatever dial() got to
        self._live = False  # from the answer applied to the hangup: events can end the call
        self._ended = asyncio.Event()  # the call ended early (record.failure says why)
        self._raw_prev: dict[str, Any] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._b64: dict[str, str] = {}
        self.before_close: Callable[[], None] | None = None  # e.g. a last CPU sample of the page

    async def run(self) -> SessionRecord:
        """Dial, play the scenario until ``session_s`` after dialling (or ``stop``, or
        ``max_passes`` passes), hang up."""
        rec = self.record
        rec.dialed_at = time.time()
        try:
            self.audio = ReceivedSpeech(RATE)
            await self._dial()
            self._poller = asyncio.create_task(self._poll_loop())
            await self._wait_connected()
            left = rec.dialed_at + self.scenario.session_s - time.time()
            await play_until(self._script(), self._ended, self.stop, left)
        except Exception as exc:
            self._fail(("setup" if rec.connected_at is None else "call") + f": {_reason(exc)}")
        finally:
            await self._hangup()
            self._finish()
        return rec

    def _fail(self, why: str) -> None:
        if not self.record.failure:
            self.record.failure = why[:300]
        self._ended.set()

    async def _eval(self, expr: str, arg: Any = None, timeout_s: float = EVALUATE_TIMEOUT_S) -> Any:
        return await asyncio.wait_for(self.page.evaluate(expr, arg), timeout_s)

    async def _dial(self) -> None:
        await self.page.goto(page_url(self.url), wait_until="load")
        self._loaded = True
        opts = {"video": self.scenario.video, "base": base_path(self.url)}
        info = await self._eval("(o) => lt.dial(o)", opts, 90)  # includes the page's 503 retries
        self.record.session_id = str(info["session_id"])
        self._live = True

    async def _wait_connected(self) -> None:
        deadline = time.time() + CONNECT_TIMEOUT_S
        while self.record.connected_at is None:
            if self._ended.is_set():
                raise RuntimeError(self.record.failure or "the call ended before it connected")
            if time.time() > deadline:
                raise TimeoutError(f"media not connected {CONNECT_TIMEOUT_S:.0f} s after the answer")
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ what the page saw

    async def _poll_loop(self) -> None:
        while self._live:
            try:
                self._absorb(await self._eval("() => lt.drain()"))
            except Exception as exc:
                if self._live:
                    self._fail(f"dropped: the page stopped answering: {_reason(exc)}")
                return
            await asyncio.sleep(POLL_S)

    def _absorb(self, d: dict[str, Any]) -> None:
        """One drain of the page: times, received audio, stats samples, events."""
        rec = self.record
        if rec.connected_at is None and d.get("connected_at_ms") is not None:
            rec.connected_at = d["connected_at_ms"] / 1000
            rec.setup_ms = (rec.connected_at - rec.dialed_at) * 1000
        if rec.first_audio_at is None and d.get("first_audio_at_ms") is not None:
            rec.first_audio_at = d["first_audio_at_ms"] / 1000
            rec.first_audio_ms = (rec.first_audio_at - rec.dialed_at) * 1000
        self.dropped_chunks = int(d.get("dropped_chunks") or 0)
        self.tap = d.get("tap") or self.tap
        if self.audio is not None:
            for seg in d.get("audio", []):
                self.audio.feed(decode_pcm(seg["b64"]), float(seg["t0_ms"]) / 1000)
        for raw in d.get("stats", []):
            self._add_stats(raw)
        for ev in d.get("events", []):
            self._on_event(ev)

    def _add_stats(self, raw: dict[str, Any]) -> None:
        rec, prev = self.record, self._raw_prev
        rec.stats.append(stats_sample(raw, prev))
        if prev is not None:
            concealed_ms = (raw["concealedSamples"] - prev["concealedSamples"]) * 1000 / RATE
            if concealed_ms > GAP_MS:
                rec.audio_gaps_ms.append(round(concealed_ms, 1))
            if raw["silentConcealedSamples"] > prev["silentConcealedSamples"]:
                rec.underruns += 1
        self._raw_prev = raw

    def _count(self, code: str) -> None:
        self.record.errors[code] = self.record.errors.get(code, 0) + 1

    def _on_event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind == "model_version":
            self.record.model_version = str(ev.get("model_version", ""))
        elif kind == "error":
            self._count(str(ev.get("code", "?")))
        elif kind == "state" and ev.get("state") == "closed" and self._live:
            self._fail(f"dropped: edge closed the call: {str(ev.get('detail', ''))[:120]}")
        elif kind == "client" and ev.get("kind") == "connection":
            if ev.get("state") in ("failed", "closed") and self._live:
                self._fail(f"dropped: peer connection {ev.get('state')}")
        elif kind == "client" and ev.get("kind") == "error":
            self._count("CLIENT_ERROR")
            if "audio tap" in str(ev.get("detail", "")):  # without the tap nothing is measured
                self._fail(f"call: {ev.get('detail')}")

    # ------------------------------------------------------------------ the scenario

    async def _script(self) -> None:
        """The turns in order, passes repeated (the aiortc caller's rules); cancelled at the end."""
        sc = self.scenario
        index = passes = 0
        prev: TurnRecord | None = None
        pass_start = time.time()
        while self.max_passes is None or passes < self.max_passes:
            for turn in sc.turns:
                start = await self._start_time(turn, pass_start, prev)
                if start is None:  # a barge-in with no answer to talk over
                    continue
                prev = await self._say(turn, index, start)
                index += 1
            passes += 1
            if self.max_passes is not None and passes >= self.max_passes:
                await self._answer_of(prev)  # let the last answer come before hanging up
                return
            pass_start = await self._after_answer(prev, sc.think_s)

    async def _answer_of(self, t: TurnRecord | None) -> float | None:
        """Wait for ``t``'s answer onset; None once answer_timeout_s has passed without one."""
        if t is None or self.audio is None:
            return None
        ref = t.speech_end_at if t.speech_end_at is not None else t.said_at
        limit = ref + self.scenario.answer_timeout_s
        while True:
            on = self.audio.first_after(ref, before=limit)
            if on is not None:
                if t.answer_onset_at is None:
                    t.answer_onset_at = on
                    t.turn_latency_ms = (on - ref) * 1000
                return on
            if time.time() > limit + POLL_S:  # the page hands audio over every POLL_S
                return None
            await asyncio.sleep(ANSWER_POLL_S)

    async def _after_answer(self, prev: TurnRecord | None, pause_s: float) -> float:
        if prev is None:
            return time.time()
        on = await self._answer_of(prev)
        return (on + pause_s) if on is not None else time.time()

    async def _start_time(self, turn: Turn, pass_start: float, prev: TurnRecord | None) -> float | None:
        if turn.barge_in_ms is not None:
            on = await self._answer_of(prev)
            return None if on is None else on + turn.barge_in_ms / 1000
        if turn.at_s is not None:
            return pass_start + turn.at_s
        pause = turn.after_answer_s if turn.after_answer_s is not None else self.scenario.think_s
        return await self._after_answer(prev, pause)

    async def _say(self, turn: Turn, index: int, start: float) -> TurnRecord:
        """Type the turn at ``start`` or have the page play its prompt from exactly ``start``;
        returns once the prompt has been played out."""
        if turn.text is not None:
            await asyncio.sleep(max(0.0, start - time.time()))
            sent_ms = await self._eval("(text) => lt.sendText(text)", turn.text)
            if sent_ms is None:
                raise RuntimeError("the events data channel is not open for a typed turn")
            t = TurnRecord(index=index, kind="text", said_at=float(sent_ms) / 1000, speech_end_at=None)
        else:
            key = turn_key(turn)
            prompt = self.prompts[key]
            if key not in self._b64:
                self._b64[key] = encode_pcm(prompt.pcm)
            await asyncio.sleep(max(0.0, start - PLAY_LEAD_S - time.time()))
            started_ms = await self._eval("([b64, at]) => lt.play(b64, at)", [self._b64[key], start * 1000])
            said_at = float(started_ms) / 1000
            t = TurnRecord(
                index=index, kind=turn.kind, said_at=said_at, speech_end_at=said_at + prompt.speech_end / RATE
            )
            if turn.kind == "barge_in":
                t.barge_in_at = said_at
        self.record.turns.append(t)
        if t.speech_end_at is not None:
            await asyncio.sleep(max(0.0, t.speech_end_at - time.time()))
        return t

    # ------------------------------------------------------------------ the end

    async def _hangup(self) -> None:
        """In the page: last stats, DELETE the session, close the data channel and the peer
        connection (before the browser goes); take the last of what it saw; close the page."""
        rec = self.record
        self._live = False
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._poller
        if self._loaded:
            try:
                bye = await self._eval("() => lt.hangup()")
                status = bye.get("delete_status")
                if status is not None and status not in (204, 404):  # 404: the edge ended it first
                    self._count(f"CLIENT_DELETE_{status}")
                self._absorb(await self._eval("() => lt.drain()"))
            except Exception as exc:
                self._count("CLIENT_HANGUP_FAILED")
                log.warning("%s: hangup in the page failed: %s", rec.caller, _reason(exc))
        if self.before_close is not None:
            with contextlib.suppress(Exception):
                self.before_close()
        try:
            await asyncio.wait_for(self.page.close(), 10)
            self.page_closed = True
        except Exception as exc:
            log.warning("%s: closing the page failed: %s", rec.caller, _reason(exc))

    def _finish(self) -> None:
        """Final answers and barge-in yields (loadtest.turns, as the aiortc caller settles them)."""
        rec = self.record
        rec.ended_at = time.time()
        if self.audio is None:
            return
        rec.turns = settle_turns(rec.turns, self.audio, self.scenario.answer_timeout_s, rec.ended_at)

    def metrics(self) -> dict[str, float]:
        """What the page received, for the record's caller_metrics."""
        audio = self.audio
        return {
            "received_audio_s": round(audio.samples / RATE, 3) if audio else 0.0,
            "received_segments": float(audio.segments if audio else 0),
            "onsets": float(len(audio.detector.onsets()) if audio else 0),
            "dropped_chunks": float(self.dropped_chunks),
            "tap_worklet": float(self.tap == "worklet"),
            "page_closed": float(self.page_closed),
        }


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    text = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------- resources


@dataclass
class TreeUsage:
    """Memory and CPU of one Chromium's process tree (browser, GPU/utility, renderers), sampled.

    RSS counts a shared page in every process that maps it, so a tree's RSS overstates what the
    browser costs; PSS (each shared page split among its users) adds up, and is what per-browser
    and per-page capacity is planned with."""

    root_pid: int
    base_rss: int = 0  # the tree right after launch (one blank page), before any call
    base_pss: int = 0
    peak_rss: int = 0
    peak_pss: int = 0
    cpu_by_pid: dict[int, float] = field(default_factory=dict)

    def sample(self) -> tuple[int, int, float]:
        """(tree RSS, tree PSS, CPU seconds the tree used since the last sample)."""
        try:
            root = psutil.Process(self.root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0, 0, 0.0
        rss = pss = 0
        used = 0.0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                with p.oneshot():
                    mem = p.memory_full_info()
                    cpu = sum(p.cpu_times()[:2])
                rss += mem.rss
                pss += getattr(mem, "pss", mem.rss)
                used += max(0.0, cpu - self.cpu_by_pid.get(p.pid, 0.0))
                self.cpu_by_pid[p.pid] = cpu
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        return rss, pss, used


def browser_root_pid(user_data_dir: Path) -> int | None:
    """The Chromium browser process (not a child: no ``--type=``) using ``user_data_dir``."""
    needle = f"--user-data-dir={user_data_dir}"
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if needle in cmd and not any(a.startswith("--type=") for a in cmd):
            return int(p.info["pid"])
    return None


# ---------------------------------------------------------------------------------------- a browser


class Browser:
    """One Chromium process (its own Playwright driver and empty profile) holding several calls,
    its page files routed under the edge's origin, its process tree sampled for RSS and CPU."""

    def __init__(
        self, index: int, url: str, scenario: Scenario, prompts: dict[str, Prompt], max_passes: int | None
    ) -> None:
        self.index = index
        self.url = url
        self.scenario = scenario
        self.prompts = prompts
        self.max_passes = max_passes
        self.profile = Path(tempfile.mkdtemp(prefix=f"microturn-lt-browser{index}-"))
        self.usage: TreeUsage | None = None
        self.live: list[str] = []  # callers whose call is up now
        self.pages = 0  # calls this browser holds
        self.cpu_s: dict[str, float] = {}  # caller -> CPU seconds attributed to it

    async def run(
        self, records: list[SessionRecord], stop: asyncio.Event, on_record: OnRecord | None
    ) -> None:
        """Launch, run one call per record (one page each), close the browser. Never raises: a
        browser that cannot start fails the records of its calls."""
        try:
            from playwright.async_api import async_playwright

            async with async_playwright() as pw:
                ctx = await pw.chromium.launch_persistent_context(
                    str(self.profile), executable_path=CHROMIUM, headless=False,
                    args=chromium_args(), timeout=60_000,
                )  # fmt: skip
                sampler: asyncio.Task[None] | None = None
                try:
                    await self._serve_page(ctx)
                    root = browser_root_pid(self.profile)
                    if root is not None:
                        self.usage = TreeUsage(root)
                        u = self.usage
                        u.base_rss, u.base_pss, _ = u.sample()
                        u.peak_rss, u.peak_pss = u.base_rss, u.base_pss
                        sampler = asyncio.create_task(self._sample_loop())
                    self.pages = len(records)
                    pages = list(ctx.pages[:1])
                    while len(pages) < len(records):
                        pages.append(await ctx.new_page())
                    await asyncio.gather(
                        *(self._one(p, r, stop, on_record) for p, r in zip(pages, records, strict=True))
                    )
                finally:
                    if sampler is not None:
                        sampler.cancel()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(ctx.close(), 30)
        except Exception as exc:
            log.warning("browser %d failed: %s", self.index, _reason(exc))
            for r in records:
                if r.ended_at is None:  # its call never ran: the browser itself failed
                    r.dialed_at = r.dialed_at or time.time()
                    r.ended_at = time.time()
                    r.failure = r.failure or f"setup: browser: {_reason(exc)}"
                    await _emit(on_record, r)
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    async def _serve_page(self, ctx: Any) -> None:
        """caller.html / caller.js under the edge's origin, from this package, never the network."""
        files = {name: (PAGE_DIR / name).read_bytes() for name in ("caller.html", "caller.js")}
        types = {"html": "text/html; charset=utf-8", "js": "application/javascript; charset=utf-8"}

        async def handle(route: Any) -> None:
            name = urlsplit(route.request.url).path.rsplit("/", 1)[-1]
            if name not in files:
                await route.fulfill(status=404, body="not a loadtest page file")
                return
            content_type = types[name.rsplit(".", 1)[-1]]
            await route.fulfill(status=200, body=files[name], headers={"Content-Type": content_type})

        await ctx.route(self.url.rstrip("/") + PAGE_PREFIX + "*", handle)

    async def _one(
        self, page: Any, rec: SessionRecord, stop: asyncio.Event, on_record: OnRecord | None
    ) -> None:
        join = random.uniform(0, self.scenario.join) if self.scenario.join > 0 else 0.0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), join)
        if stop.is_set():
            rec.dialed_at = rec.ended_at = time.time()
            rec.failure = "setup: stopped before dialling"
            with contextlib.suppress(Exception):
                await page.close()
        else:
            call = BrowserCall(page, self.url, self.scenario, self.prompts, rec, stop, self.max_passes)
            call.before_close = self._sample  # the renderer's CPU, before it exits with the page
            self.live.append(rec.caller)
            try:
                await call.run()
            finally:
                self.live.remove(rec.caller)
            rec.caller_metrics.update(call.metrics())
        rec.caller_metrics.update(self._resources(rec))
        await _emit(on_record, rec)

    async def _sample_loop(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_EVERY_S)
            self._sample()

    def _sample(self) -> None:
        """Split the tree's CPU since the last sample evenly among the calls up now."""
        if self.usage is None:
            return
        *_, used = self.usage.sample()
        for caller in self.live:
            self.cpu_s[caller] = self.cpu_s.get(caller, 0.0) + used / len(self.live)

    def _resources(self, rec: SessionRecord) -> dict[str, float]:
        """The browser's memory (peak of its process tree, and at launch), what a page added (the
        tree's growth over its calls, per call), and this caller's share of the tree's CPU: the CPU
        of each sample period split evenly among the calls up then, over its call's length."""
        if self.usage is None:
            return {}
        u, pages = self.usage, max(1, self.pages)
        out = {
            "browser_rss_mb": round(u.peak_rss / MB, 1),
            "browser_pss_mb": round(u.peak_pss / MB, 1),
            "browser_base_pss_mb": round(u.base_pss / MB, 1),
            "page_rss_mb": round(max(0, u.peak_rss - u.base_rss) / pages / MB, 1),
            "page_pss_mb": round(max(0, u.peak_pss - u.base_pss) / pages / MB, 1),
            "pages_in_browser": float(pages),
            "cpu_s": round(self.cpu_s.get(rec.caller, 0.0), 3),
        }
        held = (rec.ended_at or time.time()) - rec.dialed_at
        if held > 0:
            out["cpu_core_share"] = round(out["cpu_s"] / held, 4)
        return out


async def _emit(on_record: OnRecord | None, rec: SessionRecord) -> None:
    if on_record is None:
        return
    try:
        res = on_record(rec)
        if inspect.isawaitable(res):
            await res
    except Exception:
        log.exception("on_record failed for %s", rec.caller)


# ---------------------------------------------------------------------------------------- the fleet


async def run_browser_callers(
    url: str,
    scenario: Scenario,
    count: int,
    pages_per_browser: int = 8,
    on_record: OnRecord | None = None,
    stop: asyncio.Event | None = None,
    *,
    shard: int = 0,
    prompts: dict[str, Prompt] | None = None,
    max_passes: int | None = None,
) -> list[SessionRecord]:
    """``count`` calls from ceil(count / pages_per_browser) Chromium processes against the edge at
    ``url``, each running ``scenario`` (``max_passes`` passes at most, else until ``session_s``);
    records come back in caller order, and to ``on_record`` (sync or async) as each call ends.
    ``prompts`` (``render_scenario``'s) saves rendering them here. Never raises for a failed call
    or browser: see each record's ``failure``."""
    if count <= 0:
        return []
    if pages_per_browser < 1:
        raise ValueError(f"pages_per_browser must be >= 1, got {pages_per_browser}")
    stop = stop or asyncio.Event()
    records = [
        SessionRecord(
            caller=f"browser-{i // pages_per_browser}-{i % pages_per_browser}",
            mode="browser", scenario=scenario.name, shard=shard,
        )
        for i in range(count)
    ]  # fmt: skip
    try:
        if prompts is None:
            prompts = await asyncio.to_thread(render_scenario, scenario)
        await asyncio.to_thread(warm_up)
    except Exception as exc:
        for r in records:
            r.dialed_at = r.ended_at = time.time()
            r.failure = f"setup: {_reason(exc)}"
            await _emit(on_record, r)
        return records
    n_browsers = math.ceil(count / pages_per_browser)
    browsers = [Browser(b, url, scenario, prompts, max_passes) for b in range(n_browsers)]
    await asyncio.gather(
        *(
            b.run(records[b.index * pages_per_browser : (b.index + 1) * pages_per_browser], stop, on_record)
            for b in browsers
        )
    )
    return records
