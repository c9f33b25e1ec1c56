"""The updates of one delegation, numbered 1, 2, 3… and published to the session's subject.

Each update's bus message id is ``<delegation_id>:<seq>``: when a delegation is re-run after a crash
the updates it had already sent are dropped by JetStream as duplicates, and the rest follow on.
A final or error update ends the stream; nothing can be sent after it.
"""

from __future__ import annotations

import time

from opentelemetry import trace

from microturn.bus import Bus, subjects, trace_headers
from microturn.v1 import delegation_pb2, media_pb2

ErrorCode = delegation_pb2.DelegationErrorCode


class UpdateStream:
    def __init__(self, bus: Bus, request: delegation_pb2.DelegationRequest) -> None:
        self.bus = bus
        self.delegation_id = request.delegation_id
        self.session_id = request.session_id
        self.subject = subjects.update_subject(request.session_id)
        self.seq = 0
        self.finished = False
        self.outcome = ""  # "final" or the error code's name, once finished
        self.streamed_text = ""

    async def partial(self, text: str) -> None:
        if text:
            self.streamed_text += text
            await self._send(partial=delegation_pb2.PartialText(text=text))

    async def card(self, card: media_pb2.UiCard) -> None:
        await self._send(ui_card=card)

    async def final(self, text: str) -> None:
        await self._send(final=delegation_pb2.FinalResult(text=text), last=True)

    async def error(self, code: int, message: str) -> None:
        await self._send(error=delegation_pb2.DelegationError(code=code, message=message), last=True)

    async def _send(self, last: bool = False, **kind) -> None:
        if self.finished:
            raise RuntimeError(f"delegation {self.delegation_id} already ended")
        self.seq += 1
        update = delegation_pb2.BackgroundUpdate(
            delegation_id=self.delegation_id,
            session_id=self.session_id,
            seq=self.seq,
            sent_unix_us=time.time_ns() // 1000,
            **kind,
        )
        trace.get_current_span().add_event(
            "update", {"update.seq": self.seq, "update.kind": next(iter(kind))}
        )
        await self.bus.publish(
            self.subject, update, msg_id=f"{self.delegation_id}:{self.seq}", headers=trace_headers()
        )
        if last:
            self.finished = True
            error = kind.get("error")
            self.outcome = ErrorCode.Name(error.code) if error is not None else "final"
