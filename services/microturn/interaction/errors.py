"""Typed errors of the Interaction stream, as ServerMessages."""

from __future__ import annotations

from microturn.v1 import interaction_pb2

Code = interaction_pb2.ErrorCode

# Codes a client may retry (possibly on another replica, with a replay).
RETRYABLE = {Code.ERROR_CODE_UNKNOWN_SESSION, Code.ERROR_CODE_OVER_CAPACITY, Code.ERROR_CODE_DRAINING}


class StreamError(Exception):
    """Raised inside the replica; becomes one Error message on the stream."""

    def __init__(self, code: int, message: str, chunk_index: int = 0, retry_after_ms: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.chunk_index = chunk_index
        self.retry_after_ms = retry_after_ms

    def to_message(self, session_id: str) -> interaction_pb2.ServerMessage:
        return error_message(self.code, self.message, session_id, self.chunk_index, self.retry_after_ms)


def error_message(
    code: int, message: str, session_id: str = "", chunk_index: int = 0, retry_after_ms: int = 0
) -> interaction_pb2.ServerMessage:
    return interaction_pb2.ServerMessage(
        error=interaction_pb2.Error(
            code=code,
            message=message,
            session_id=session_id,
            chunk_index=chunk_index,
            retryable=code in RETRYABLE,
            retry_after_ms=retry_after_ms,
        )
    )
