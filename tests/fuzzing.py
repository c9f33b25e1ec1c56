"""Shared pieces of the fuzz tests (``-m fuzz``): hypothesis settings and the per-target tally.

Examples per target: ``MICROTURN_FUZZ_EXAMPLES`` (default 60, so every target together stays well
under a few minutes in ``make test`` on two cores; ``make fuzz`` raises it). Each target prints how
many inputs it ran and, with ``MICROTURN_FUZZ_REPORT=path``, adds ``{target, inputs, seconds,
examples, outcomes}`` to that JSON list.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("MICROTURN_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no example database written into the checkout
    # one server (or app, or call) serves every example of a target: that is the point, not an accident
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@dataclass
class Tally:
    target: str
    inputs: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def saw(self, outcome: object) -> None:
        self.inputs += 1
        self.outcomes[str(outcome)] = self.outcomes.get(str(outcome), 0) + 1


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """Counts a target's inputs; at the end says how many ran, on the terminal and in the report."""
    t = Tally(request.node.name)
    yield t
    seconds = time.monotonic() - t.started
    line = f"fuzz {t.target}: {t.inputs} inputs in {seconds:.1f} s, outcomes {t.outcomes}"
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is not None:
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            reporter.write_line(line)
    report = os.environ.get("MICROTURN_FUZZ_REPORT")
    if report:
        path = Path(report)
        runs = json.loads(path.read_text()) if path.exists() and path.read_text().strip() else []
        runs.append(
            {"target": t.target, "inputs": t.inputs, "seconds": round(seconds, 2), "examples": EXAMPLES,
             "outcomes": t.outcomes}
        )  # fmt: skip
        path.write_text(json.dumps(runs, indent=1) + "\n")
    assert t.inputs >= min(EXAMPLES, 10), f"{t.target} ran only {t.inputs} inputs"
