"""What a synthetic caller does in one call, read from a YAML scenario file.

A scenario is a list of turns played in order and repeated until the call has lasted ``session_s``:
each turn is spoken (``say``: text rendered by espeak-ng, or ``audio``: a WAV file) or typed
(``text``: sent on the data channel), and starts at a fixed time into the pass (``at_s``), a pause
after the model's answer to the previous turn began (``after_answer_s``, default ``think_s``), or
``barge_in_ms`` into that answer (talking over the model, to measure how fast it yields).

Validation errors name the field (``turns[1].barge_in_ms: ...``) so a bad file is fixed in one go;
the CLI turns a ScenarioError into exit code 2 (EXIT_CONFIG)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCENARIO_DIR = Path(__file__).parent / "scenarios"
TurnKind = Literal["speech", "text", "barge_in"]


class ScenarioError(ValueError):
    """A scenario that cannot be read or does not validate; the message names file and field."""


class Turn(BaseModel):
    """One thing the caller says or types, and when."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    say: str | None = Field(None, min_length=1, description="text spoken into the mic (espeak-ng)")
    audio: Path | None = Field(None, description="a WAV file played into the mic (relative to the YAML)")
    text: str | None = Field(None, min_length=1, description="a message typed on the data channel")
    at_s: float | None = Field(None, ge=0, description="start this long after the pass began")
    after_answer_s: float | None = Field(
        None, ge=0, description="start this long after the answer to the previous turn began"
    )
    barge_in_ms: float | None = Field(None, gt=0, description="start this far into the previous answer")

    @model_validator(mode="after")
    def _one_of_each(self) -> Turn:
        what = [k for k in ("say", "audio", "text") if getattr(self, k) is not None]
        if len(what) != 1:
            raise ValueError(f"a turn needs exactly one of say, audio, text (got {what or 'none'})")
        when = [k for k in ("at_s", "after_answer_s", "barge_in_ms") if getattr(self, k) is not None]
        if len(when) > 1:
            raise ValueError(f"a turn takes at most one of at_s, after_answer_s, barge_in_ms (got {when})")
        if self.barge_in_ms is not None and self.text is not None:
            raise ValueError("barge_in_ms needs a spoken turn (say or audio): typing cannot talk over")
        return self

    @property
    def kind(self) -> TurnKind:
        if self.text is not None:
            return "text"
        return "barge_in" if self.barge_in_ms is not None else "speech"

    @property
    def spoken(self) -> bool:
        return self.text is None


class Scenario(BaseModel):
    """A whole call: its length, pacing, and the turns repeated until it ends."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    session_s: float = Field(gt=0, description="call length, dial to hangup")
    think_s: float = Field(2.0, ge=0, description="default pause after an answer began")
    join: float = Field(0.0, ge=0, description="each caller starts after a random 0..join s delay")
    answer_timeout_s: float = Field(10.0, gt=0, description="a turn without an answer by then has none")
    turns: list[Turn] = Field(min_length=1)
    video: bool = Field(False, description="browser callers also send a fake camera")

    @model_validator(mode="after")
    def _first_turn_not_barge_in(self) -> Scenario:
        if self.turns[0].barge_in_ms is not None:
            raise ValueError("turns[0] cannot barge in: there is no previous answer to talk over")
        return self

    def audio_paths(self) -> list[Path]:
        return [t.audio for t in self.turns if t.audio is not None]


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def format_errors(exc: ValidationError) -> str:
    """Pydantic's errors as ``field: message`` lines, the field spelled as in the YAML."""
    lines = []
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"  {_loc(tuple(err['loc']))}: {msg}")
    return "\n".join(lines)


def parse_scenario(data: object, source: str = "<scenario>", base_dir: Path | None = None) -> Scenario:
    """Validate already-parsed YAML; relative ``audio`` paths are taken from ``base_dir``."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario is a mapping (name, session_s, turns, ...)")
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"{source}: invalid scenario:\n{format_errors(exc)}") from None
    if base_dir is not None:
        turns = [
            t.model_copy(update={"audio": base_dir / t.audio})
            if t.audio is not None and not t.audio.is_absolute()
            else t
            for t in sc.turns
        ]
        sc = sc.model_copy(update={"turns": turns})
    for i, t in enumerate(sc.turns):
        if t.audio is not None and not t.audio.is_file():
            raise ScenarioError(f"{source}: invalid scenario:\n  turns[{i}].audio: no such file {t.audio}")
    return sc


def resolve(path_or_name: str) -> Path:
    """A path to a YAML file, or the name of a shipped scenario (``smoke``, ``barge_in``)."""
    p = Path(path_or_name)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise ScenarioError(f"scenario file not found: {p}")
        return p
    shipped = SCENARIO_DIR / f"{path_or_name}.yaml"
    if shipped.is_file():
        return shipped
    raise ScenarioError(
        f"unknown scenario {path_or_name!r}: not a file, and not a shipped one ({', '.join(shipped_names())})"
    )


def shipped_names() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def load_scenario(path_or_name: str) -> Scenario:
    """Read and validate a scenario file (or a shipped scenario by name)."""
    path = resolve(path_or_name)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from None
    return parse_scenario(data, str(path), path.parent)


def turn_start(
    turn: Turn, sc: Scenario, pass_start: float, prev_onset: float | None, prev_done: float
) -> float:
    """When a turn starts (wall time), the same for every caller mode: ``at_s`` into the pass,
    ``barge_in_ms`` into the previous answer, or ``after_answer_s`` (default ``think_s``) after it
    began. Without a previous answer to go by (none came, or the first turn of a pass) it counts
    from ``prev_done``, when the wait for that answer ended (the pass's start for its first turn)."""
    if turn.at_s is not None:
        return pass_start + turn.at_s
    if turn.barge_in_ms is not None:
        return prev_onset + turn.barge_in_ms / 1000 if prev_onset is not None else prev_done
    pause = turn.after_answer_s if turn.after_answer_s is not None else sc.think_s
    return (prev_onset if prev_onset is not None else prev_done) + pause


SPOKEN_WORDS_PER_S = 2.5  # espeak-ng at 150 words per minute
ASSUMED_LATENCY_S = 1.0


def estimate_turn_s(sc: Scenario) -> float:
    """Rough seconds per turn (speech, an assumed 1 s answer latency, the pause before the next
    turn), without rendering audio: what a step profile's hold is sized from. An estimate only;
    the run records how many turns each level really had."""
    total = 0.0
    prev_at = 0.0
    for t in sc.turns:
        words = len((t.say or t.text or "x x x").split())
        speech = words / SPOKEN_WORDS_PER_S if t.spoken else 0.0
        if t.at_s is not None:
            pause = max(0.0, t.at_s - prev_at)
            prev_at = t.at_s
        elif t.barge_in_ms is not None:
            pause = t.barge_in_ms / 1000
        else:
            pause = t.after_answer_s if t.after_answer_s is not None else sc.think_s
        total += speech + ASSUMED_LATENCY_S + pause
    return total / len(sc.turns)


async def play_until(
    script: Awaitable[None], ended: asyncio.Event, stop: asyncio.Event, seconds: float
) -> None:
    """Run a call's turn script until it finishes, the call ends (``ended``), the run stops (``stop``)
    or ``seconds`` pass, whichever is first; re-raise what the script raised. The same call-length
    rule in every caller mode."""
    task = asyncio.ensure_future(script)
    waits = [task, asyncio.ensure_future(ended.wait()), asyncio.ensure_future(stop.wait())]
    await asyncio.wait(waits, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
    failed = task.exception() if task.done() and not task.cancelled() else None
    for w in waits:
        w.cancel()
    await asyncio.gather(*waits, return_exceptions=True)
    if failed is not None:
        raise failed
