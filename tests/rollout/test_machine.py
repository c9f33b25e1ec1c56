"""The rollout state machine (microturn.rollout.machine.decide): walks of whole rollouts, table by
table, and properties over random operators, clocks and fleets (hypothesis)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import event as hypothesis_event
from hypothesis import given, settings
from hypothesis import strategies as st

from microturn.rollout.analysis import AnalysisSpec, SloMetrics
from microturn.rollout.machine import (
    ABORTABLE,
    Command,
    DeleteDeployment,
    EndSessions,
    EnsureDeployment,
    Observations,
    Phase,
    RecordEvent,
    RolloutSpec,
    SetRouting,
    SpecError,
    Step,
    VersionObservation,
    decide,
    initial,
)

GOOD = SloMetrics(
    deadline_miss_ratio=0.001, tick_p99_ms=40, stream_error_ratio=0.0, recoveries_per_session_hour=0
)
BAD = SloMetrics(
    deadline_miss_ratio=0.2, tick_p99_ms=400, stream_error_ratio=0.1, recoveries_per_session_hour=0
)


def spec(**kw) -> RolloutSpec:
    base = dict(candidate="v2", steps=(Step(10, 30, 2), Step(50, 30, 2), Step(100, 30, 0)),
                analysis=AnalysisSpec(min_sessions=2), analysis_interval_s=10, failure_limit=2,
                drain_deadline_s=300)  # fmt: skip
    return RolloutSpec(**{**base, **kw})


def fleet(v1: int = 5, v2: int = 0, opened2: int = 0, m2: SloMetrics | None = GOOD, ready2: bool = True):
    return {"v1": VersionObservation(True, v1, 100, GOOD), "v2": VersionObservation(ready2, v2, opened2, m2)}


def run(status, obs, now):
    status, actions = decide(status, obs, now)
    return status, actions


def routing(actions) -> list[dict[str, int]]:
    return [a.weights for a in actions if isinstance(a, SetRouting)]


def test_a_whole_rollout_moves_weights_step_by_step_then_retires_the_old_version():
    s = spec()
    st_, acts = run(initial("v1"), Observations(s, fleet(ready2=False)), 0)
    assert st_.phase is Phase.PROVISIONING and EnsureDeployment("v2") in acts
    st_, _ = run(st_, Observations(s, fleet()), 5)
    assert st_.phase is Phase.SMOKE
    st_, _ = run(st_, Observations(s, fleet(), smoke_passed=None), 6)
    assert st_.phase is Phase.SMOKE  # waiting for the smoke call
    st_, acts = run(st_, Observations(s, fleet(), smoke_passed=True), 7)
    assert st_.phase is Phase.SHIFTING and routing(acts) == [{"v1": 90, "v2": 10}] and st_.epoch == 1
    # the hold (30 s) and the sessions (2) must both be there, and the analysis pass
    st_, acts = run(st_, Observations(s, fleet(v2=1, opened2=1)), 40)
    assert st_.step == 0 and not routing(acts) and "1/2 candidate sessions" in st_.message
    st_, acts = run(st_, Observations(s, fleet(v2=2, opened2=3)), 52)
    assert st_.step == 1 and routing(acts) == [{"v1": 50, "v2": 50}]
    passed = [a.message for a in acts if isinstance(a, RecordEvent) and a.reason == "AnalysisPassed"]
    assert passed == [
        "step 1/3: within limits: deadline_miss_ratio 0.001 vs stable 0.001, tick_p99_ms 40 vs "
        "stable 40, stream_error_ratio 0 vs stable 0, recoveries_per_session_hour 0 vs stable 0"
    ]
    st_, acts = run(st_, Observations(s, fleet(v2=4, opened2=6)), 85)
    assert st_.step == 2 and routing(acts) == [{"v1": 0, "v2": 100}]
    st_, acts = run(st_, Observations(s, fleet(v1=3, v2=8, opened2=10)), 120)
    assert st_.phase is Phase.PROMOTED and routing(acts) == [{"v2": 100}]
    st_, _ = run(st_, Observations(s, fleet(v1=3, v2=8)), 121)
    assert st_.phase is Phase.DRAINING
    st_, acts = run(st_, Observations(s, fleet(v1=2, v2=8)), 200)  # v1's calls still finishing
    assert st_.phase is Phase.DRAINING and not any(isinstance(a, DeleteDeployment) for a in acts)
    st_, _ = run(st_, Observations(s, fleet(v1=0, v2=9)), 260)
    assert st_.phase is Phase.RETIRING
    st_, acts = run(st_, Observations(s, fleet(v1=0, v2=9)), 261)
    assert st_.phase is Phase.SUCCEEDED and DeleteDeployment("v1") in acts
    assert st_.stable == "v2" and st_.weights == {"v2": 100}
    # nothing more happens for the same spec
    assert run(st_, Observations(s, {"v2": VersionObservation(True, 9, 20, GOOD)}), 300) == (st_, [])


def shifting(s=None, now=7):
    s = s or spec()
    st_, _ = run(initial("v1"), Observations(s, fleet()), 0)
    st_, _ = run(st_, Observations(s, fleet()), 1)
    st_, _ = run(st_, Observations(s, fleet(), smoke_passed=True), now)
    assert st_.phase is Phase.SHIFTING
    return s, st_


def test_a_candidate_that_breaches_its_slos_is_rolled_back_after_the_failure_limit():
    s, st_ = shifting()
    st_, acts = run(st_, Observations(s, fleet(v2=2, opened2=2, m2=BAD)), 18)
    assert st_.phase is Phase.SHIFTING and st_.failures == 1 and not routing(acts)
    st_, acts = run(st_, Observations(s, fleet(v2=2, opened2=2, m2=BAD)), 20)  # within the interval
    assert st_.failures == 1
    st_, acts = run(st_, Observations(s, fleet(v2=2, opened2=2, m2=BAD)), 29)
    assert st_.phase is Phase.ABORTING and routing(acts) == [{"v1": 100}]
    assert "deadline_miss_ratio" in st_.message
    # the candidate's live calls finish; it is deleted only when none is left
    st_, acts = run(st_, Observations(s, fleet(v2=2)), 60)
    assert st_.phase is Phase.ABORTING and not any(isinstance(a, DeleteDeployment) for a in acts)
    st_, acts = run(st_, Observations(s, fleet(v2=0)), 70)
    assert st_.phase is Phase.ABORTED and DeleteDeployment("v2") in acts and st_.stable == "v1"
    assert run(st_, Observations(s, fleet(v2=0)), 80)[0].phase is Phase.ABORTED  # not retried


def test_a_fleet_wide_problem_does_not_fail_a_candidate_that_is_no_worse_than_stable():
    s, st_ = shifting()
    both_bad = {"v1": VersionObservation(True, 5, 100, BAD), "v2": VersionObservation(True, 2, 2, BAD)}
    st_, _ = run(st_, Observations(s, both_bad), 40)
    assert st_.failures == 0 and st_.step == 1


@pytest.mark.parametrize("replay_compatible", [True, False])
def test_past_the_drain_deadline_sessions_migrate_or_end_then_the_version_goes(replay_compatible):
    s, st_ = shifting(spec(replay_compatible=replay_compatible))
    st_, _ = run(st_, Observations(s, fleet(v2=3), command=Command.ABORT), 10)
    assert st_.phase is Phase.ABORTING and st_.weights == {"v1": 100}
    st_, acts = run(st_, Observations(s, fleet(v2=3)), 10 + 301)
    ends = [a for a in acts if isinstance(a, EndSessions)]
    move_to = "v1" if replay_compatible else ""  # the version taking the new sessions, or none: end
    assert ends == [EndSessions("v2", move_to, ends[0].reason)] and "deadline" in ends[0].reason
    st_, acts = run(st_, Observations(s, fleet(v2=1)), 10 + 320)  # going; not sent twice
    assert not [a for a in acts if isinstance(a, EndSessions | DeleteDeployment)]
    st_, acts = run(st_, Observations(s, fleet(v2=1)), 10 + 301 + 61)  # the grace is over
    assert DeleteDeployment("v2") in acts and st_.phase is Phase.ABORTED


def test_pause_holds_the_weights_and_resume_restarts_the_hold():
    s, st_ = shifting()
    st_, _ = run(st_, Observations(s, fleet(), command=Command.PAUSE), 10)
    assert st_.phase is Phase.PAUSED
    st_, acts = run(st_, Observations(s, fleet(v2=9, opened2=9)), 100)
    assert st_.phase is Phase.PAUSED and not acts
    st_, _ = run(st_, Observations(s, fleet(v2=9, opened2=9), command=Command.RESUME), 101)
    assert st_.phase is Phase.SHIFTING and st_.step_since == 101
    st_, _ = run(st_, Observations(s, fleet(v2=9, opened2=12)), 120)
    assert st_.step == 0  # the hold started again at the resume
    st_, _ = run(st_, Observations(s, fleet(v2=9, opened2=12)), 132)
    assert st_.step == 1


def test_a_spec_change_mid_rollout_aborts_then_starts_the_new_one():
    _, st_ = shifting()
    s3 = spec(candidate="v3")
    st_, acts = run(st_, Observations(s3, fleet(v2=0)), 10)
    assert st_.phase is Phase.ABORTING and st_.restart and routing(acts) == [{"v1": 100}]
    st_, _ = run(st_, Observations(s3, fleet(v2=0)), 11)
    assert st_.phase is Phase.ABORTED
    st_, acts = run(st_, Observations(s3, fleet(v2=0)), 12)
    assert st_.phase is Phase.PROVISIONING and st_.candidate == "v3" and EnsureDeployment("v3") in acts


def test_a_candidate_that_never_becomes_ready_is_aborted():
    s = spec(provision_timeout_s=60)
    st_, _ = run(initial("v1"), Observations(s, fleet(ready2=False)), 0)
    st_, _ = run(st_, Observations(s, fleet(ready2=False)), 59)
    assert st_.phase is Phase.PROVISIONING
    st_, _ = run(st_, Observations(s, fleet(ready2=False)), 61)
    assert st_.phase is Phase.ABORTING and "not ready within 60 s" in st_.message


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ((), "at least one step"),
        ((Step(50, 1), Step(20, 1), Step(100, 1)), "rise strictly"),
        ((Step(10, 1), Step(50, 1)), "last step"),
        ((Step(0, 1), Step(100, 1)), "rise strictly"),
        ((Step(100, -1),), "hold"),
    ],
)
def test_bad_specs_say_what_is_wrong(steps, message):
    with pytest.raises(SpecError, match=message):
        spec(steps=steps)


# -- properties --------------------------------------------------------------------------------------
# mostly time passing and calls coming and going, so that walks reach promotion and retirement too
passing = st.tuples(st.just("time"), st.floats(0.5, 120))
calls = st.tuples(st.just("sessions"), st.integers(-3, 5))
event = st.one_of(
    passing, passing, passing, passing, calls, calls, calls, calls,
    st.tuples(st.just("smoke"), st.sampled_from([True, True, False])),
    st.tuples(st.just("command"), st.sampled_from([Command.PAUSE, Command.RESUME, Command.RESUME, Command.ABORT])),
    st.tuples(st.just("ready"), st.sampled_from([True, True, False])),
    st.tuples(st.just("metrics"), st.sampled_from([GOOD, GOOD, BAD, None])),
    st.tuples(st.just("respec"), st.sampled_from(["v2", "v3"])),
)  # fmt: skip


# an operator who lets it run: time, calls and the candidate's metrics only (walks reach Succeeded)
cooperative = st.one_of(
    passing, calls, st.tuples(st.just("metrics"), st.sampled_from([GOOD, GOOD, GOOD, BAD]))
)


@settings(max_examples=400, deadline=None)
@given(st.lists(event, min_size=1, max_size=150), st.booleans())
def test_invariants_hold_whatever_the_operator_clock_and_fleet_do(events, replay_compatible):
    walk(events, replay_compatible)


@settings(max_examples=200, deadline=None)
@given(st.lists(cooperative, min_size=20, max_size=150))
def test_invariants_hold_through_promotion_and_retirement(events):
    walk([("smoke", True), *events], replay_compatible=True)


def walk(events: list[tuple[str, object]], replay_compatible: bool = False) -> None:
    s = spec(steps=(Step(10, 20, 1), Step(50, 20, 1), Step(100, 20, 0)), analysis=AnalysisSpec(min_sessions=1),
             drain_deadline_s=200, replay_compatible=replay_compatible)  # fmt: skip
    status = initial("v1")
    now, ready, smoke, metrics = 0.0, True, None, GOOD
    sessions = {"v1": 5, "v2": 0, "v3": 0}
    opened = {"v1": 5, "v2": 0, "v3": 0}
    candidate_weights: list[int] = []  # SetRouting weights of the candidate, this rollout
    for kind, value in events:
        command = None
        if kind == "time":
            now += value
        elif kind == "command":
            command = value
        elif kind == "smoke":
            smoke = value
        elif kind == "ready":
            ready = value
        elif kind == "metrics":
            metrics = value
        elif kind == "sessions":  # new sessions only where the weights send them; any may end
            for v in sessions:
                if value > 0 and status.weights.get(v, 0) > 0:
                    sessions[v] += value
                    opened[v] += value
                elif value < 0:
                    sessions[v] = max(0, sessions[v] + value)
        elif kind == "respec":
            s = replace(s, candidate=value)
        versions = {v: VersionObservation(ready if v != status.stable else True, sessions[v], opened[v],
                                          metrics if v != status.stable else GOOD) for v in sessions}  # fmt: skip
        before = status
        status, actions = decide(before, Observations(s, versions, smoke, command), now)
        cand = status.candidate
        # at most one candidate beside the stable version, and the weights add up
        assert set(status.weights) <= {status.stable, cand} and sum(status.weights.values()) == 100
        for a in actions:
            if isinstance(a, EnsureDeployment):
                assert a.version == cand and before.phase in (Phase.IDLE, Phase.SUCCEEDED, Phase.ABORTED)
                candidate_weights = []
            if isinstance(a, SetRouting):
                assert sum(a.weights.values()) == 100 and a.epoch == status.epoch
                candidate_weights.append(a.weights.get(before.candidate or cand, 0))
            if isinstance(a, DeleteDeployment):
                # only at 0 sessions, or past the version's drain deadline
                drain_since = before.phase_since
                assert (
                    sessions[a.version] == 0
                    or now - drain_since > s.drain_deadline_s
                    or (before.phase is Phase.RETIRING)
                ), (a, sessions, before)
                assert a.version != status.stable or status.phase is Phase.SUCCEEDED
            if isinstance(a, EndSessions):
                # a session changes version only here: past the deadline, to the version taking all new
                # sessions, and only between replay-compatible versions
                assert now - before.phase_since > s.drain_deadline_s
                if (before.spec or s).replay_compatible:
                    assert a.move_to != a.version and status.weights.get(a.move_to) == 100
                else:
                    assert a.move_to == ""
                hypothesis_event("sessions moved" if a.move_to else "sessions ended")
        # weights only move as the steps say: a prefix of the step weights, then 0 if aborted
        steps = [st_.weight for st_ in (before.spec or s).steps]
        moving = [w for w in candidate_weights if w != 0]
        assert moving == steps[: len(moving)] or moving == [*steps[: len(moving) - 1], 100]  # promoted
        if 0 in candidate_weights:
            assert candidate_weights[candidate_weights.index(0) :] == [0] * (
                len(candidate_weights) - candidate_weights.index(0)
            )
        # abort always reaches weight 0 at once
        if command is Command.ABORT and before.phase in ABORTABLE:
            assert status.phase is Phase.ABORTING and status.weights == {status.stable: 100}
        if status.phase is Phase.ABORTING:
            assert status.weights == {status.stable: 100}
        hypothesis_event(f"reached {status.phase.value}")


# -- documents ---------------------------------------------------------------------------------------
def test_specs_and_statuses_round_trip_through_json():
    import json

    from microturn.rollout.store import spec_from_doc, spec_to_doc, status_from_doc, status_to_doc

    s, st_ = shifting(spec(checkpoint="/models/v2.safetensors"))
    assert spec_from_doc(json.loads(json.dumps(spec_to_doc(s)))) == s
    assert status_from_doc(json.loads(json.dumps(status_to_doc(st_)))) == st_


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "JSON object"),
        ({"candidate": "v2", "steps": [{"weight": 100, "hold_s": 1}], "colour": "red"}, "unknown fields"),
        ({"candidate": "v2", "steps": [{"weight": "all", "hold_s": 1}]}, "weight|rise"),
        ({"candidate": "v2", "steps": [{"weight": 100, "hold": 1}]}, "bad field"),
        (
            {
                "candidate": "v2",
                "steps": [{"weight": 100, "hold_s": 1}],
                "analysis": {"thresholds": {"vibes": {}}},
            },
            "unknown metric",
        ),
        (
            {"candidate": "v2", "steps": [{"weight": 100, "hold_s": 1}], "replay_compatible": "yes"},
            "true or false",
        ),
    ],
)
def test_a_bad_spec_document_names_the_field(doc, message):
    from microturn.rollout.store import spec_from_doc

    with pytest.raises(SpecError, match=message):
        spec_from_doc(doc)
