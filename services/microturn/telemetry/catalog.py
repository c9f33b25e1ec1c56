"""Every metric microturn exports, in one table: what operators, the docs (docs/METRICS.md, made by
``markdown_table``), the chart's Grafana dashboard and the tests read, so none of them guesses a name.

An entry names the instrument as the service creates it; ``family`` and ``samples`` are what the
OpenTelemetry Prometheus exporter (opentelemetry-exporter-prometheus 0.66b2) turns it into on
``/metrics``: the unit becomes a suffix (``ms`` -> ``_milliseconds``; a ``{...}`` annotation or no
unit adds none), a counter's samples end in ``_total``, a histogram's in ``_bucket``/``_sum``/
``_count`` (``le`` on the buckets), an up-down counter is a gauge. The exporter also puts its own
``otel_scope_name``/``otel_scope_version``/``otel_scope_schema_url`` labels on every sample
(``EXPORTER_LABELS``). Through an OpenTelemetry Collector (the interaction replicas and the rollout
controller export by OTLP) the names come out the same with the collector's default suffixes.

Labels are bounded sets only: never a session, chunk, delegation or call id
(tests/telemetry/test_metric_names.py scrapes every service and checks all of this).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class Kind(StrEnum):
    COUNTER = "counter"
    HISTOGRAM = "histogram"
    GAUGE = "gauge"


# the exporter's suffix for a unit (its map_unit; annotations like "{chunk}" map to none)
UNIT_SUFFIXES = {"ms": "milliseconds", "s": "seconds", "By": "bytes", "%": "percent"}
EXPORTER_LABELS = ("otel_scope_name", "otel_scope_schema_url", "otel_scope_version")
SERVICES = ("edge", "interaction", "background", "tools", "rollout")


@dataclass(frozen=True)
class Metric:
    name: str  # the instrument's name (microturn_<snake_case>)
    kind: Kind
    unit: str  # UCUM: "ms", an annotation such as "{chunk}", or "" (a plain number or ratio)
    labels: tuple[str, ...]
    services: tuple[str, ...]  # the processes that export it
    help: str
    needs: str = ""  # when it has data only in some situation (an instrument without data is not exported)

    @property
    def family(self) -> str:
        """The Prometheus metric family name (``# TYPE`` line; a counter's without ``_total``)."""
        suffix = UNIT_SUFFIXES.get(self.unit, "")
        return f"{self.name}_{suffix}" if suffix and not self.name.endswith(f"_{suffix}") else self.name

    @property
    def samples(self) -> tuple[str, ...]:
        """The sample names PromQL selects."""
        f = self.family
        if self.kind is Kind.COUNTER:
            return (f"{f}_total",)
        if self.kind is Kind.HISTOGRAM:
            return (f"{f}_bucket", f"{f}_sum", f"{f}_count")
        return (f,)

    def sample_labels(self, sample: str) -> frozenset[str]:
        """The label keys a sample carries (exporter labels aside)."""
        return frozenset(self.labels) | ({"le"} if sample.endswith("_bucket") else set())


def _m(name: str, kind: Kind, unit: str, labels: str, services: str, help: str, needs: str = "") -> Metric:
    return Metric(name, kind, unit, tuple(labels.split()), tuple(services.split()), help, needs)


C, H, G = Kind.COUNTER, Kind.HISTOGRAM, Kind.GAUGE
REPLICA = "replica version"
REJECTED = "that consumer refuses a message"

METRICS: tuple[Metric, ...] = (
    # -- interaction replica (services/microturn/interaction/core.py, deployment.py, bus) -------------
    _m("microturn_sessions", G, "{session}", REPLICA, "interaction", "sessions the replica holds"),
    _m("microturn_tick_duration", H, "ms", REPLICA, "interaction",
       "time of one tick's batched engine step (a micro-turn is 200 ms)"),
    _m("microturn_tick_batch_size", H, "{session}", REPLICA, "interaction", "sessions stepped in one tick"),
    _m("microturn_tick_utilisation", G, "", REPLICA, "interaction",
       "share of the last 5 s the engine steps took (the autoscaling signal; 1 = full)"),
    _m("microturn_session_lag", G, "ms", REPLICA, "interaction",
       "wall time past the end of the next expected chunk, of the session furthest behind"),
    _m("microturn_chunk_deadline_misses", C, "{chunk}", REPLICA, "interaction",
       "outputs later than one micro-turn after their input ended", needs="an output is late"),
    _m("microturn_turn_latency", H, "ms", "version", "interaction",
       "caller's end of turn (speech went quiet, typed text) to the model starting to speak, on the replica",
       needs="the model starts speaking after a caller's turn"),
    _m("microturn_stream_errors", C, "{error}", f"code {REPLICA}", "interaction",
       "typed errors sent on session streams, by error code", needs="a stream gets an error"),
    _m("microturn_chunks_dropped", C, "{chunk}", f"reason {REPLICA}", "interaction",
       "input chunks dropped by the backlog policy, by reason", needs="a session's backlog overflows"),
    _m("microturn_session_rebuild_duration", H, "ms", REPLICA, "interaction",
       "a session reopened with a replay: replay received to session live",
       needs="a session is rebuilt from a replay"),
    _m("microturn_rebuild_turns", C, "{turn}", REPLICA, "interaction",
       "teacher-forced micro-turns run to rebuild sessions", needs="a session is rebuilt from a replay"),
    _m("microturn_sessions_migrated", C, "{session}", REPLICA, "interaction",
       "sessions a draining replica handed to another replica (make before break)",
       needs="a drain moves sessions to another replica"),
    _m("microturn_sessions_drain_deadline", C, "{session}", REPLICA, "interaction",
       "sessions still on a draining replica at its deadline, ended for their clients to recover",
       needs="a drain ends with sessions left"),
    _m("microturn_replicas_target", G, "{replica}", "replica", "interaction",
       "replicas the Serve autoscaler wants (every replica reports it: aggregate with max)",
       needs="in a Ray Serve replica"),
    _m("microturn_replicas_running", G, "{replica}", "replica", "interaction",
       "replicas of the interaction deployment that are RUNNING (aggregate with max)",
       needs="in a Ray Serve replica"),
    _m("microturn_updates_rejected", C, "{message}", "code", "interaction", "background updates refused, by code",
       needs=REJECTED),
    # -- edge (services/microturn/edge) -----------------------------------------------------------------
    _m("microturn_edge_sessions", G, "{session}", "", "edge", "calls the edge process holds (the edge autoscaling signal)"),
    _m("microturn_edge_hop_latency", H, "ms", "hop version", "edge",
       "time a micro-turn spent in each hop of its round trip (to_replica, replica, from_replica, round_trip)"),
    _m("microturn_edge_output_gap", H, "ms", "", "edge",
       "time between two output chunks of one call arriving at the edge (200 ms when all is well)"),
    _m("microturn_edge_recoveries", C, "{recovery}", "", "edge", "interaction streams the edge reopened with a replay",
       needs="a replica is lost or a stream stalls"),
    _m("microturn_edge_client_errors", C, "{error}", "code", "edge",
       "errors sent to clients (data-channel error events, 4xx answers), by code", needs="a client gets an error"),
    _m("microturn_edge_routing_epoch", G, "", "", "edge", "epoch of the routing table applied to new calls",
       needs="edge.routing_file is read (rollouts)"),
    _m("microturn_edge_routing_errors", C, "{error}", "", "edge",
       "routing table reads that failed (the last good table stays)", needs="the routing file cannot be read"),
    _m("microturn_edge_sessions_moved", C, "{session}", "", "edge",
       "calls moved to another model version (theirs was retired by a rollout)",
       needs="a rollout retires a version with live calls"),
    # -- background (services/microturn/background, bus) -------------------------------------------------
    _m("microturn_delegations", C, "{delegation}", "outcome backend", "background",
       "delegations ended, by outcome (final or the error code) and backend"),
    _m("microturn_delegation_duration", H, "ms", "outcome", "background",
       "a delegation from pick-up to its last update"),
    _m("microturn_delegations_rejected", C, "{message}", "code", "background", "delegation requests refused, by code",
       needs=REJECTED),
    _m("microturn_cancels_rejected", C, "{message}", "code", "background", "cancellations refused, by code",
       needs=REJECTED),
    _m("microturn_tool_results_rejected", C, "{message}", "code", "background", "tool results refused, by code",
       needs=REJECTED),
    # -- tools (services/microturn/tools, bus) ------------------------------------------------------------
    _m("microturn_tool_calls", C, "{call}", "tool outcome via", "tools",
       "tool calls served, by tool (unknown names folded), outcome (ok or the error code) and transport"),
    _m("microturn_tool_duration", H, "ms", "tool", "tools", "time in the tool"),
    _m("microturn_timers_fired", C, "{timer}", "", "tools", "timers that fired", needs="a timer fires"),
    _m("microturn_tool_calls_rejected", C, "{message}", "code", "tools", "tool calls refused, by code", needs=REJECTED),
    _m("microturn_timers_rejected", C, "{message}", "code", "tools", "timers refused, by code", needs=REJECTED),
    # -- rollout controller (services/microturn/rollout/local.py; OTLP only) -----------------------------------
    _m("microturn_rollout_events", C, "{event}", "reason type", "rollout",
       "rollout events, by reason and type (Normal, Warning)"),
    _m("microturn_rollout_weight", G, "%", "version", "rollout", "percent of new calls routed to each version"),
)  # fmt: skip

BY_NAME = {m.name: m for m in METRICS}
BY_FAMILY = {m.family: m for m in METRICS}
BY_SAMPLE = {s: m for m in METRICS for s in m.samples}


def exported_by(service: str) -> tuple[Metric, ...]:
    return tuple(m for m in METRICS if service in m.services)


def markdown_table() -> str:
    """The table of docs/METRICS.md (between its ``metrics-table`` markers)."""
    rows = [
        "| name on /metrics | type | unit | labels | exported by | only when | meaning |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in METRICS:
        name = (
            f"`{m.samples[0]}`"
            if m.kind is not Kind.HISTOGRAM
            else f"`{m.family}` (`_bucket`, `_sum`, `_count`)"
        )
        labels = ", ".join(f"`{k}`" for k in m.labels) or "-"
        cells = [name, m.kind.value, m.unit or "-", labels, ", ".join(m.services), m.needs or "-", m.help]
        rows.append(f"| {' | '.join(cells)} |")
    return "\n".join(rows) + "\n"


BEGIN, END = "<!-- metrics-table:begin -->\n", "<!-- metrics-table:end -->"


def with_table(doc: str) -> str:
    """``doc`` with the text between its markers replaced by ``markdown_table()``."""
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}{markdown_table()}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """``python -m microturn.telemetry.catalog [--check]``: rewrite (or check) docs/METRICS.md's table."""
    parser = argparse.ArgumentParser(description="rewrite docs/METRICS.md's metrics table from the catalog")
    parser.add_argument(
        "--doc", type=Path, default=Path("docs/METRICS.md"), help="default: ./docs/METRICS.md"
    )
    parser.add_argument("--check", action="store_true", help="fail when the table is stale")
    opts = parser.parse_args(argv)
    text = opts.doc.read_text()
    new = with_table(text)
    if opts.check:
        if new != text:
            print(f"{opts.doc} is stale: run python -m microturn.telemetry.catalog", file=sys.stderr)
            return 1
        return 0
    opts.doc.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
