"""The routing table every edge reads: ``{version: weight}`` with an epoch.

A *new* session picks its version once, from its id: the id hashes to a point in [0, 100) and the
versions, in name order, own consecutive ranges as wide as their weights. So the choice is
deterministic (every edge, every retry agrees) and, as a candidate's weight only grows during a
rollout, a session id that picked the candidate at one weight picks it at every higher one. A session
keeps the version it picked for its whole life; a table change affects only sessions created after it.
The one exception is a version past its rollout's drain deadline (``retired``): its calls end with a
clear error, or, where the versions are replay-compatible, move to the version ``moves`` names.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

TOTAL = 100


class RoutingError(ValueError):
    """A routing table that cannot be applied (the message says why)."""


@dataclass(frozen=True)
class Route:
    """Where a new session goes: the model version it asks for and the Serve application serving it."""

    version: str
    app: str
    target: str = ""  # host:port of the Interaction gRPC endpoint serving it ("": the edge's default)


@dataclass(frozen=True)
class RoutingTable:
    epoch: int
    weights: dict[str, int] = field(default_factory=dict)  # version -> percent of new sessions
    apps: dict[str, str] = field(default_factory=dict)  # version -> Serve application (default: the edge's)
    # version -> host:port of its gRPC endpoint, where versions run in separate clusters (Kubernetes:
    # one RayService each); default: the edge's interaction_target
    targets: dict[str, str] = field(default_factory=dict)
    # version -> why: a version past its drain deadline; edges end its live calls with that reason...
    retired: dict[str, str] = field(default_factory=dict)
    # ...or, for a retired version listed here, move them to this version (replay-compatible versions)
    moves: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epoch < 0:
            raise RoutingError(f"epoch must be >= 0, got {self.epoch}")
        if not self.weights:
            raise RoutingError("a routing table needs at least one version")
        for version, w in self.weights.items():
            if not version or not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= TOTAL:
                raise RoutingError(f"weight of {version!r} must be an integer 0..{TOTAL}, got {w!r}")
        if sum(self.weights.values()) != TOTAL:
            raise RoutingError(
                f"weights must add up to {TOTAL}, got {sum(self.weights.values())}: {self.weights}"
            )
        for name, mapping in (("apps", self.apps), ("targets", self.targets)):
            if unknown := set(mapping) - set(self.weights):
                raise RoutingError(f"{name} names versions without a weight: {sorted(unknown)}")
            if any(not isinstance(a, str) or not a for a in mapping.values()):
                raise RoutingError(f"{name}: every value must be a non-empty string")
        if any(not isinstance(v, str) or not isinstance(r, str) for v, r in self.retired.items()):
            raise RoutingError("retired: {version: reason}, both strings")
        if retired_live := {v for v in self.retired if self.weights.get(v, 0) > 0}:
            raise RoutingError(f"retired versions must have weight 0: {sorted(retired_live)}")
        if any(not isinstance(v, str) or not isinstance(to, str) for v, to in self.moves.items()):
            raise RoutingError("moves: {retired version: version its calls move to}, both strings")
        if unretired := set(self.moves) - set(self.retired):
            raise RoutingError(f"moves names versions that are not retired: {sorted(unretired)}")
        if dead := {to for to in self.moves.values() if self.weights.get(to, 0) == 0}:
            raise RoutingError(f"calls can only move to a version with weight > 0, not {sorted(dead)}")
        if any(":" not in t or not t.rsplit(":", 1)[1].isdigit() for t in self.targets.values()):
            raise RoutingError(f"targets: each is host:port, got {sorted(self.targets.values())}")

    def route(self, session_id: str, default_app: str) -> Route:
        """Version and application of a new session with this id."""
        return self.route_to(self.pick(session_id), default_app)

    def route_to(self, version: str, default_app: str) -> Route:
        """Where calls on ``version`` go (its application and endpoint)."""
        return Route(version, self.apps.get(version, default_app), self.targets.get(version, ""))

    def pick(self, session_id: str) -> str:
        """The version a new session with this id runs on."""
        point = session_point(session_id)
        edge = 0
        for version in sorted(self.weights):
            edge += self.weights[version]
            if point < edge:
                return version
        raise AssertionError("weights add up to TOTAL")  # unreachable: checked in __post_init__

    def to_json(self) -> str:
        doc = {"epoch": self.epoch, "weights": dict(sorted(self.weights.items()))}
        if self.apps:
            doc["apps"] = dict(sorted(self.apps.items()))
        if self.targets:
            doc["targets"] = dict(sorted(self.targets.items()))
        if self.retired:
            doc["retired"] = dict(sorted(self.retired.items()))
        if self.moves:
            doc["moves"] = dict(sorted(self.moves.items()))
        return json.dumps(doc)

    @classmethod
    def from_json(cls, text: str) -> RoutingTable:
        try:
            doc: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RoutingError(f"routing table is not JSON: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("weights"), dict):
            raise RoutingError('routing table must be {"epoch": N, "weights": {"version": percent, ...}}')
        epoch = doc.get("epoch", 0)
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise RoutingError(f"epoch must be an integer, got {epoch!r}")
        maps = [doc.get(key, {}) for key in ("apps", "targets", "retired", "moves")]
        if not all(isinstance(m, dict) for m in maps):
            raise RoutingError("apps, targets, retired and moves must be objects keyed by version")
        return cls(epoch, dict(doc["weights"]), *(dict(m) for m in maps))

    def retire(self, version: str, reason: str, move_to: str = "") -> RoutingTable:
        """The same table with ``version``'s live calls to be ended (its weight must be 0), or, with
        ``move_to``, moved to that version."""
        moves = {**self.moves, version: move_to} if move_to else self.moves
        return replace(self, retired={**self.retired, version: reason}, moves=moves)

    def write(self, path: Path) -> None:
        """Replace ``path`` atomically (readers see the old table or the new one, never half)."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.to_json() + "\n")
        tmp.replace(path)


def session_point(session_id: str) -> float:
    """Where a session id falls in [0, TOTAL): the first 8 bytes of its SHA-256, uniform."""
    digest = hashlib.sha256(session_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * TOTAL
