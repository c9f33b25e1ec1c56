"""The chart's Grafana dashboard (files/dashboards/microturn.json, ConfigMap with
metrics.grafanaDashboard.enabled): every PromQL expression in it names only metrics of the catalog
(microturn.telemetry.catalog), by their exported sample names, and only label keys those metrics have;
the ConfigMap is what Grafana's sidecar loads, and is off by default."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from microturn.telemetry.catalog import BY_NAME, BY_SAMPLE

from .chart_helpers import CHART, NAMESPACE, helm, objects, render, template_args

DASHBOARD = CHART / "files" / "dashboards" / "microturn.json"

# PromQL's functions and aggregations the dashboard may call, and its keywords
FUNCTIONS = {
    "sum", "avg", "max", "min", "count", "topk", "bottomk", "quantile", "stddev", "rate", "irate", "increase",
    "delta", "histogram_quantile", "clamp_min", "clamp_max", "abs", "ceil", "floor", "round", "vector",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "label_replace", "absent",
}  # fmt: skip
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"bool", "and", "or", "unless", "offset"} | GROUPING
GRAFANA_VARIABLES = re.compile(r"\$(__rate_interval|__interval|__range|\{?version\}?)")
TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<range>\[[^\]]*\])|(?P<num>\d+(?:\.\d+)?(?:e[+-]?\d+)?)'
    r"|(?P<id>[A-Za-z_:][A-Za-z0-9_:]*)|(?P<op>=~|!~|!=|==|>=|<=|[-+*/%^(){},=<>]))"
)


def tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr.rstrip()):
        m = TOKEN.match(expr, pos)
        assert m and m.end() > pos, f"cannot read PromQL at {expr[pos:]!r}"
        out.append(next((k, v) for k, v in m.groupdict().items() if v is not None))
        pos = m.end()
    return out


def references(expr: str) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """(sample names selected, (sample, label key) of each matcher, label keys in by/without/on
    clauses) of one expression; fails on any name that is not a function, keyword, label or metric."""
    toks = tokens(GRAFANA_VARIABLES.sub("x", expr))
    samples, matchers, grouping = [], [], []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind != "id":
            i += 1
        elif text in GROUPING:
            assert nxt == "(", f"{text} without a label list in {expr}"
            j = i + 2
            while toks[j][1] != ")":
                if toks[j][0] == "id":
                    grouping.append(toks[j][1])
                j += 1
            i = j + 1
        elif (nxt == "(" or nxt in GROUPING) and text not in KEYWORDS:  # sum by (x) (...) too
            assert text in FUNCTIONS, f"unknown function {text} in {expr}"
            i += 1
        elif text in KEYWORDS:
            i += 1
        else:
            samples.append(text)
            i += 1
            if nxt == "{":
                i += 1
                while toks[i][1] != "}":
                    if toks[i][0] == "id":
                        matchers.append((text, toks[i][1]))
                    i += 1
                i += 1
    return samples, matchers, grouping


def check_expr(expr: str) -> None:
    samples, matchers, grouping = references(expr)
    assert samples, f"no metric in {expr}"
    for s in samples:
        assert s in BY_SAMPLE, f"{s} is not an exported sample name of a catalog metric: {expr}"
    for s, key in matchers:
        assert key in BY_SAMPLE[s].sample_labels(s), f"{s} has no label {key}: {expr}"
    # a grouping label must be on every series of the expression
    common = frozenset.intersection(*(BY_SAMPLE[s].sample_labels(s) for s in samples))
    for key in grouping:
        assert key in common, f"{key} is not a label of every metric in {expr}"


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(doc: dict) -> list[dict]:
    out = []
    for p in doc["panels"]:
        out += [p, *p.get("panels", [])]
    return out


def expressions(doc: dict) -> list[str]:
    return [t["expr"] for p in panels(doc) for t in p.get("targets", [])]


def test_every_query_names_catalog_metrics_and_their_labels():
    exprs = expressions(dashboard())
    assert len(exprs) >= 20
    for expr in exprs:
        check_expr(expr)
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"]["query"])
            assert m, var["query"]
            assert m.group(2) in BY_SAMPLE[m.group(1)].sample_labels(m.group(1))


def test_it_shows_what_an_operator_needs():
    """Sessions, ticks, deadline misses, hop latencies by hop and version, output gaps, turn latency,
    errors by code, recoveries, migrations (by sample: the catalog's exported names)."""
    used = {s for e in expressions(dashboard()) for s in references(e)[0]}
    names = {BY_SAMPLE[s].name for s in used}
    wanted = {
        "microturn_sessions", "microturn_edge_sessions", "microturn_tick_utilisation", "microturn_tick_duration",
        "microturn_chunk_deadline_misses", "microturn_edge_hop_latency", "microturn_edge_output_gap",
        "microturn_turn_latency", "microturn_stream_errors", "microturn_edge_client_errors",
        "microturn_edge_recoveries", "microturn_sessions_migrated", "microturn_edge_sessions_moved",
    }  # fmt: skip
    assert wanted <= names, sorted(wanted - names)
    hops = [e for e in expressions(dashboard()) if "microturn_edge_hop_latency" in e]
    assert hops and all(set(references(e)[2]) >= {"le", "hop", "version"} for e in hops)
    for p in panels(dashboard()):
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}", p["title"]


@pytest.mark.parametrize(
    "expr",
    [
        "sum(rate(microturn_tick_duration_bucket[5m]))",  # the instrument name, not the exported one
        'sum(microturn_sessions{session_id="s1"})',  # a label the metric does not have
        "sum by (code) (rate(microturn_edge_recoveries_total[5m]))",  # grouping by a missing label
        "sum(rate(microturn_nonexistent_total[5m]))",
        "frobnicate(microturn_sessions)",
    ],
)
def test_the_checker_refuses_a_wrong_query(expr):
    with pytest.raises(AssertionError):
        check_expr(expr)


def test_the_catalog_knows_the_checked_metrics():
    assert BY_NAME["microturn_edge_hop_latency"].labels == ("hop", "version")


def dashboard_configmaps(manifests: list[dict]) -> list[dict]:
    return [
        c for c in objects(manifests, "ConfigMap") if "grafana_dashboard" in c["metadata"].get("labels", {})
    ]


def test_the_configmap_is_off_by_default_and_loads_in_the_sidecar(tmp_path: Path):
    assert not dashboard_configmaps(render())
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"metrics": {"grafanaDashboard": {
        "enabled": True, "namespace": "monitoring", "labels": {"team": "voice", "grafana_dashboard": "x"},
        "annotations": {"grafana_folder": "microturn"}}}}))  # fmt: skip
    (cm,) = dashboard_configmaps(render([values]))
    meta = cm["metadata"]
    assert meta["labels"]["grafana_dashboard"] == "1" and meta["labels"]["team"] == "voice"
    assert meta["namespace"] == "monitoring" and meta["annotations"] == {"grafana_folder": "microturn"}
    assert json.loads(cm["data"]["microturn.json"]) == dashboard()
    (cm,) = dashboard_configmaps(render([], {"metrics.grafanaDashboard.enabled": "true"}))
    assert cm["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"enabled": "yes"}, "/metrics/grafanaDashboard/enabled"),
        ({"namespace": "Not_A_Namespace"}, "/metrics/grafanaDashboard/namespace"),
        ({"folder": "x"}, "additional properties 'folder' not allowed"),
    ],
)
def test_bad_dashboard_values_fail_naming_them(values, message, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"metrics": {"grafanaDashboard": values}}))
    proc = helm("template", *template_args([path]), check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
