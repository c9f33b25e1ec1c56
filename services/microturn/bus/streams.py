"""The JetStream topology: streams and the services' durable consumers, in one table each.

With ``bus.manage_topology`` on (the local run), every service calls :func:`ensure_streams` at start
and its work queue creates its own consumer; two instances racing to create the same stream is
harmless (the server accepts an identical config, and a differing one is updated in place). On
Kubernetes a hook Job (``microturn bus setup``) creates both before any service or KEDA scaler needs
them, and the services, whose NATS users may not manage streams, only bind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from microturn.bus import subjects
from microturn.config import BusSettings

log = logging.getLogger(__name__)


def stream_configs(settings: BusSettings) -> list[StreamConfig]:
    storage = StorageType.FILE if settings.storage == "file" else StorageType.MEMORY
    dup = settings.duplicate_window_s

    def cfg(name: str, subj: list[str], retention: RetentionPolicy, max_age: float = 0, **kw) -> StreamConfig:
        return StreamConfig(
            name=name,
            subjects=subj,
            retention=retention,
            storage=storage,
            duplicate_window=min(dup, max_age) if max_age else dup,
            max_age=max_age or None,
            max_msg_size=settings.max_payload_bytes,
            discard=DiscardPolicy.OLD,
            num_replicas=1,
            **kw,
        )

    return [
        cfg(subjects.DELEGATIONS_STREAM, [subjects.DELEGATION_REQUEST], RetentionPolicy.WORK_QUEUE),
        cfg(subjects.TOOL_CALLS_STREAM, [subjects.TOOL_CALL], RetentionPolicy.WORK_QUEUE),
        cfg(subjects.TIMERS_STREAM, [subjects.TIMERS], RetentionPolicy.WORK_QUEUE),
        cfg(subjects.UPDATES_STREAM, [subjects.UPDATES], RetentionPolicy.LIMITS, settings.updates_max_age_s),
        cfg(
            subjects.TOOL_RESULTS_STREAM,
            [subjects.TOOL_RESULTS],
            RetentionPolicy.LIMITS,
            settings.tool_results_max_age_s,
            max_msgs_per_subject=1,
        ),
        cfg(
            subjects.CANCELS_STREAM,
            [subjects.CANCELS],
            RetentionPolicy.LIMITS,
            settings.cancels_max_age_s,
            max_msgs_per_subject=1,
        ),
        cfg(subjects.DEAD_STREAM, [subjects.DEAD], RetentionPolicy.LIMITS, settings.dead_letter_max_age_s),
    ]


async def ensure_streams(js: JetStreamContext, settings: BusSettings) -> None:
    """Create the streams that are missing and update the ones whose config drifted."""
    for config in stream_configs(settings):
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
                log.info("created stream %s", config.name)
                continue
            except BadRequestError:  # another instance created it first, maybe with older settings
                pass
        await js.update_stream(config)


FROM_SETTINGS = -1  # max_attempts: use bus.max_attempts


@dataclass(frozen=True)
class Durable:
    """A durable pull consumer that the instances of one service share."""

    stream: str
    name: str
    subject: str
    max_attempts: int | None = FROM_SETTINGS  # None: unbounded (a queue that defers by design)


# The services' consumers; KEDA scales each service on its consumer's lag, so these names are also
# the chart's scaler targets.
SERVICE_CONSUMERS = (
    Durable(subjects.DELEGATIONS_STREAM, subjects.BACKGROUND_CONSUMER, subjects.DELEGATION_REQUEST),
    Durable(subjects.TOOL_CALLS_STREAM, subjects.TOOLS_CONSUMER, subjects.TOOL_CALL),
    Durable(subjects.TIMERS_STREAM, subjects.TIMERS_CONSUMER, subjects.TIMERS, max_attempts=None),
)


def durable(name: str) -> Durable:
    """The service consumer called ``name``."""
    for d in SERVICE_CONSUMERS:
        if d.name == name:
            return d
    raise KeyError(f"no durable consumer named {name!r}")


def attempts(d: Durable, settings: BusSettings) -> int | None:
    return settings.max_attempts if d.max_attempts == FROM_SETTINGS else d.max_attempts


def consumer_config(d: Durable, settings: BusSettings) -> ConsumerConfig:
    """The one config of a durable consumer, whoever creates it (a service or the setup job): the
    server refuses to re-create a consumer with a different config."""
    max_attempts = attempts(d, settings)
    return ConsumerConfig(
        durable_name=d.name,
        filter_subject=d.subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=settings.ack_wait_s,
        # One delivery past the limit, so a message that crashed every attempt is seen once more
        # and dead-lettered instead of silently dropped by the server.
        max_deliver=max_attempts + 1 if max_attempts is not None else -1,
        max_ack_pending=settings.max_ack_pending,
    )


async def ensure_consumer(js: JetStreamContext, d: Durable, settings: BusSettings) -> None:
    """Create the consumer, or bring its config up to date (``add_consumer`` does both)."""
    await js.add_consumer(d.stream, consumer_config(d, settings))


async def ensure_topology(js: JetStreamContext, settings: BusSettings) -> list[str]:
    """Streams, then every service consumer; returns what exists afterwards, for the setup job's log."""
    await ensure_streams(js, settings)
    for d in SERVICE_CONSUMERS:
        await ensure_consumer(js, d, settings)
    return [c.name for c in stream_configs(settings)] + [f"{d.stream}/{d.name}" for d in SERVICE_CONSUMERS]
