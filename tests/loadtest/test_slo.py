"""SLO gates: the grammar, units, every parse error, and verdicts on a synthetic run."""

from __future__ import annotations

import pytest

from loadtest import slo
from loadtest.results import build
from loadtest.slo import SloError, evaluate, exit_code, parse, parse_all

from .test_results import make_session


@pytest.mark.parametrize(
    ("spec", "metric", "stat", "op", "limit", "unit"),
    [
        ("turn_latency.p95<800ms", "turn_latency", "p95", "<", 800.0, "ms"),
        ("setup.p99<=3s", "setup", "p99", "<=", 3000.0, "ms"),
        ("first_audio.p50<2000", "first_audio", "p50", "<", 2000.0, "ms"),
        ("setup_fail_rate<1%", "setup_fail_rate", None, "<", 1.0, "%"),
        ("call_fail_rate<=0.5%", "call_fail_rate", None, "<=", 0.5, "%"),
        ("audio_gap.max<500ms", "audio_gap", "max", "<", 500.0, "ms"),
        ("packet_loss<2%", "packet_loss", None, "<", 2.0, "%"),
        ("concealed<5%", "concealed", None, "<", 5.0, "%"),
        ("  turn_latency.p99.9 >= 1.5 S ", "turn_latency", "p99.9", ">=", 1500.0, "ms"),
        ("barge_in_yield.mean>0.25s", "barge_in_yield", "mean", ">", 250.0, "ms"),
        ("turn_latency.count>=100", "turn_latency", "count", ">=", 100.0, ""),
        ("setup.min<1e3ms", "setup", "min", "<", 1000.0, "ms"),
    ],
)
def test_parse_grammar_and_units(spec, metric, stat, op, limit, unit):
    g = parse(spec)
    assert (g.metric, g.stat, g.op, g.limit, g.unit) == (metric, stat, op, limit, unit)
    assert g.spec == spec.strip()
    again = parse(str(g))  # the canonical form (ms, %) parses back to the same gate
    assert (again.name, again.op, again.limit, again.unit) == (g.name, op, limit, unit)


def test_parse_all_takes_repeats_and_commas():
    gates = parse_all(["turn_latency.p95<800ms,setup.p99<3s", " call_fail_rate<1% ", ""])
    assert [g.name for g in gates] == ["turn_latency.p95", "setup.p99", "call_fail_rate"]
    with pytest.raises(SloError, match="unknown metric 'nope'"):
        parse_all(["turn_latency.p95<800ms", "nope<1"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty SLO gate"),
        ("   ", "empty SLO gate"),
        ("turn_latency.p95 800ms", "has no operator"),
        ("turn_latency.p95==800ms", "unknown operator '=='"),
        ("turn_latency.p95=800ms", "unknown operator '='"),
        ("turn_latency.p95=<800ms", "unknown operator '=<'"),
        ("turn_latency.p95=>800ms", "unknown operator '=>'"),
        ("turn_latency.p95!=800ms", "unknown operator '!='"),
        ("<800ms", "has no metric before '<'"),
        ("latency.p95<800ms", "unknown metric 'latency'"),
        ("turn_latency<800ms", "turn_latency needs a statistic, e.g. turn_latency.p95<800ms"),
        ("turn_latency.p95x<800ms", "unknown statistic 'p95x'"),
        ("turn_latency.median<800ms", "unknown statistic 'median'"),
        ("turn_latency.p0<800ms", "outside 0..100"),
        ("turn_latency.p150<800ms", "outside 0..100"),
        ("setup_fail_rate.p95<1%", "is a rate and takes no statistic"),
        ("turn_latency.p95<", "has no value after '<'"),
        ("turn_latency.p95<fast", "is not a number"),
        ("turn_latency.p95<8 0 0ms", "is not a number"),
        ("turn_latency.p95<-5ms", "must be >= 0"),
        ("turn_latency.p95<5%", "unit '%' does not fit turn_latency"),
        ("turn_latency.p95<5min", "unit 'min' does not fit turn_latency"),
        ("setup_fail_rate<0.01", "is a percentage, write it with %"),
        ("packet_loss<2ms", "got unit 'ms'"),
        ("concealed<150%", "150% is over 100%"),
        ("turn_latency.count>10ms", "takes no unit"),
    ],
)
def test_every_parse_error_says_what_is_wrong(spec, message):
    with pytest.raises(SloError, match=None) as err:
        parse(spec)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_unknown_metric_lists_known_metrics_and_stats():
    with pytest.raises(SloError) as err:
        parse("latency.p95<800ms")
    text = str(err.value)
    for name in (*slo.LATENCY_METRICS, *slo.RATE_METRICS):
        assert name in text
    with pytest.raises(SloError) as err:
        parse("setup.p9x<1s")
    assert slo.STATS_HELP in str(err.value)


def test_verdicts_on_a_synthetic_run():
    sessions = [
        make_session(0, latencies=(300, 500, 700), gaps=(150, 600), packets=(980, 20)),
        make_session(1, dial=1, latencies=(400,), failure="dropped"),
        make_session(2, dial=2, connected=False),
        make_session(3, dial=3, latencies=(350,)),
    ]
    r = build(sessions, {})
    gates = [
        "turn_latency.p95<800ms",  # 700: pass
        "turn_latency.p50<=300ms",  # 400: fail
        "turn_latency.count>=5",  # 5: pass
        "setup.max<1s",  # 500: pass
        "setup_fail_rate<1%",  # 25 %: fail
        "call_fail_rate<=50%",  # 1 of 3: pass
        "audio_gap.max<500ms",  # 600: fail
        "packet_loss<1%",  # 20 of 3000 expected: pass
        "concealed<5%",  # none: pass
        "barge_in_yield.p95<300ms",  # no barge-in: no data, fail
    ]
    verdicts = evaluate(gates, r)
    by = {v.spec: v for v in verdicts}
    assert [v.spec for v in verdicts] == gates
    assert by["turn_latency.p95<800ms"].passed and by["turn_latency.p95<800ms"].observed == pytest.approx(
        700, rel=1e-3
    )
    assert not by["turn_latency.p50<=300ms"].passed and by[
        "turn_latency.p50<=300ms"
    ].observed == pytest.approx(400, rel=1e-3)
    assert by["turn_latency.count>=5"].passed and by["turn_latency.count>=5"].observed == 5
    assert by["setup.max<1s"].passed and by["setup.max<1s"].limit == 1000
    assert not by["setup_fail_rate<1%"].passed and by["setup_fail_rate<1%"].observed == pytest.approx(25)
    assert by["call_fail_rate<=50%"].passed and by["call_fail_rate<=50%"].observed == pytest.approx(100 / 3)
    assert not by["audio_gap.max<500ms"].passed
    assert by["packet_loss<1%"].passed and by["packet_loss<1%"].observed == pytest.approx(100 * 20 / 3000)
    assert by["concealed<5%"].passed and by["concealed<5%"].observed == 0
    nodata = by["barge_in_yield.p95<300ms"]
    assert not nodata.passed and nodata.observed is None and nodata.reason.startswith("no data")
    assert nodata.to_dict()["reason"] == nodata.reason
    assert exit_code(verdicts, overloaded=False) == slo.EXIT_SLO


def test_empty_runs_have_no_data_but_no_gap_is_a_zero_gap():
    nobody = build([], {})
    verdicts = evaluate(["setup_fail_rate<1%", "call_fail_rate<1%", "packet_loss<1%", "concealed<1%",
                         "setup.p50<1s", "audio_gap.max<500ms"], nobody)  # fmt: skip
    assert [v.passed for v in verdicts] == [False] * 6
    assert [v.reason for v in verdicts[:4]] == [
        "no data: no call was dialed", "no data: no call connected",
        "no data: no audio packets received", "no data: no audio samples received",
    ]  # fmt: skip
    assert verdicts[4].reason == "no data: no setup values were measured"
    smooth = build([make_session(0)], {})
    (gap,) = evaluate(["audio_gap.max<500ms"], smooth)
    assert gap.passed and gap.observed == 0 and "no gap over 100 ms" in gap.reason
    assert evaluate(["turn_latency.count>0"], nobody)[0].observed == 0


def test_exit_codes_overload_beats_slo():
    assert (slo.EXIT_OK, slo.EXIT_ERROR, slo.EXIT_CONFIG, slo.EXIT_SLO, slo.EXIT_OVERLOADED) == (
        0,
        1,
        2,
        3,
        4,
    )
    r = build([make_session(0, latencies=(300,))], {})
    good = evaluate(["turn_latency.p95<800ms"], r)
    bad = evaluate(["turn_latency.p95<100ms"], r)
    assert exit_code(good, overloaded=False) == slo.EXIT_OK
    assert exit_code(bad, overloaded=False) == slo.EXIT_SLO
    assert exit_code(bad, overloaded=True) == slo.EXIT_OVERLOADED
    assert exit_code(good, overloaded=True) == slo.EXIT_OVERLOADED
    assert exit_code([v.to_dict() for v in bad], overloaded=False) == slo.EXIT_SLO  # from result.json
    assert exit_code([], overloaded=False) == slo.EXIT_OK


def test_format_value():
    assert slo.format_value(None, "ms") == "no data"
    assert slo.format_value(812.4, "ms") == "812 ms"
    assert slo.format_value(0.5, "%") == "0.5%"
    assert slo.format_value(12, "") == "12"
