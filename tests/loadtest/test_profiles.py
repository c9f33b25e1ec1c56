"""Profile arithmetic: stages, presets, the step hold, shard shares, the join rate and --start-at."""

from __future__ import annotations

import itertools

import pytest

from loadtest import profiles
from loadtest.profiles import Profile, ProfileError, Shard, Stage, plan, targets


def k6(text: str) -> Profile:
    return Profile("stages", profiles.parse_stages(text))


def active_at(events: list[profiles.Event], t: float) -> int:
    return sum(1 if e.action == "start" else -1 for e in events if e.at <= t)


def test_parse_stages_and_durations() -> None:
    assert profiles.parse_stages("30s:10,1m:10,500ms:0") == (Stage(30, 10), Stage(60, 10), Stage(0.5, 0))
    assert profiles.parse_duration("2h") == 7200 and profiles.parse_duration("90") == 90


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("30s", "item 1 '30s': expected DURATION:TARGET"),
        ("30s:10,60s:x", "item 2 '60s:x': target 'x' is not a whole number"),
        ("30s:-1", "target must be >= 0"),
        ("soon:3", "item 1: not a duration: 'soon'"),
        ("0s:5", "longer than 0 s"),
    ],
)
def test_bad_stages_say_which_item(text: str, says: str) -> None:
    with pytest.raises(ProfileError) as exc:
        profiles.parse_stages(text)
    assert says in str(exc.value)


def test_targets_ramp_linearly_over_each_stage() -> None:
    p = k6("30s:10,60s:10,30s:0")
    assert p.duration_s == 120 and p.peak == 10
    expected = {-1: 0, 0: 0, 3: 1, 15: 5, 30: 10, 60: 10, 90: 10, 105: 5, 120: 0, 121: 0}
    assert {t: targets(p, t) for t in expected} == expected


def test_zero_length_stage_jumps() -> None:
    p = k6("0s:4,10s:4,0s:8,10s:8")
    assert [targets(p, t) for t in (0, 9.99, 10, 19.9, 20)] == [4, 4, 8, 8, 8]


def test_step_holds_every_level_for_the_turns_asked() -> None:
    p = profiles.preset("step", step_levels=[2, 4, 8], step_hold_turns=3, turn_s=8.0, setup_s=5.0)
    hold = 5.0 + 3 * 8.0
    assert p.notes["hold_s"] == hold
    spans = profiles.level_spans(p)
    assert [lvl for _, _, lvl in spans] == [2, 4, 8]
    assert all(b - a == pytest.approx(hold) for a, b, _ in spans)
    assert [targets(p, t) for t in (0, hold - 0.01, hold, 2 * hold + 1)] == [2, 2, 4, 8]
    longer = profiles.preset("step", step_levels=[2], step_hold_turns=6, turn_s=8.0, setup_s=5.0)
    assert (
        longer.duration_s > profiles.preset("step", step_levels=[2], step_hold_turns=3, turn_s=8.0).duration_s
    )


def test_presets_have_their_shape() -> None:
    ramp = profiles.preset("ramp", callers=20, duration_s=100)
    assert (targets(ramp, 50), targets(ramp, 100), ramp.duration_s) == (20, 0, 100)
    soak = profiles.preset("soak", callers=6, duration_s=600)
    assert targets(soak, 300) == 6 and targets(soak, 600) == 6
    spike = profiles.preset("spike", callers=30, duration_s=200)
    levels = {targets(spike, t) for t in range(0, 200)}
    assert max(levels) == 30 and 3 in levels
    smoke = profiles.preset("smoke", smoke_s=40)
    assert smoke.once and smoke.peak == 1 and smoke.duration_s == 40
    with pytest.raises(ProfileError, match="unknown profile 'wave'"):
        profiles.preset("wave")
    with pytest.raises(ProfileError, match="--callers"):
        profiles.preset("ramp", callers=0)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_shards_split_every_level_exactly(count: int) -> None:
    for level in range(0, 25):
        shares = [Shard(i, count).share(level) for i in range(count)]
        assert sum(shares) == level
        assert shares == sorted(shares, reverse=True) and shares[0] - shares[-1] <= 1


def test_the_first_shards_take_the_remainder() -> None:
    assert [Shard(i, 4).share(10) for i in range(4)] == [3, 3, 2, 2]
    assert [Shard(i, 3).share(2) for i in range(3)] == [1, 1, 0]


def test_parse_shard_rate_levels() -> None:
    assert profiles.parse_shard("2/5") == Shard(2, 5)
    for bad in ("5/5", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(ProfileError, match="--shard"):
            profiles.parse_shard(bad)
    assert (
        profiles.parse_rate("5/s") == 5
        and profiles.parse_rate("30/m") == 0.5
        and profiles.parse_rate("2") == 2
    )
    for bad in ("0/s", "fast", "-3"):
        with pytest.raises(ProfileError, match="--join-rate"):
            profiles.parse_rate(bad)
    assert profiles.parse_levels("2,4,8") == [2, 4, 8]
    with pytest.raises(ProfileError, match="--step-levels"):
        profiles.parse_levels("2,0")


def test_plan_follows_the_targets_and_stops_everyone_at_the_end() -> None:
    p = k6("10s:6,10s:6,10s:0")
    events = list(plan(p))
    for t in (0.5, 5, 10, 15, 22, 27):
        assert active_at(events, t) == targets(p, t)
    assert active_at(events, p.duration_s) == 0
    assert [e.at for e in events] == sorted(e.at for e in events)
    starts = [e.slot for e in events if e.action == "start"]
    assert starts == sorted(set(starts))  # every start a new slot


def test_stops_take_the_newest_caller() -> None:
    events = list(plan(k6("0s:3,5s:3,0s:1,5s:1")))
    stops = [e.slot for e in events if e.action == "stop"]
    assert stops[:2] == [2, 1] and stops[-1] == 0


def test_shard_plans_add_up_to_the_whole() -> None:
    p = k6("10s:7,10s:7,10s:2")
    plans = [list(plan(p, Shard(i, 3))) for i in range(3)]
    for t in (1, 4, 10, 15, 25, 29):
        assert sum(active_at(ev, t) for ev in plans) == targets(p, t)


def test_join_rate_spaces_the_dials() -> None:
    events = list(plan(profiles.constant(10, 10), join_rate=5))
    starts = [e.at for e in events if e.action == "start"]
    assert len(starts) == 10
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.2 - 1e-9
    assert starts[-1] == pytest.approx(1.8, abs=0.06)
    # the rate is over all shards: each of 2 shards dials at half of it
    shard = [e.at for e in plan(profiles.constant(10, 10), Shard(0, 2), join_rate=4) if e.action == "start"]
    assert min(b - a for a, b in itertools.pairwise(shard)) >= 0.5 - 1e-9


def test_start_at_lines_shards_up() -> None:
    assert profiles.start_wait(None, 1000.0) == (0.0, 0.0)
    assert profiles.start_wait(1010.0, 1000.0) == (10.0, 0.0)
    assert profiles.start_wait(1000.0, 1003.5) == (0.0, 3.5)
    events = list(plan(profiles.constant(2, 5)))
    timed = profiles.wall_times(events, 1010.0)
    assert [w for w, _ in timed] == [1010.0 + e.at for e in events]
    assert timed[0][0] == 1010.0
