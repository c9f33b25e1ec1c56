"""The rollout state machine: a pure function from (status, observations, now) to (status, actions).

::

    Idle/Succeeded/Aborted --spec--> Provisioning --ready--> Smoke --pass--> Shifting(0)
    Shifting(i) --hold, sessions, analysis pass--> Shifting(i+1) ... --last step--> Promoted
    Shifting(i) <--pause/resume--> Paused
    Promoted --> Draining(stable) --0 sessions or deadline--> Retiring --deleted--> Succeeded
    Provisioning/Smoke/Shifting/Paused --abort, failure limit, timeout, spec change--> Aborting
    Aborting --candidate at 0 sessions or past its deadline--> Aborted (--> Provisioning if the spec changed)

Everything with effects is an ``Action`` for the driver (a local loop or the Kubernetes controller)
to carry out; the driver feeds back what it sees as ``Observations``. New sessions follow the routing
weights (``SetRouting``); live sessions stay on their version until they end, or until a drain
deadline, where they migrate (versions that are replay-compatible) or end with a clear error.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from microturn.rollout.analysis import AnalysisSpec, SloMetrics, Verdict, analyse

TOTAL = 100
DEADLINE_GRACE_S = 60.0  # after EndSessions, sessions get this long to go before the deployment is deleted


class Phase(StrEnum):
    IDLE = "Idle"
    PROVISIONING = "Provisioning"
    SMOKE = "Smoke"
    SHIFTING = "Shifting"
    PAUSED = "Paused"
    PROMOTED = "Promoted"
    DRAINING = "Draining"
    RETIRING = "Retiring"
    SUCCEEDED = "Succeeded"
    ABORTING = "Aborting"
    ABORTED = "Aborted"


RESTING = {Phase.IDLE, Phase.SUCCEEDED, Phase.ABORTED}
ABORTABLE = {Phase.PROVISIONING, Phase.SMOKE, Phase.SHIFTING, Phase.PAUSED}


class Command(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"


class SpecError(ValueError):
    """A rollout spec that cannot run (the message says which field and why)."""


@dataclass(frozen=True)
class Step:
    weight: int  # percent of new sessions on the candidate
    hold_s: float
    min_sessions: int = 0  # candidate sessions opened during the step before it may end


@dataclass(frozen=True)
class RolloutSpec:
    candidate: str
    steps: tuple[Step, ...]
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)
    analysis_interval_s: float = 10.0
    failure_limit: int = 2  # failed analyses in one rollout before it aborts
    provision_timeout_s: float = 600.0
    smoke_timeout_s: float = 120.0
    drain_deadline_s: float = 1800.0  # live sessions of the version that loses finish this long
    replay_compatible: bool = False  # past the deadline: migrate (True) or end (False) its sessions
    # where the candidate's weights come from ("": the checkpoint shipped with that version)
    checkpoint: str = ""
    # interaction settings of the candidate's replicas (e.g. session_slots)
    candidate_settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.candidate:
            raise SpecError("candidate: a version name is required")
        if not self.steps:
            raise SpecError("steps: at least one step is required")
        weights = [s.weight for s in self.steps]
        if any(not 0 < w <= TOTAL for w in weights) or weights != sorted(set(weights)):
            raise SpecError(f"steps: weights must rise strictly within 1..{TOTAL}, got {weights}")
        if weights[-1] != TOTAL:
            raise SpecError(
                f"steps: the last step must send {TOTAL}% of new sessions to the candidate, got {weights[-1]}"
            )
        if any(s.hold_s < 0 or s.min_sessions < 0 for s in self.steps):
            raise SpecError("steps: hold and min_sessions must be >= 0")
        if self.failure_limit < 1:
            raise SpecError(f"failure_limit must be >= 1, got {self.failure_limit}")
        for name in ("analysis_interval_s", "provision_timeout_s", "smoke_timeout_s", "drain_deadline_s"):
            if getattr(self, name) <= 0:
                raise SpecError(f"{name} must be > 0, got {getattr(self, name)}")

    def digest(self) -> str:
        """Identity of the spec: a change mid-rollout aborts it and starts the new one."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class VersionObservation:
    ready: bool = False  # its deployment serves
    sessions: int = 0  # live sessions now
    opened: int = 0  # sessions opened since the version was deployed (monotonic)
    metrics: SloMetrics | None = None  # over the last analysis window


@dataclass(frozen=True)
class Observations:
    spec: RolloutSpec | None  # the desired rollout (None: none asked for)
    versions: dict[str, VersionObservation] = field(default_factory=dict)
    smoke_passed: bool | None = None  # the candidate's smoke call: None while it runs
    command: Command | None = None


@dataclass(frozen=True)
class RolloutStatus:
    stable: str  # the version that serves when no rollout runs
    phase: Phase = Phase.IDLE
    spec: RolloutSpec | None = None
    digest: str = ""
    weights: dict[str, int] = field(default_factory=dict)
    epoch: int = 0
    step: int = 0
    phase_since: float = 0.0
    step_since: float = 0.0
    step_opened_at_start: int = 0  # candidate's ``opened`` when the step began
    last_analysis_at: float = 0.0
    failures: int = 0
    paused_from: Phase | None = None
    restart: bool = False  # aborting because the spec changed: start the new one after
    sessions_left: int = 0  # while draining: live sessions of the version that lost
    deadline_passed: bool = False  # its drain deadline passed and EndSessions was sent
    message: str = ""

    @property
    def candidate(self) -> str | None:
        return self.spec.candidate if self.spec is not None else None


# -- actions -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnsureDeployment:
    version: str


@dataclass(frozen=True)
class DeleteDeployment:
    version: str


@dataclass(frozen=True)
class SetRouting:
    weights: dict[str, int]
    epoch: int


@dataclass(frozen=True)
class EndSessions:
    """The version's drain deadline passed: move its live sessions to ``move_to`` (replay-compatible
    versions) or, with ``move_to`` empty, end them with a clear error."""

    version: str
    move_to: str
    reason: str


def retire_reason(a: EndSessions) -> str:
    """What the edges say to the calls of a retired version (logged when moved, sent when ended)."""
    return f"{a.reason}; moved to {a.move_to}" if a.move_to else f"{a.reason}; start a new call"


@dataclass(frozen=True)
class RecordEvent:
    reason: str  # CamelCase, as Kubernetes Events have it
    message: str
    warning: bool = False


Action = EnsureDeployment | DeleteDeployment | SetRouting | EndSessions | RecordEvent


def initial(stable: str) -> RolloutStatus:
    return RolloutStatus(stable=stable, weights={stable: TOTAL})


def decide(status: RolloutStatus, obs: Observations, now: float) -> tuple[RolloutStatus, list[Action]]:
    """One step of the machine. Call it again with fresh observations until nothing changes."""
    actions: list[Action] = []
    phase = status.phase
    if phase in RESTING:
        if (
            obs.spec is not None
            and obs.spec.digest() != status.digest
            and obs.spec.candidate != status.stable
        ):
            return _start(status, obs.spec, now, actions)
        return status, actions
    spec = status.spec
    assert spec is not None
    if obs.spec is not None and obs.spec.digest() != status.digest and phase in ABORTABLE:
        return _abort(status, now, actions, "the rollout spec changed: aborting, then starting the new one",
                      restart=True)  # fmt: skip
    if obs.command is Command.ABORT and phase in ABORTABLE:
        return _abort(status, now, actions, "aborted by the operator")
    cand = obs.versions.get(spec.candidate, VersionObservation())
    stable = obs.versions.get(status.stable, VersionObservation())

    if phase is Phase.PROVISIONING:
        if cand.ready:
            return _to(status, Phase.SMOKE, now, actions, f"{spec.candidate} is ready; smoke call")
        if now - status.phase_since > spec.provision_timeout_s:
            return _abort(
                status, now, actions, f"{spec.candidate} not ready within {spec.provision_timeout_s:.0f} s"
            )
        return status, actions
    if phase is Phase.SMOKE:
        if obs.smoke_passed is True:
            return _enter_step(
                _to(status, Phase.SHIFTING, now, actions, "smoke call passed")[0], 0, cand, now, actions
            )
        if obs.smoke_passed is False:
            return _abort(status, now, actions, f"the smoke call to {spec.candidate} failed")
        if now - status.phase_since > spec.smoke_timeout_s:
            return _abort(status, now, actions, f"no smoke result within {spec.smoke_timeout_s:.0f} s")
        return status, actions
    if phase is Phase.PAUSED:
        if obs.command is Command.RESUME:
            resumed = replace(status, phase=Phase.SHIFTING, paused_from=None, step_since=now,
                              step_opened_at_start=cand.opened, message="resumed; the step's hold starts again")  # fmt: skip
            actions.append(RecordEvent("RolloutResumed", resumed.message))
            return resumed, actions
        return status, actions
    if phase is Phase.SHIFTING:
        if obs.command is Command.PAUSE:
            paused = replace(status, phase=Phase.PAUSED, paused_from=Phase.SHIFTING, phase_since=now,
                             message=f"paused at step {status.step + 1} ({status.weights[spec.candidate]}%)")  # fmt: skip
            actions.append(RecordEvent("RolloutPaused", paused.message))
            return paused, actions
        return _shift(status, spec, cand, stable, now, actions)
    if phase is Phase.PROMOTED:
        return _to(status, Phase.DRAINING, now, actions,
                   f"{spec.candidate} takes every new session; {status.stable}'s live sessions finish")  # fmt: skip
    if phase is Phase.DRAINING:
        return _drain(status, status.stable, stable, spec, now, actions, then=Phase.RETIRING)
    if phase is Phase.RETIRING:
        actions.append(DeleteDeployment(status.stable))
        done = replace(status, phase=Phase.SUCCEEDED, stable=spec.candidate, weights={spec.candidate: TOTAL},
                       phase_since=now, message=f"{spec.candidate} is the stable version")  # fmt: skip
        actions.append(RecordEvent("RolloutSucceeded", done.message))
        return done, actions
    if phase is Phase.ABORTING:
        return _drain(status, spec.candidate, cand, spec, now, actions, then=Phase.ABORTED)
    raise AssertionError(f"unhandled phase {phase}")


def _start(
    status: RolloutStatus, spec: RolloutSpec, now: float, actions: list[Action]
) -> tuple[RolloutStatus, list[Action]]:
    actions.append(EnsureDeployment(spec.candidate))
    new = replace(status, phase=Phase.PROVISIONING, spec=spec, digest=spec.digest(), step=0, failures=0,
                  phase_since=now, step_since=now, restart=False, paused_from=None,
                  message=f"rolling out {spec.candidate} (stable {status.stable}): provisioning")  # fmt: skip
    actions.append(RecordEvent("RolloutStarted", new.message))
    return new, actions


def _to(
    status: RolloutStatus, phase: Phase, now: float, actions: list[Action], message: str
) -> tuple[RolloutStatus, list[Action]]:
    actions.append(RecordEvent(f"Rollout{phase.value}", message))
    return replace(status, phase=phase, phase_since=now, message=message), actions


def _route(status: RolloutStatus, weights: dict[str, int], actions: list[Action]) -> RolloutStatus:
    new = replace(status, weights=dict(weights), epoch=status.epoch + 1)
    actions.append(SetRouting(weights, new.epoch))
    return new


def _enter_step(
    status: RolloutStatus, i: int, cand: VersionObservation, now: float, actions: list[Action]
) -> tuple[RolloutStatus, list[Action]]:
    spec = status.spec
    assert spec is not None
    w = spec.steps[i].weight
    new = _route(status, {status.stable: TOTAL - w, spec.candidate: w}, actions)
    new = replace(new, step=i, step_since=now, step_opened_at_start=cand.opened, last_analysis_at=now,
                  message=f"step {i + 1}/{len(spec.steps)}: {w}% of new sessions on {spec.candidate}")  # fmt: skip
    actions.append(RecordEvent("RolloutStep", new.message))
    return new, actions


def _shift(status: RolloutStatus, spec: RolloutSpec, cand: VersionObservation, stable: VersionObservation,
           now: float, actions: list[Action]) -> tuple[RolloutStatus, list[Action]]:  # fmt: skip
    step = spec.steps[status.step]
    opened = cand.opened - status.step_opened_at_start
    if now - status.last_analysis_at < spec.analysis_interval_s:  # one analysis per interval
        return status, actions
    result = analyse(spec.analysis, cand.metrics, stable.metrics, max(opened, cand.sessions))
    status = replace(status, last_analysis_at=now)
    if result.verdict is Verdict.FAIL:
        failures = status.failures + 1
        actions.append(
            RecordEvent("AnalysisFailed", f"{result.reason} ({failures}/{spec.failure_limit})", warning=True)
        )
        status = replace(status, failures=failures)
        if failures >= spec.failure_limit:
            return _abort(status, now, actions, f"analysis failed {failures} times: {result.reason}")
        return replace(
            status, message=f"analysis failed ({failures}/{spec.failure_limit}): {result.reason}"
        ), actions
    held = now - status.step_since >= step.hold_s
    if not held or opened < step.min_sessions or result.verdict is not Verdict.PASS:
        waiting = (f"holding step {status.step + 1}: {opened}/{step.min_sessions} candidate sessions, "
                   f"analysis {result.verdict.value} ({result.reason})")  # fmt: skip
        return replace(status, message=waiting), actions
    actions.append(
        RecordEvent("AnalysisPassed", f"step {status.step + 1}/{len(spec.steps)}: {result.reason}")
    )
    if status.step + 1 < len(spec.steps):
        return _enter_step(status, status.step + 1, cand, now, actions)
    promoted = _route(status, {spec.candidate: TOTAL}, actions)
    return _to(promoted, Phase.PROMOTED, now, actions, f"{spec.candidate} promoted: 100% of new sessions")


def _abort(
    status: RolloutStatus, now: float, actions: list[Action], reason: str, restart: bool = False
) -> tuple[RolloutStatus, list[Action]]:
    spec = status.spec
    assert spec is not None
    new = status
    if status.weights.get(spec.candidate, 0) != 0 or set(status.weights) != {status.stable}:
        new = _route(status, {status.stable: TOTAL}, actions)
    new = replace(new, phase=Phase.ABORTING, phase_since=now, paused_from=None, restart=restart,
                  message=f"aborting: {reason}; {spec.candidate}'s live sessions finish")  # fmt: skip
    actions.append(RecordEvent("RolloutAborting", new.message, warning=True))
    return new, actions


def _drain(status: RolloutStatus, version: str, obs: VersionObservation, spec: RolloutSpec, now: float,
           actions: list[Action], then: Phase) -> tuple[RolloutStatus, list[Action]]:  # fmt: skip
    """Wait for ``version``'s live sessions to end; past the deadline, move or end them; then go on."""
    waited = now - status.phase_since
    if obs.sessions > 0 and waited <= spec.drain_deadline_s:
        return replace(status, sessions_left=obs.sessions), actions
    if obs.sessions > 0 and not status.deadline_passed:
        # the version taking all new sessions (the one left when this one is gone)
        move_to = max(status.weights, key=status.weights.__getitem__) if spec.replay_compatible else ""
        how = f"move to {move_to}" if move_to else "end with an error"
        reason = f"{version} is being retired: its {spec.drain_deadline_s:.0f} s drain deadline passed"
        actions.append(EndSessions(version, move_to, reason))
        actions.append(
            RecordEvent("DrainDeadline", f"{obs.sessions} sessions on {version} {how}", warning=True)
        )
        return replace(status, deadline_passed=True, sessions_left=obs.sessions), actions
    if obs.sessions > 0 and waited <= spec.drain_deadline_s + DEADLINE_GRACE_S:
        return replace(status, sessions_left=obs.sessions), actions  # they are going: then delete
    status = replace(status, sessions_left=obs.sessions, deadline_passed=False)
    if then is Phase.RETIRING:
        return _to(status, Phase.RETIRING, now, actions, f"{version} has no sessions left: deleting it")
    actions.append(DeleteDeployment(version))
    aborted = replace(status, phase=Phase.ABORTED, phase_since=now, message=f"aborted; {version} deleted")
    actions.append(RecordEvent("RolloutAborted", aborted.message, warning=True))
    return aborted, actions  # with restart, the changed spec starts on the next call (its digest differs)
