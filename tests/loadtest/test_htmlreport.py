"""The HTML report: one offline file, checked in headless Chromium (images load, plots are not
blank, a failing gate shows as failing) and for its size on a ten-minute run."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest

from loadtest.htmlreport import render, worst_sessions, write_report
from loadtest.results import RunResult, build

from ..need import need
from .test_results import T0, make_session

CHROMIUM = "/usr/bin/chromium"
MAX_BYTES = 1_500_000
LEVELS = (10, 20, 30, 40)
STEP_S = 150.0  # four steps: a ten-minute run
GATES = ["turn_latency.p95<500ms", "setup.p99<3s", "call_fail_rate<5%", "audio_gap.max<2s"]


def ten_minute_run(overloaded: bool = False) -> RunResult:
    """A step profile 10/20/30/40 callers whose turn latency grows with the load and whose top
    step drops calls, with generator and target samples every second."""
    rng = np.random.default_rng(3)
    sessions, steps = [], []
    for k, level in enumerate(LEVELS):
        start = STEP_S * k
        steps.append({"level": level, "started_at": T0 + start, "ended_at": T0 + start + STEP_S})
        for i in range(level // 2):  # level // 2 calls per step, each as long as the step
            lat = tuple(rng.lognormal(np.log(250 + 120 * k), 0.35, 30).round(1))
            s = make_session(
                1000 * k + i, dial=start + rng.uniform(0, 10), latencies=lat, length=STEP_S - 15,
                failure="dropped" if k == 3 and i % 4 == 0 else "", gaps=tuple(rng.uniform(100, 400, 3)),
                packets=(7000, int(rng.integers(0, 140))), samples=(6_000_000, int(rng.integers(0, 90_000))),
            )  # fmt: skip
            sessions.append(s)
        sessions.append(make_session(1000 * k + 999, dial=start + 1, connected=False))
    n = int(STEP_S * len(LEVELS))
    gen = [
        {
            "at": T0 + t,
            "cpu_pct": 20 + 15 * (t // STEP_S) + rng.uniform(0, 5),
            "loop_lag_ms": rng.uniform(1, 8),
        }
        for t in range(n)
    ]
    tgt = [
        {
            "at": T0 + t,
            "edge_sessions": (t // STEP_S + 1) * 5,
            "tick_ms_p95": 40 + t / 20,
            "deadline_misses": t // 60,
        }
        for t in range(n)
    ]
    generator = {
        "cores": 2,
        **({"overloaded": True, "reason": "event loop lag 340 ms"} if overloaded else {}),
    }
    return build(sessions, {"profile": "step", "scenario": "smoke", "mode": "aiortc"},
                 target={"url": "http://edge.test:8080"}, started_at=T0, ended_at=T0 + n,
                 generator=generator, generator_samples=gen, target_samples=tgt, steps=steps, slos=GATES)  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[RunResult, Path]:
    """One overloaded ten-minute run's report, shared (rendering the plots takes a few seconds)."""
    r = ten_minute_run(overloaded=True)
    return r, write_report(r, tmp_path_factory.mktemp("report") / "report.html")


def test_report_is_small_and_has_every_section(report):
    r, path = report
    text = path.read_text()
    size = path.stat().st_size
    print(f"report of a {r.duration_s:.0f} s run, {len(r.sessions)} sessions: {size / 1e6:.2f} MB")
    assert size < MAX_BYTES
    assert text.count("<img ") == 4 and text.count('src="data:image/png;base64,') == 4
    for ident in (
        "slo",
        "latency",
        "steps",
        "worst",
        "plot-percentiles",
        "plot-cdf",
        "plot-timeline",
        "plot-capacity",
    ):
        assert f'id="{ident}"' in text, ident
    assert 'id="overloaded"' in text and "event loop lag 340 ms" in text
    assert "http://edge.test:8080" in text and "tiny-1" in text
    assert "<script" not in text and "<link" not in text  # nothing to fetch, nothing to run
    assert 'data-gate="turn_latency.p95&lt;500ms" data-passed="false"' in text
    assert 'data-gate="setup.p99&lt;3s" data-passed="true"' in text
    assert "sessions at SLO: 10" in text  # step p95s ~450 / 660 / 870 / 1090 ms against 500 ms


def test_report_without_steps_or_data_still_renders():
    empty = render(build([], {}))
    assert "No latencies were measured." in empty and "No gates were given" in empty
    assert 'id="plot-capacity"' not in empty and 'id="overloaded"' not in empty
    one = render(build([make_session(0, latencies=(300, 450))], {}, slos=["turn_latency.p95<400ms"]))
    assert 'id="plot-percentiles"' in one and 'id="plot-capacity"' not in one
    assert 'data-passed="false"' in one and ">FAIL<" in one
    assert "aiortc-0-0" in one


def test_worst_sessions_put_failures_first_then_the_slowest():
    rows = [
        {"caller": "a", "failure": "", "turn_p95_ms": 300.0},
        {"caller": "b", "failure": "", "turn_p95_ms": None},
        {"caller": "c", "failure": "dropped", "turn_p95_ms": 100.0},
        {"caller": "d", "failure": "", "turn_p95_ms": 900.0},
    ]
    assert [r["caller"] for r in worst_sessions(rows)] == ["c", "d", "a", "b"]
    assert [r["caller"] for r in worst_sessions(rows, n=2)] == ["c", "d"]


def _variance(png: bytes) -> tuple[float, int]:
    """Grey-level variance and number of distinct colours of a PNG."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    a = np.asarray(img).astype(np.uint32)
    packed = (a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]
    return float(a.mean(axis=2).var()), len(np.unique(packed))


async def test_report_in_headless_chromium(report):
    need(
        ([] if Path(CHROMIUM).exists() else [CHROMIUM])
        + ([] if importlib.util.find_spec("playwright") else ["playwright"]),
        "make system-deps installs Debian's chromium; pip install -e .[dev] installs playwright",
    )
    from playwright.async_api import async_playwright

    _, path = report
    requests: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=False,
            args=["--headless", "--no-sandbox", "--disable-gpu"],
            timeout=30_000,
        )
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda req: requests.append(req.url))
            await page.goto(path.as_uri(), wait_until="load")
            images = await page.evaluate(
                "() => [...document.images].map(i => ({id: i.id, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}))"
            )
            assert [i["id"] for i in images] == [
                "plot-percentiles",
                "plot-cdf",
                "plot-timeline",
                "plot-capacity",
            ]
            assert all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in images), images
            for i in images:
                var, colours = _variance(await page.locator(f"#{i['id']}").screenshot())
                assert var > 50 and colours > 20, (i["id"], var, colours)  # drawn, not a uniform image
            var, colours = _variance(await page.screenshot(full_page=True))
            assert var > 50 and colours > 50, (var, colours)
            rows = await page.evaluate(
                "() => [...document.querySelectorAll('#slo tr[data-gate]')].map(r => ({gate: r.dataset.gate,"
                " result: r.querySelector('td.v').textContent, colour: getComputedStyle(r.querySelector('td.v')).backgroundColor}))"
            )
            by = {r["gate"]: r for r in rows}
            assert set(by) == set(GATES)
            assert by["turn_latency.p95<500ms"]["result"] == "FAIL"
            assert by["setup.p99<3s"]["result"] == "PASS"
            assert by["turn_latency.p95<500ms"]["colour"] != by["setup.p99<3s"]["colour"]
            assert await page.locator("#overloaded").is_visible()  # the banner says the run is invalid
        finally:
            await browser.close()
    assert requests and all(u.startswith(("file:", "data:")) for u in requests), requests
