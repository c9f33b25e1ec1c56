"""The JetStream streams, created (or brought up to date) idempotently when a service starts.

Every service calls :func:`ensure_streams` at start; two instances racing to create the same stream
is harmless (the server accepts an identical config, and a differing one is updated in place).
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
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
