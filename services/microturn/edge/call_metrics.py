"""What the edge measures about its calls, as process-wide metrics (never a session label).

- ``microturn_edge_hop_latency`` (ms, by ``hop`` and ``version``): where each micro-turn's round trip
  went, from the output's hop stamps: ``to_replica`` (edge send -> replica receive), ``replica``
  (queue + tick), ``from_replica`` (replica send -> edge receive) and ``round_trip``;
- ``microturn_edge_output_gap`` (ms): the time between two output chunks of one call arriving (200 ms
  when all is well; a recovery or a stall shows as a long one);
- ``microturn_edge_recoveries``: streams the edge reopened with a replay (replica lost, stall).
"""

from __future__ import annotations

from opentelemetry import metrics

HOPS = {"latency.to_replica_us": "to_replica", "latency.replica_us": "replica",
        "latency.from_replica_us": "from_replica", "latency.round_trip_us": "round_trip"}  # fmt: skip
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000)
GAP_BUCKETS_MS = (100, 150, 190, 210, 250, 300, 400, 600, 1000, 2000, 5000, 10000)


class CallMetrics:
    def __init__(self, meter: metrics.Meter) -> None:
        self._hops = meter.create_histogram(
            "microturn_edge_hop_latency", unit="ms",
            description="time a micro-turn spent in each hop of its round trip, by hop and model version",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_MS,
        )  # fmt: skip
        self._gaps = meter.create_histogram(
            "microturn_edge_output_gap", unit="ms",
            description="time between two output chunks of one call arriving at the edge",
            explicit_bucket_boundaries_advisory=GAP_BUCKETS_MS,
        )  # fmt: skip
        self._recoveries = meter.create_counter(
            "microturn_edge_recoveries",
            unit="{recovery}",
            description="interaction streams reopened with a replay",
        )

    def turn(self, spans_us: dict[str, int], version: str) -> None:
        """One micro-turn's round trip (``CallTrace.output``)."""
        for key, hop in HOPS.items():
            if key in spans_us:
                self._hops.record(spans_us[key] / 1000, {"hop": hop, "version": version})

    def gap(self, ms: float) -> None:
        self._gaps.record(ms)

    def recovered(self) -> None:
        self._recoveries.add(1)


NO_METRICS = CallMetrics(metrics.NoOpMeter("microturn.edge"))  # a session on its own measures nothing
