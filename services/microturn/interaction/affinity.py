"""Session affinity: every stream of a session goes to the same replica while it lives.

Serve's request-router API is experimental, so it is wrapped here, in one place: the router is
Serve's consistent-hash router keyed on the ``session_id`` gRPC metadata (which Serve's gRPC proxy
puts into the request metadata), with strict affinity (no fallback replica: a session's state
lives on exactly one replica, and a replica that is full answers OVER_CAPACITY itself). When a
replica goes away the ring is rebuilt and its sessions move to their next owner, where the client
replays them.

One fix on top of Serve's router: when a request finds its replica's actor dead, Serve drops the
replica from the router's set but not from the hash ring, so a session mapped to it finds no
candidate at all until the controller's next broadcast (seconds). Here the ring is rebuilt at once,
so a recovering session reaches its next owner on the first retry.
"""

from __future__ import annotations

from typing import Any

from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter

ROUTER_CLASS = f"{__name__}:SessionAffinityRouter"
SESSION_METADATA_KEY = "session_id"
APPLICATION_METADATA_KEY = "application"


class SessionAffinityRouter(ConsistentHashRouter):
    """Consistent hashing on the session id (the deployment's router, named in the Serve config)."""

    def on_replica_actor_died(self, replica_id) -> None:
        super().on_replica_actor_died(replica_id)
        self._rebuild_ring(frozenset(self._replica_id_set))


def router_config(num_virtual_nodes: int = 100) -> dict[str, Any]:
    """The ``request_router_config`` of the interaction deployment."""
    return {
        "request_router_class": ROUTER_CLASS,
        "request_router_kwargs": {"num_virtual_nodes": num_virtual_nodes, "num_fallback_replicas": 0},
    }


def stream_metadata(app_name: str, session_id: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata a client sends with a session's stream so the proxy routes it."""
    return ((APPLICATION_METADATA_KEY, app_name), (SESSION_METADATA_KEY, session_id))
