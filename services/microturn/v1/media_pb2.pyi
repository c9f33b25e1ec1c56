from microturn.v1 import chunk_pb2 as _chunk_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PixelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIXEL_FORMAT_UNSPECIFIED: _ClassVar[PixelFormat]
    PIXEL_FORMAT_RGB24: _ClassVar[PixelFormat]

class TextSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEXT_SOURCE_UNSPECIFIED: _ClassVar[TextSource]
    TEXT_SOURCE_USER_TYPED: _ClassVar[TextSource]
    TEXT_SOURCE_BACKGROUND: _ClassVar[TextSource]
PIXEL_FORMAT_UNSPECIFIED: PixelFormat
PIXEL_FORMAT_RGB24: PixelFormat
TEXT_SOURCE_UNSPECIFIED: TextSource
TEXT_SOURCE_USER_TYPED: TextSource
TEXT_SOURCE_BACKGROUND: TextSource

class AudioPcm(_message.Message):
    __slots__ = ("sample_rate_hz", "channels", "pcm_s16le")
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    PCM_S16LE_FIELD_NUMBER: _ClassVar[int]
    sample_rate_hz: int
    channels: int
    pcm_s16le: bytes
    def __init__(self, sample_rate_hz: _Optional[int] = ..., channels: _Optional[int] = ..., pcm_s16le: _Optional[bytes] = ...) -> None: ...

class VideoFrame(_message.Message):
    __slots__ = ("capture_unix_ms", "width", "height", "format", "data")
    CAPTURE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    capture_unix_ms: int
    width: int
    height: int
    format: PixelFormat
    data: bytes
    def __init__(self, capture_unix_ms: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., format: _Optional[_Union[PixelFormat, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class TextInput(_message.Message):
    __slots__ = ("text", "source", "created_unix_ms", "delegation_id")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DELEGATION_ID_FIELD_NUMBER: _ClassVar[int]
    text: str
    source: TextSource
    created_unix_ms: int
    delegation_id: str
    def __init__(self, text: _Optional[str] = ..., source: _Optional[_Union[TextSource, str]] = ..., created_unix_ms: _Optional[int] = ..., delegation_id: _Optional[str] = ...) -> None: ...

class InputChunk(_message.Message):
    __slots__ = ("header", "audio", "video", "text", "resume")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    header: _chunk_pb2.ChunkHeader
    audio: AudioPcm
    video: _containers.RepeatedCompositeFieldContainer[VideoFrame]
    text: _containers.RepeatedCompositeFieldContainer[TextInput]
    resume: ResumeState
    def __init__(self, header: _Optional[_Union[_chunk_pb2.ChunkHeader, _Mapping]] = ..., audio: _Optional[_Union[AudioPcm, _Mapping]] = ..., video: _Optional[_Iterable[_Union[VideoFrame, _Mapping]]] = ..., text: _Optional[_Iterable[_Union[TextInput, _Mapping]]] = ..., resume: _Optional[_Union[ResumeState, _Mapping]] = ...) -> None: ...

class ResumeState(_message.Message):
    __slots__ = ("text_in_ids", "text_out_ids", "audio_out_levels", "queued_text_ids", "in_delegation", "delegation", "speaking", "decoder_pending", "vocoder_tail")
    TEXT_IN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_OUT_IDS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_OUT_LEVELS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_TEXT_IDS_FIELD_NUMBER: _ClassVar[int]
    IN_DELEGATION_FIELD_NUMBER: _ClassVar[int]
    DELEGATION_FIELD_NUMBER: _ClassVar[int]
    SPEAKING_FIELD_NUMBER: _ClassVar[int]
    DECODER_PENDING_FIELD_NUMBER: _ClassVar[int]
    VOCODER_TAIL_FIELD_NUMBER: _ClassVar[int]
    text_in_ids: _containers.RepeatedScalarFieldContainer[int]
    text_out_ids: _containers.RepeatedScalarFieldContainer[int]
    audio_out_levels: bytes
    queued_text_ids: _containers.RepeatedScalarFieldContainer[int]
    in_delegation: bool
    delegation: bytes
    speaking: bool
    decoder_pending: bytes
    vocoder_tail: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, text_in_ids: _Optional[_Iterable[int]] = ..., text_out_ids: _Optional[_Iterable[int]] = ..., audio_out_levels: _Optional[bytes] = ..., queued_text_ids: _Optional[_Iterable[int]] = ..., in_delegation: _Optional[bool] = ..., delegation: _Optional[bytes] = ..., speaking: _Optional[bool] = ..., decoder_pending: _Optional[bytes] = ..., vocoder_tail: _Optional[_Iterable[float]] = ...) -> None: ...

class UiCard(_message.Message):
    __slots__ = ("card_id", "title", "body", "fields")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CARD_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    card_id: str
    title: str
    body: str
    fields: _containers.ScalarMap[str, str]
    def __init__(self, card_id: _Optional[str] = ..., title: _Optional[str] = ..., body: _Optional[str] = ..., fields: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DelegationOpened(_message.Message):
    __slots__ = ("delegation_id", "request")
    DELEGATION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    delegation_id: str
    request: str
    def __init__(self, delegation_id: _Optional[str] = ..., request: _Optional[str] = ...) -> None: ...

class BackgroundUpdateConsumed(_message.Message):
    __slots__ = ("delegation_id", "seq", "text")
    DELEGATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    delegation_id: str
    seq: int
    text: str
    def __init__(self, delegation_id: _Optional[str] = ..., seq: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class SpeakingChanged(_message.Message):
    __slots__ = ("speaking",)
    SPEAKING_FIELD_NUMBER: _ClassVar[int]
    speaking: bool
    def __init__(self, speaking: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("delegation_opened", "background_update", "ui_card", "speaking")
    DELEGATION_OPENED_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_UPDATE_FIELD_NUMBER: _ClassVar[int]
    UI_CARD_FIELD_NUMBER: _ClassVar[int]
    SPEAKING_FIELD_NUMBER: _ClassVar[int]
    delegation_opened: DelegationOpened
    background_update: BackgroundUpdateConsumed
    ui_card: UiCard
    speaking: SpeakingChanged
    def __init__(self, delegation_opened: _Optional[_Union[DelegationOpened, _Mapping]] = ..., background_update: _Optional[_Union[BackgroundUpdateConsumed, _Mapping]] = ..., ui_card: _Optional[_Union[UiCard, _Mapping]] = ..., speaking: _Optional[_Union[SpeakingChanged, _Mapping]] = ...) -> None: ...

class OutputChunk(_message.Message):
    __slots__ = ("header", "audio", "text", "events", "model_version", "engine_us", "resume")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_US_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    header: _chunk_pb2.ChunkHeader
    audio: AudioPcm
    text: str
    events: _containers.RepeatedCompositeFieldContainer[Event]
    model_version: str
    engine_us: int
    resume: ResumeState
    def __init__(self, header: _Optional[_Union[_chunk_pb2.ChunkHeader, _Mapping]] = ..., audio: _Optional[_Union[AudioPcm, _Mapping]] = ..., text: _Optional[str] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., model_version: _Optional[str] = ..., engine_us: _Optional[int] = ..., resume: _Optional[_Union[ResumeState, _Mapping]] = ...) -> None: ...
