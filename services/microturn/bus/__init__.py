"""The message bus (NATS JetStream) between the interaction, background and tool services.

Streams, subjects and delivery guarantees are listed in docs/BACKGROUND_AND_TOOLS.md. Typical use on
the interaction side::

    bus = await Bus.connect(settings.nats, settings.bus, name="interaction")
    client = DelegationClient(bus)
    await client.delegate(request)                    # de-duplicated by request.delegation_id
    updates = await client.session_updates(session_id)
    async for delivery in updates:                    # redelivered until acked
        feed(delivery.update)
        await delivery.ack()
    await client.cancel(session_id)                   # session closed: cancel all its work
"""

from microturn.bus import rejects, subjects
from microturn.bus.connection import Bus, trace_context, trace_headers
from microturn.bus.delegations import CancelReason, DelegationClient, SessionUpdates, UpdateDelivery
from microturn.bus.errors import (
    Defer,
    PayloadTooLarge,
    PermanentError,
    PublishError,
    Rejected,
    RetryableError,
)
from microturn.bus.rejects import Rejections
from microturn.bus.streams import (
    SERVICE_CONSUMERS,
    Durable,
    durable,
    ensure_streams,
    ensure_topology,
    stream_configs,
)
from microturn.bus.workqueue import Attempt, WorkQueue

__all__ = [
    "SERVICE_CONSUMERS",
    "Attempt",
    "Bus",
    "CancelReason",
    "Defer",
    "DelegationClient",
    "Durable",
    "PayloadTooLarge",
    "PermanentError",
    "PublishError",
    "Rejected",
    "Rejections",
    "RetryableError",
    "SessionUpdates",
    "UpdateDelivery",
    "WorkQueue",
    "durable",
    "ensure_streams",
    "ensure_topology",
    "rejects",
    "stream_configs",
    "subjects",
    "trace_context",
    "trace_headers",
]
