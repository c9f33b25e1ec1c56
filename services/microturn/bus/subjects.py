"""Subject and stream names in one place, so every service (and the docs) agree on them.

Ids that become subject tokens (session ids, delegation ids, call ids) are checked here: a dot or a
wildcard in an id would silently route a message to the wrong place, so it is refused loudly instead.
"""

from __future__ import annotations

import re

PREFIX = "mt"

# Streams.
DELEGATIONS_STREAM = "MT_DELEGATIONS"  # work queue: delegation requests
TOOL_CALLS_STREAM = "MT_TOOL_CALLS"  # work queue: tool calls
TIMERS_STREAM = "MT_TIMERS"  # work queue: pending timers, held until due
UPDATES_STREAM = "MT_UPDATES"  # limits: background updates, one subject per session
TOOL_RESULTS_STREAM = "MT_TOOL_RESULTS"  # limits: tool results, one subject per call
CANCELS_STREAM = "MT_CANCELS"  # limits: cancellations, looked up when work starts
DEAD_STREAM = "MT_DEAD"  # limits: dead letters

# Subjects.
DELEGATION_REQUEST = f"{PREFIX}.delegation.request"
TOOL_CALL = f"{PREFIX}.tool.call"
TOOL_RESULTS = f"{PREFIX}.tool.result.*"
UPDATES = f"{PREFIX}.update.*"
TIMERS = f"{PREFIX}.timer.*"
CANCELS = f"{PREFIX}.cancel.*.*"
DEAD = f"{PREFIX}.dead.>"
REPLICA_STATS = f"{PREFIX}.stats.interaction.*"  # core NATS: replicas' service reports for rollouts

# Durable consumers (one per service: its instances share the work).
BACKGROUND_CONSUMER = "background"
TOOLS_CONSUMER = "tools"
TIMERS_CONSUMER = "timers"

# Session-wide cancellation token (ids must start with a letter or digit, so none can equal it).
WHOLE_SESSION = "_session"

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


class InvalidIdError(ValueError):
    """An id cannot be used as a subject token."""


def is_id(value: object) -> bool:
    """Whether ``value`` can be used as a subject token (see :func:`check_id`)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def check_id(kind: str, value: str) -> str:
    """Return ``value`` if it is a safe subject token (letters, digits, ``_``, ``-``; at most 128)."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidIdError(
            f"{kind} {value!r} is not usable on the bus: use 1-128 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def update_subject(session_id: str) -> str:
    return f"{PREFIX}.update.{check_id('session id', session_id)}"


def tool_result_subject(call_id: str) -> str:
    return f"{PREFIX}.tool.result.{check_id('call id', call_id)}"


def timer_subject(session_id: str) -> str:
    return f"{PREFIX}.timer.{check_id('session id', session_id)}"


def cancel_subject(session_id: str, delegation_id: str | None = None) -> str:
    """``mt.cancel.<session>.<delegation>``; without a delegation id the whole session is cancelled."""
    token = check_id("delegation id", delegation_id) if delegation_id else WHOLE_SESSION
    return f"{PREFIX}.cancel.{check_id('session id', session_id)}.{token}"


def replica_stats_subject(replica_id: str) -> str:
    return f"{PREFIX}.stats.interaction.{check_id('replica id', replica_id)}"


def dead_subject(kind: str) -> str:
    return f"{PREFIX}.dead.{kind}"
