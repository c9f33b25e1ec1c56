"""Where a session's stream goes: a new session to the least-loaded replica, a reopened one back to
the replica that holds it.

Serve's request-router API is experimental, so it is wrapped here, in one place. The routing key is
the ``session_id`` gRPC metadata (Serve's gRPC proxy puts it into the request metadata):

- ``owner:<replica id>`` (a client reopening a stream it had on that replica): that replica first,
  so the session continues where its state is; when it is gone or draining (Serve no longer lists a
  STOPPING replica), any replica, which rebuilds the session from the client's replay.
- anything else (a new session, a migration off a draining replica): the replica with the fewest
  ongoing streams among up to ``choices`` candidates (all of them in a small deployment), using
  Serve's queue-length cache and probes. So a replica added by a scale-up takes the next calls at
  once, and a full replica is only chosen when every one is (it then answers OVER_CAPACITY itself).
  A consistent-hash ring would keep sending a share of new calls to a full replica while another
  has free slots.
"""

from __future__ import annotations

import random
from typing import Any

from ray.serve._private.request_router.common import PendingRequest
from ray.serve._private.request_router.replica_wrapper import RunningReplica
from ray.serve._private.request_router.request_router import FIFOMixin, RequestRouter

SESSION_METADATA_KEY = "session_id"
APPLICATION_METADATA_KEY = "application"
OWNER_PREFIX = "owner:"
DEFAULT_CHOICES = 8


class SessionRouter(FIFOMixin, RequestRouter):
    """The interaction deployment's router (named in the Serve config)."""

    def initialize_state(self, choices: int = DEFAULT_CHOICES, **_: Any) -> None:
        if not isinstance(choices, int) or choices < 1:
            raise ValueError(f"choices must be a positive int, got {choices!r}")
        self._choices = choices

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        owner = owner_from_key(pending_request.metadata.session_id if pending_request else "")
        others = candidate_replicas
        ranks: list[list[RunningReplica]] = []
        if owner is not None:
            held = [r for r in candidate_replicas if r.replica_id.unique_id == owner]
            if held:
                ranks.append(held)
                others = [r for r in candidate_replicas if r.replica_id.unique_id != owner]
        if others:
            choices = getattr(self, "_choices", DEFAULT_CHOICES)
            ranks.append(others if len(others) <= choices else random.sample(others, choices))
        return ranks


def owner_from_key(key: str | None) -> str | None:
    if key and key.startswith(OWNER_PREFIX):
        return key[len(OWNER_PREFIX) :] or None
    return None


def stream_metadata(app_name: str, session_id: str, owner: str | None = None) -> tuple[tuple[str, str], ...]:
    """gRPC metadata a client sends with a session's stream so the proxy routes it: ``owner`` is the
    replica that accepted the session's last stream (a reopen), None for a new session."""
    key = OWNER_PREFIX + owner if owner else session_id
    return ((APPLICATION_METADATA_KEY, app_name), (SESSION_METADATA_KEY, key))
