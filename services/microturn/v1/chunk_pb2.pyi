from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HopStamp(_message.Message):
    __slots__ = ("hop", "sent_unix_us")
    HOP_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    hop: str
    sent_unix_us: int
    def __init__(self, hop: _Optional[str] = ..., sent_unix_us: _Optional[int] = ...) -> None: ...

class ChunkHeader(_message.Message):
    __slots__ = ("session_id", "chunk_index", "media_start_unix_ms", "duration_ms", "hops", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    MEDIA_START_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    chunk_index: int
    media_start_unix_ms: int
    duration_ms: int
    hops: _containers.RepeatedCompositeFieldContainer[HopStamp]
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, session_id: _Optional[str] = ..., chunk_index: _Optional[int] = ..., media_start_unix_ms: _Optional[int] = ..., duration_ms: _Optional[int] = ..., hops: _Optional[_Iterable[_Union[HopStamp, _Mapping]]] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...
