"""The real browser client in real headless Chromium, against the real edge and interaction core.

Chromium's fake devices stand in for the user: the microphone plays a WAV (silence, espeak-ng
speech, silence, looped) and the camera shows its moving test pattern. The page is driven through
its ``window.microturn`` hook and its form controls; the model's side is read from the
``edge_stack`` fixture's record of every chunk the engine stepped.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ..need import need
from .browser_media import CHROMIUM, chromium_args, make_speech_wav, missing_tools, rms, runs
from .conftest import wait_until

TYPED = "hello from chromium"
QUIET_RMS = 100.0  # int16 RMS: Opus-coded digital silence stays far below this
LOUD_RMS = 1000.0  # espeak-ng speech at full scale sits well above it

pytestmark = pytest.mark.slow

# One consistent read of what the page holds (events keep arriving between separate reads).
SNAPSHOT = """() => ({
  stats: window.microturn.stats(),
  events: window.microturn.events,
  captions: document.querySelector('#captions').textContent,
  counter: Number(document.querySelector('#stat-chunks').textContent),
})"""


@pytest.fixture
def speech_wav(tmp_path):
    need(missing_tools(), "make system-deps installs them")
    return make_speech_wav(tmp_path)


async def wait_page(page, expr: str, what: str, console: list[str], timeout_ms: int = 30_000) -> None:
    """page.wait_for_function, failing with what the page saw so far."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    try:
        await page.wait_for_function(expr, timeout=timeout_ms)
    except PlaywrightTimeout:
        seen = await page.evaluate(SNAPSHOT)
        seen["events"] = [*seen["events"][:15], "...", *seen["events"][-15:]]
        seen["state"] = await page.evaluate("() => window.microturn.state")
        raise AssertionError(
            f"timed out waiting for {what}: {json.dumps(seen)} console={console[-20:]}"
        ) from None


async def test_browser_call(edge_stack, speech_wav, tmp_path):
    from playwright.async_api import async_playwright

    inputs = edge_stack.inputs
    console: list[str] = []
    async with async_playwright() as pw:
        ctx = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a new, empty user-data-dir
            executable_path=CHROMIUM,
            headless=False,  # headless comes from --headless=new in the args
            args=chromium_args(speech_wav.path),
            viewport={"width": 1280, "height": 900},
            timeout=30_000,
        )
        try:
            page = ctx.pages[0] if ctx.pages else await ctx.new_page()
            page.set_default_timeout(30_000)
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            await page.goto(edge_stack.url + "/")
            assert await page.title() == "microturn"

            # Start as a user would: camera on; echo cancellation off, as with headphones. (With it
            # on, Chromium's echo canceller silences the fake mic while the model's voice plays
            # into the fake speaker, and the model would get no speech to check.)
            await page.check("#camera")
            await page.uncheck("#echo")
            await page.click("#start")
            await wait_page(page, "() => window.microturn.session !== null", "a session", console)
            sid = await page.evaluate("() => window.microturn.session.session_id")
            await wait_page(page, "() => window.microturn.state === 'live' && window.microturn.chunks >= 5",
                            "the call to go live", console)  # fmt: skip
            await wait_until(lambda: len(inputs[sid]) >= 10, 30, "10 chunks at the model")

            # Type through the page's own form, like a user.
            await wait_page(
                page, "() => !document.querySelector('#send').disabled", "Send to enable", console
            )
            await page.fill("#text", TYPED)
            await page.click("#send")
            sent_at = len(inputs[sid])
            await wait_until(lambda: len(inputs[sid]) >= sent_at + 20, 30, "4 s more at the model")
            await wait_page(page, "() => window.microturn.stats().inboundAudio.packetsReceived > 0",
                            "audio back in the page's stats", console)  # fmt: skip

            if os.environ.get("MICROTURN_SCREENSHOT"):
                await page.screenshot(path=os.environ["MICROTURN_SCREENSHOT"], full_page=True)
            seen = await page.evaluate(SNAPSHOT)
            stats, events = seen["stats"], seen["events"]

            # Stop: the page DELETEs the session and closes its data channel and peer connection
            # (before the browser goes away).
            await page.click("#stop")
            await wait_page(page, "() => window.microturn.state === 'closed'", "the stop", console)
            assert await page.is_enabled("#start") and await page.is_disabled("#send")
            deleted = [
                e for e in await page.evaluate("() => window.microturn.events") if e.get("kind") == "deleted"
            ]
        finally:
            await ctx.close()

    await wait_until(lambda: sid not in edge_stack.edge.sessions, 10, "the edge to release the session")
    assert edge_stack.edge.sessions == {}
    assert [e["detail"]["status"] for e in deleted] == [204]
    assert not [c for c in console if c.startswith("pageerror")], console

    chunks = list(inputs[sid])
    energies = [round(rms(c.pcm)) for c in chunks]
    diag = json.dumps({"energies": energies, "stats": stats, "console": console[-20:]})

    # (a) the model got consecutive micro-turns 0..k
    assert [c.chunk_index for c in chunks] == list(range(len(chunks))), diag
    assert all(c.pcm.shape == (3200,) and c.pcm.dtype == np.int16 for c in chunks)

    # (b) speech lands where the file has it: quiet runs (the 1 s lead-in / tail, looped), then
    # speech well above them. Align on the energy envelope: the loop's phase is unknown.
    e = np.array(energies[1:], dtype=float)  # chunk 0 is front-padded (the call began mid-chunk)
    loud, quiet = e > LOUD_RMS, e < QUIET_RMS
    assert loud.any() and quiet.any(), diag
    onsets = [
        s for v, s, n in runs(quiet) if v and n >= 4 and s + n < len(e) and loud[s + n : s + n + 2].any()
    ]
    assert onsets, f"no quiet lead-in (>= 4 chunks) followed by speech: {diag}"
    # a speech run is no longer than the spoken part of the file (+2: it can straddle chunk edges)
    longest = max(n for v, _, n in runs(e >= QUIET_RMS) if v)
    assert longest <= round(speech_wav.speech_s / 0.2) + 2, diag

    # (c) the camera arrived: 80x80 RGB frames with content, changing over time
    frames = [f for c in chunks if c.video is not None for f in c.video]
    assert len(frames) >= 5, diag
    assert all(f.shape == (80, 80, 3) and f.dtype == np.uint8 for f in frames)
    assert all(f.std() > 1.0 for f in frames), "constant frames"
    assert any(not np.array_equal(frames[0], f) for f in frames[1:]), "the camera picture never changed"

    # (d) the typed text reached the model, once
    assert sum(t == TYPED for c in chunks for t in c.text) == 1, [c.text for c in chunks if c.text]

    # (e) the model's voice came back over WebRTC without loss, and the page measured the link
    assert stats["inboundAudio"]["packetsReceived"] > 0 and stats["inboundAudio"]["packetsLost"] == 0, diag
    assert stats["outboundAudio"]["packetsSent"] > 0 and stats["outboundVideo"]["packetsSent"] > 0, diag
    assert stats["currentRoundTripTime"] is not None and stats["inboundAudio"]["jitter"] is not None, diag

    # (f) the data channel carried state, per-chunk and caption events, and the page showed them
    states = [ev["state"] for ev in events if ev["type"] == "state"]
    assert "live" in states, states
    out_chunks = [ev["chunk"] for ev in events if ev["type"] == "chunk"]
    assert len(out_chunks) >= 20 and out_chunks == list(range(out_chunks[0], out_chunks[0] + len(out_chunks)))
    assert {ev["model_version"] for ev in events if ev["type"] == "chunk"} == {"tiny-test"}
    assert seen["counter"] == len(out_chunks)  # the on-screen counter
    captions = [ev for ev in events if ev["type"] == "caption"]
    assert all(ev["text"] and ev["chunk"] in out_chunks for ev in captions), captions
    assert seen["captions"] == "".join(ev["text"] for ev in captions)[-4000:]


@pytest.mark.parametrize("edge_stack", [{"max_sessions": 1}], indirect=True)
async def test_browser_waits_while_edge_full(edge_stack, speech_wav, tmp_path):
    """A full edge answers 503 + Retry-After; the page says so, retries, and gets in once a slot frees."""
    import httpx
    from playwright.async_api import async_playwright

    async with httpx.AsyncClient(base_url=edge_stack.url) as http:
        resp = await http.post("/api/sessions")
        assert resp.status_code == 201
        filler = resp.json()
        full = await http.post("/api/sessions")
        assert full.status_code == 503  # the edge is full now
        retry_after = int(full.headers["Retry-After"])

        console: list[str] = []
        async with async_playwright() as pw:
            ctx = await pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=CHROMIUM, headless=False,
                args=chromium_args(speech_wav.path), timeout=30_000,
            )  # fmt: skip
            try:
                page = ctx.pages[0] if ctx.pages else await ctx.new_page()
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                await page.goto(edge_stack.url + "/")
                await page.uncheck("#echo")
                await page.click("#start")
                await wait_page(
                    page, "() => window.microturn.state === 'waiting'", "the page to wait", console
                )
                status = await page.inner_text("#status")
                assert "Server full, retrying in" in status, status
                assert await page.is_disabled("#start") and await page.is_enabled("#stop")

                # free the slot: the page's next retry gets it and the call goes live
                resp = await http.delete(f"/api/sessions/{filler['session_id']}",
                                         headers={"Authorization": f"Bearer {filler['token']}"})  # fmt: skip
                assert resp.status_code == 204
                await wait_page(page, "() => window.microturn.state === 'live' && window.microturn.chunks >= 1",
                                "the call to go live after the retry", console)  # fmt: skip
                sid = await page.evaluate("() => window.microturn.session.session_id")
                assert sid != filler["session_id"]
                events = await page.evaluate("() => window.microturn.events")
                retries = [e["detail"] for e in events if e.get("kind") == "retry"]
                assert retries and all(r["wait_s"] >= retry_after for r in retries), retries
                await page.click("#stop")
                await wait_page(page, "() => window.microturn.state === 'closed'", "the stop", console)
            finally:
                await ctx.close()
    await wait_until(lambda: not edge_stack.edge.sessions, 10, "the edge to release the session")
