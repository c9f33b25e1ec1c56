from microturn.v1 import media_pb2 as _media_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_UNKNOWN_SESSION: _ClassVar[ErrorCode]
    ERROR_CODE_OVER_CAPACITY: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_CHUNK: _ClassVar[ErrorCode]
    ERROR_CODE_OUT_OF_ORDER: _ClassVar[ErrorCode]
    ERROR_CODE_PROTOCOL: _ClassVar[ErrorCode]
    ERROR_CODE_DRAINING: _ClassVar[ErrorCode]
    ERROR_CODE_INTERNAL: _ClassVar[ErrorCode]
    ERROR_CODE_DROPPED: _ClassVar[ErrorCode]
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_UNKNOWN_SESSION: ErrorCode
ERROR_CODE_OVER_CAPACITY: ErrorCode
ERROR_CODE_INVALID_CHUNK: ErrorCode
ERROR_CODE_OUT_OF_ORDER: ErrorCode
ERROR_CODE_PROTOCOL: ErrorCode
ERROR_CODE_DRAINING: ErrorCode
ERROR_CODE_INTERNAL: ErrorCode
ERROR_CODE_DROPPED: ErrorCode

class OpenSession(_message.Message):
    __slots__ = ("session_id", "seed", "first_chunk_index", "first_media_start_unix_ms", "live_from_chunk_index", "model_version", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FIRST_CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    FIRST_MEDIA_START_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LIVE_FROM_CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    seed: int
    first_chunk_index: int
    first_media_start_unix_ms: int
    live_from_chunk_index: int
    model_version: str
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, session_id: _Optional[str] = ..., seed: _Optional[int] = ..., first_chunk_index: _Optional[int] = ..., first_media_start_unix_ms: _Optional[int] = ..., live_from_chunk_index: _Optional[int] = ..., model_version: _Optional[str] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CloseSession(_message.Message):
    __slots__ = ("session_id", "reason", "moved")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    reason: str
    moved: bool
    def __init__(self, session_id: _Optional[str] = ..., reason: _Optional[str] = ..., moved: _Optional[bool] = ...) -> None: ...

class ClientMessage(_message.Message):
    __slots__ = ("open", "chunk", "close")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    open: OpenSession
    chunk: _media_pb2.InputChunk
    close: CloseSession
    def __init__(self, open: _Optional[_Union[OpenSession, _Mapping]] = ..., chunk: _Optional[_Union[_media_pb2.InputChunk, _Mapping]] = ..., close: _Optional[_Union[CloseSession, _Mapping]] = ...) -> None: ...

class SessionLimits(_message.Message):
    __slots__ = ("chunk_ms", "sample_rate_hz", "max_video_frames_per_chunk", "video_width", "video_height", "max_text_bytes_per_chunk")
    CHUNK_MS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    MAX_VIDEO_FRAMES_PER_CHUNK_FIELD_NUMBER: _ClassVar[int]
    VIDEO_WIDTH_FIELD_NUMBER: _ClassVar[int]
    VIDEO_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_BYTES_PER_CHUNK_FIELD_NUMBER: _ClassVar[int]
    chunk_ms: int
    sample_rate_hz: int
    max_video_frames_per_chunk: int
    video_width: int
    video_height: int
    max_text_bytes_per_chunk: int
    def __init__(self, chunk_ms: _Optional[int] = ..., sample_rate_hz: _Optional[int] = ..., max_video_frames_per_chunk: _Optional[int] = ..., video_width: _Optional[int] = ..., video_height: _Optional[int] = ..., max_text_bytes_per_chunk: _Optional[int] = ...) -> None: ...

class SessionAccepted(_message.Message):
    __slots__ = ("session_id", "replica_id", "model_version", "limits", "resume_span_chunks")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    RESUME_SPAN_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    replica_id: str
    model_version: str
    limits: SessionLimits
    resume_span_chunks: int
    def __init__(self, session_id: _Optional[str] = ..., replica_id: _Optional[str] = ..., model_version: _Optional[str] = ..., limits: _Optional[_Union[SessionLimits, _Mapping]] = ..., resume_span_chunks: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "session_id", "chunk_index", "retryable", "retry_after_ms")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    session_id: str
    chunk_index: int
    retryable: bool
    retry_after_ms: int
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., session_id: _Optional[str] = ..., chunk_index: _Optional[int] = ..., retryable: _Optional[bool] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("accepted", "chunk", "error")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    accepted: SessionAccepted
    chunk: _media_pb2.OutputChunk
    error: Error
    def __init__(self, accepted: _Optional[_Union[SessionAccepted, _Mapping]] = ..., chunk: _Optional[_Union[_media_pb2.OutputChunk, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...
