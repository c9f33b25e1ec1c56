"""How many callers are on the line when: k6-style stages, the presets, sharding and the start plan.

A profile is a list of stages ``DURATION:TARGET``; over each stage the number of concurrent callers
moves linearly from the previous target (0 at the start) to the stage's target, rounded to the
nearest caller. ``targets(profile, t)`` is that number at ``t`` seconds into the run, and ``plan``
turns it into start/stop events for one shard, limited to a join rate. Everything here is pure
(no clock, no network), so the arithmetic is tested exactly."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

PRESETS = ("smoke", "ramp", "step", "soak", "spike")
TICK_S = 0.05  # the planner's resolution


class ProfileError(ValueError):
    """A stage list, preset option, shard or rate that cannot be used (CLI: EXIT_CONFIG)."""


@dataclass(frozen=True)
class Stage:
    duration_s: float
    target: int


@dataclass(frozen=True)
class Profile:
    """Stages, and whether each caller makes exactly one call (smoke) instead of redialling."""

    name: str
    stages: tuple[Stage, ...]
    once: bool = False
    notes: dict[str, float] = field(default_factory=dict)  # e.g. the step hold, for the report

    @property
    def duration_s(self) -> float:
        return sum(s.duration_s for s in self.stages)

    @property
    def peak(self) -> int:
        return max((s.target for s in self.stages), default=0)

    def describe(self) -> str:
        return f"{self.name}: " + ",".join(f"{_fmt_s(s.duration_s)}:{s.target}" for s in self.stages)


@dataclass(frozen=True)
class Shard:
    """This generator's part of a run split across ``count`` machines (``--shard index/count``)."""

    index: int = 0
    count: int = 1

    def share(self, level: int) -> int:
        """This shard's callers of ``level``: level // count, plus one for the first level % count."""
        return level // self.count + (1 if self.index < level % self.count else 0)


@dataclass(frozen=True)
class Event:
    at: float  # seconds after the run's start
    action: Literal["start", "stop"]
    slot: int  # a caller slot: it dials, calls, hangs up, and dials again until stopped


def _fmt_s(s: float) -> str:
    return f"{s:g}s"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``1.5m``, ``2h``, ``500ms`` -> seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ProfileError(f"not a duration: {text!r} (use e.g. 30s, 2m, 1h)")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def parse_stages(text: str) -> tuple[Stage, ...]:
    """``30s:10,60s:10,30s:0`` -> stages (ramp to 10 over 30 s, hold 60 s, ramp down over 30 s)."""
    stages = []
    for i, part in enumerate(text.split(",")):
        dur, sep, target = part.partition(":")
        if not sep:
            raise ProfileError(f"--stages item {i + 1} {part!r}: expected DURATION:TARGET, e.g. 30s:10")
        try:
            n = int(target)
        except ValueError:
            raise ProfileError(
                f"--stages item {i + 1} {part!r}: target {target!r} is not a whole number"
            ) from None
        if n < 0:
            raise ProfileError(f"--stages item {i + 1} {part!r}: target must be >= 0")
        try:
            d = parse_duration(dur)
        except ProfileError as exc:
            raise ProfileError(f"--stages item {i + 1}: {exc}") from None
        stages.append(Stage(d, n))
    if not stages or sum(s.duration_s for s in stages) <= 0:
        raise ProfileError("--stages: the stages must last longer than 0 s in total")
    return tuple(stages)


def parse_shard(text: str) -> Shard:
    """``i/N`` with 0 <= i < N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise ProfileError(f"--shard {text!r}: expected INDEX/COUNT, e.g. 0/4")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or i >= n:
        raise ProfileError(f"--shard {text!r}: need 0 <= INDEX < COUNT")
    return Shard(i, n)


def parse_rate(text: str) -> float:
    """``5/s``, ``30/m``, ``2`` (per second) -> callers started per second."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|m|min))?\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise ProfileError(f"--join-rate {text!r}: expected a positive rate, e.g. 5/s or 60/m")
    return float(m.group(1)) / (60.0 if m.group(2) in ("m", "min") else 1.0)


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ProfileError(f"--step-levels {text!r}: expected whole numbers, e.g. 2,4,8") from None
    if not levels or any(n < 1 for n in levels):
        raise ProfileError(f"--step-levels {text!r}: at least one level, each >= 1")
    return levels


def targets(profile: Profile, t: float) -> int:
    """Concurrent callers wanted ``t`` seconds into the run (0 before it starts and after it ends)."""
    if t < 0 or t > profile.duration_s:
        return 0
    level = 0.0
    start = 0.0
    for stage in profile.stages:
        end = start + stage.duration_s
        if t < end or (t == end and stage is profile.stages[-1]):
            frac = (t - start) / stage.duration_s if stage.duration_s > 0 else 1.0
            return math.floor(level + (stage.target - level) * frac + 0.5)
        level, start = float(stage.target), end
    return int(level)


def plan(
    profile: Profile, shard: Shard = Shard(), join_rate: float | None = None, tick_s: float = TICK_S
) -> Iterator[Event]:
    """Start/stop events for one shard, in time order. Stops take the newest caller first; starts
    are spaced at least 1/join_rate apart (the rate is global: each shard takes rate / count). At
    the end every remaining caller is stopped."""
    if join_rate is not None and join_rate <= 0:
        raise ProfileError("join rate must be > 0")
    gap = shard.count / join_rate if join_rate else 0.0
    active: list[int] = []
    next_slot = 0
    next_start = 0.0
    steps = math.ceil(profile.duration_s / tick_s - 1e-9)
    for k in range(steps + 1):
        t = min(round(k * tick_s, 9), profile.duration_s)
        want = shard.share(targets(profile, t)) if k < steps else 0
        while len(active) > want:
            yield Event(t, "stop", active.pop())
        while len(active) < want and next_start <= t + 1e-9:
            yield Event(t, "start", next_slot)
            active.append(next_slot)
            next_slot += 1
            next_start = t + gap
    while active:
        yield Event(profile.duration_s, "stop", active.pop())


def constant(callers: int, duration_s: float, name: str = "constant") -> Profile:
    """``callers`` from the start for ``duration_s`` (what a test wants)."""
    return Profile(name, (Stage(0.0, callers), Stage(duration_s, callers)))


def preset(
    name: str,
    callers: int = 10,
    duration_s: float = 300.0,
    step_levels: list[int] | None = None,
    step_hold_turns: int = 3,
    turn_s: float = 8.0,
    setup_s: float = 5.0,
    smoke_s: float = 60.0,
) -> Profile:
    """A named profile. ``turn_s`` is the scenario's estimated seconds per turn (the runner computes
    it), so ``step`` holds each level long enough for ``step_hold_turns`` turns of every session
    started at that level (plus ``setup_s`` to dial); ``smoke_s`` bounds the smoke's one call."""
    if callers < 1:
        raise ProfileError("--callers must be at least 1")
    if duration_s <= 0:
        raise ProfileError("--duration must be > 0")
    d = duration_s
    if name == "smoke":
        return Profile("smoke", (Stage(0.0, 1), Stage(smoke_s, 1)), once=True)
    if name == "ramp":
        return Profile("ramp", (Stage(d * 0.25, callers), Stage(d * 0.5, callers), Stage(d * 0.25, 0)))
    if name == "soak":
        up = min(60.0, d * 0.1)
        return Profile("soak", (Stage(up, callers), Stage(d - up, callers)))
    if name == "spike":
        base = max(1, callers // 10)
        up, jump = min(10.0, d * 0.1), min(5.0, d * 0.05)
        head = (
            Stage(up, base),
            Stage(d * 0.3, base),
            Stage(jump, callers),
            Stage(d * 0.2, callers),
            Stage(jump, base),
        )
        return Profile("spike", (*head, Stage(d - sum(s.duration_s for s in head), base)))
    if name == "step":
        levels = step_levels or [max(1, callers // 4), max(1, callers // 2), callers]
        if step_hold_turns < 1:
            raise ProfileError("--step-hold-turns must be at least 1")
        hold = setup_s + step_hold_turns * turn_s
        stages: list[Stage] = []
        for n in levels:
            stages += [Stage(0.0, n), Stage(hold, n)]
        return Profile("step", tuple(stages), notes={"hold_s": hold, "hold_turns": step_hold_turns})
    raise ProfileError(f"unknown profile {name!r} (choose from {', '.join(PRESETS)})")


def level_spans(profile: Profile) -> list[tuple[float, float, int]]:
    """(start, end, level) of each stage that holds a level (its start and target are equal): the
    windows a report or SLO looks at per level."""
    spans = []
    start, level = 0.0, 0
    for s in profile.stages:
        if s.duration_s > 0 and s.target == level:
            spans.append((start, start + s.duration_s, level))
        start += s.duration_s
        level = s.target
    return spans


def start_wait(start_at: float | None, now: float) -> tuple[float, float]:
    """(seconds to wait, seconds late) for ``--start-at``: every shard sleeps until the common
    epoch second, so their plans line up; a shard that is already past it starts at once and says
    by how much it is late (its load is shifted by that much)."""
    if start_at is None:
        return 0.0, 0.0
    return max(0.0, start_at - now), max(0.0, now - start_at)


def wall_times(events: list[Event], t0: float) -> list[tuple[float, Event]]:
    """Each event at its wall time, for a run that started (or will start) at epoch ``t0``."""
    return [(t0 + e.at, e) for e in events]
