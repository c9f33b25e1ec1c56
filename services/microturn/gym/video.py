"""Procedural video: coloured shapes on a textured background, one 80×80 frame per micro-turn.

A shape's position is a function of time, so tasks can say exactly when something starts moving,
stops, appears or completes a repetition; the frame of chunk k shows the scene at the chunk's end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from microturn.gym.layout import CHUNK_MS, FRAME_SIZE

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 230),
    "yellow": (230, 210, 40),
    "white": (235, 235, 235),
    "purple": (160, 60, 200),
}
SHAPES = ("circle", "square", "triangle")

# (x, y) centre in pixels, or None when the shape is not visible, at time t (ms).
Trajectory = Callable[[float], tuple[float, float] | None]


@dataclass
class Shape:
    kind: str
    color: str
    size: int
    path: Trajectory

    def __post_init__(self) -> None:
        if self.kind not in SHAPES:
            raise ValueError(f"unknown shape {self.kind!r}; expected one of {SHAPES}")
        if self.color not in COLORS:
            raise ValueError(f"unknown color {self.color!r}; expected one of {sorted(COLORS)}")


@dataclass
class Scene:
    background: tuple[int, int, int]
    texture_seed: int
    shapes: list[Shape] = field(default_factory=list)

    def frame(self, t_ms: float) -> np.ndarray:
        """The scene at time ``t_ms`` as uint8 [80, 80, 3]."""
        rng = np.random.default_rng(self.texture_seed)
        img = np.empty((FRAME_SIZE, FRAME_SIZE, 3), dtype=np.float32)
        img[:] = self.background
        img += rng.normal(0, 6, size=img.shape).astype(np.float32)
        yy, xx = np.mgrid[0:FRAME_SIZE, 0:FRAME_SIZE].astype(np.float32)
        for shape in self.shapes:
            pos = shape.path(t_ms)
            if pos is None:
                continue
            cx, cy = pos
            r = shape.size / 2
            if shape.kind == "circle":
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            elif shape.kind == "square":
                mask = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
            else:
                mask = (yy >= cy - r) & (yy <= cy + r) & (np.abs(xx - cx) <= (yy - (cy - r)) / 2)
            img[mask] = COLORS[shape.color]
        return np.clip(img, 0, 255).astype(np.uint8)

    def render(self, num_chunks: int) -> np.ndarray:
        """uint8 [num_chunks, 1, 80, 80, 3]; the frame of chunk k is the scene at its end."""
        return np.stack([self.frame((k + 1) * CHUNK_MS)[None] for k in range(num_chunks)])


def frame_chunk(t_ms: float) -> int:
    """The first chunk whose frame (taken at the chunk's end) is later than ``t_ms``."""
    return int(t_ms // CHUNK_MS)


def still(x: float, y: float) -> Trajectory:
    return lambda t: (x, y)


def drift(x: float, y: float, vx: float, vy: float) -> Trajectory:
    """Slow idle motion (px/s) bouncing off the frame edges, for scenes with nothing to watch."""

    def path(t: float) -> tuple[float, float]:
        return (_bounce(x + vx * t / 1000), _bounce(y + vy * t / 1000))

    return path


def _bounce(v: float, lo: float = 12, hi: float = FRAME_SIZE - 12) -> float:
    span = hi - lo
    v = (v - lo) % (2 * span)
    return lo + (v if v <= span else 2 * span - v)


def oscillate(
    x: float, y: float, start_ms: float, period_ms: float, reps: int, amplitude: float
) -> Trajectory:
    """Rest at (x, y), then ``reps`` up-and-back bounces of ``period_ms`` each from ``start_ms``."""

    def path(t: float) -> tuple[float, float]:
        if t <= start_ms or t >= start_ms + reps * period_ms:
            return (x, y)
        phase = (t - start_ms) / period_ms
        return (x, y - amplitude * np.sin(np.pi * (phase % 1.0)))

    return path


def move_between(
    x: float, y: float, start_ms: float, stop_ms: float, speed: float, heading: float
) -> Trajectory:
    """Still, then moving at ``speed`` px/s along ``heading`` (radians) with wall bounces, then still."""

    def path(t: float) -> tuple[float, float]:
        moving = min(max(t, start_ms), stop_ms) - start_ms
        d = speed * moving / 1000
        return (_bounce(x + d * np.cos(heading)), _bounce(y + d * np.sin(heading)))

    return path


def appear(x: float, y: float, from_ms: float, until_ms: float = float("inf")) -> Trajectory:
    return lambda t: (x, y) if from_ms <= t < until_ms else None
