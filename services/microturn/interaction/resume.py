"""Resume points on the wire: the engine's ``ResumePoint`` <-> the ``ResumeState`` proto.

A resume point leaves the replica in every output chunk and comes back from the client in a
replay, so ``from_proto`` is a trust boundary: it checks what a proto can get wrong (types,
sizes) and the engine's ``validate_resume`` checks the values against the model.
"""

from __future__ import annotations

import numpy as np

from microturn.engine import ResumePoint
from microturn.interaction.errors import Code, StreamError
from microturn.v1 import media_pb2

# far above any model's needs; a bound so a hostile message cannot make us allocate much
MAX_IDS = 1 << 16


def to_proto(rp: ResumePoint) -> media_pb2.ResumeState:
    return media_pb2.ResumeState(
        text_in_ids=rp.text_in_ids,
        text_out_ids=rp.text_out_ids,
        audio_out_levels=rp.audio_out_levels.tobytes(),
        queued_text_ids=rp.queued_text_ids,
        in_delegation=rp.in_delegation,
        delegation=rp.delegation,
        speaking=rp.speaking,
        decoder_pending=rp.decoder_pending,
        vocoder_tail=rp.vocoder_tail.tolist(),
    )


def from_proto(msg: media_pb2.ResumeState, chunk_index: int) -> ResumePoint:
    if (
        max(len(msg.text_in_ids), len(msg.text_out_ids), len(msg.queued_text_ids), len(msg.vocoder_tail))
        > MAX_IDS
    ):
        raise StreamError(Code.ERROR_CODE_PROTOCOL, "resume: oversized resume state", chunk_index)
    return ResumePoint(
        text_in_ids=list(msg.text_in_ids),
        text_out_ids=list(msg.text_out_ids),
        audio_out_levels=np.frombuffer(msg.audio_out_levels, dtype=np.uint8).copy(),
        queued_text_ids=list(msg.queued_text_ids),
        in_delegation=msg.in_delegation,
        delegation=bytes(msg.delegation),
        speaking=msg.speaking,
        decoder_pending=bytes(msg.decoder_pending),
        vocoder_tail=np.asarray(msg.vocoder_tail, dtype=np.float32),
    )
