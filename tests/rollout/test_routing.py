"""The routing table (microturn.rollout.routing): deterministic, weight-proportional, monotonic."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from microturn.rollout.routing import Route, RoutingError, RoutingTable

ids = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=40)


@given(ids, st.integers(0, 100), st.integers(0, 100))
def test_a_session_that_picked_the_candidate_keeps_it_at_every_higher_weight(sid, a, b):
    lo, hi = sorted((a, b))
    at = lambda w: RoutingTable(1, {"v1": 100 - w, "v2": w}).pick(sid)  # noqa: E731
    if at(lo) == "v2":
        assert at(hi) == "v2"
    assert at(lo) == at(lo)  # deterministic


@pytest.mark.parametrize("weight", [1, 10, 50, 90])
def test_the_share_of_new_sessions_follows_the_weight_within_binomial_tolerance(weight):
    n = 20_000
    table = RoutingTable(3, {"stable": 100 - weight, "canary": weight})
    hits = sum(table.pick(f"s{i:06d}") == "canary" for i in range(n))
    p = weight / 100
    assert abs(hits - n * p) <= 4 * math.sqrt(n * p * (1 - p)), (hits, n * p)


def test_zero_weight_gets_nothing_and_full_weight_gets_everything():
    assert {RoutingTable(1, {"a": 0, "b": 100}).pick(f"x{i}") for i in range(500)} == {"b"}


def test_the_json_form_round_trips_and_writes_atomically(tmp_path):
    table = RoutingTable(
        7, {"v2": 10, "v1": 90}, apps={"v2": "interaction-v2"}, targets={"v2": "v2-grpc:9000"}
    )
    path = tmp_path / "routing.json"
    table.write(path)
    assert RoutingTable.from_json(path.read_text()) == table
    assert not list(tmp_path.glob(".*.tmp"))
    routes = {table.route(f"s{i}", "interaction") for i in range(200)}
    assert {(r.app, r.target) for r in routes} == {("interaction", ""), ("interaction-v2", "v2-grpc:9000")}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ("[]", "must be"),
        ('{"epoch": 1, "weights": {}}', "at least one version"),
        ('{"epoch": 1, "weights": {"v1": 60, "v2": 30}}', "add up to 100"),
        ('{"epoch": 1, "weights": {"v1": 101, "v2": -1}}', "integer 0..100"),
        ('{"epoch": 1, "weights": {"v1": 50.5, "v2": 49.5}}', "integer 0..100"),
        ('{"epoch": "one", "weights": {"v1": 100}}', "epoch must be an integer"),
        ('{"epoch": -1, "weights": {"v1": 100}}', "epoch must be >= 0"),
        ('{"epoch": true, "weights": {"v1": 100}}', "epoch must be an integer"),
        ('{"epoch": 1, "weights": {"v1": 100}, "apps": {"v9": "x"}}', "without a weight"),
        ('{"epoch": 1, "weights": {"v1": 100}, "apps": {"v1": ""}}', "non-empty string"),
        ('{"epoch": 1, "weights": {"v1": 100}, "apps": ["v1"]}', "must be objects"),
        ('{"epoch": 1, "weights": {"v1": 100}, "targets": {"v1": "nowhere"}}', "host:port"),
        ('{"epoch": 1, "weights": {"v1": 100}, "targets": {"v2": "h:1"}}', "without a weight"),
        ('{"epoch": 1, "weights": {"v1": 100}, "retired": {"v1": "gone"}}', "must have weight 0"),
        ('{"epoch": 1, "weights": {"v1": 100}, "retired": {"v0": 3}}', "both strings"),
        ('{"epoch": 1, "weights": {"v1": 100}, "moves": {"v0": "v1"}}', "not retired"),
        (
            '{"epoch": 1, "weights": {"v1": 100, "v2": 0}, "retired": {"v0": "x"}, "moves": {"v0": "v2"}}',
            "weight > 0",
        ),
        ('{"epoch": 1, "weights": {"v1": 100}, "retired": {"v0": "x"}, "moves": {"v0": 1}}', "both strings"),
        ('{"epoch": 1, "weights": {"v1": 100}, "moves": []}', "must be objects"),
    ],
)
def test_a_bad_table_says_why(text, message):
    with pytest.raises(RoutingError, match=message):
        RoutingTable.from_json(text)


def test_a_retired_version_round_trips_and_a_live_one_cannot_be_retired():
    table = RoutingTable(4, {"v1": 100}).retire("v0", "past its deadline")
    assert RoutingTable.from_json(table.to_json()) == table and table.retired == {"v0": "past its deadline"}
    with pytest.raises(RoutingError, match="weight 0"):
        RoutingTable(4, {"v1": 100}).retire("v1", "no")


def test_a_retired_version_can_send_its_calls_to_the_live_one():
    table = RoutingTable(4, {"v0": 0, "v1": 100}, apps={"v1": "interaction-v1"}).retire(
        "v0", "x", move_to="v1"
    )
    assert RoutingTable.from_json(table.to_json()) == table and table.moves == {"v0": "v1"}
    assert table.route_to("v1", "interaction") == Route("v1", "interaction-v1")
