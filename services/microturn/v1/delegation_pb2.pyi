from microturn.v1 import media_pb2 as _media_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Speaker(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPEAKER_UNSPECIFIED: _ClassVar[Speaker]
    SPEAKER_USER: _ClassVar[Speaker]
    SPEAKER_MODEL: _ClassVar[Speaker]
    SPEAKER_BACKGROUND: _ClassVar[Speaker]

class DelegationErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELEGATION_ERROR_CODE_UNSPECIFIED: _ClassVar[DelegationErrorCode]
    DELEGATION_ERROR_CODE_UNSUPPORTED: _ClassVar[DelegationErrorCode]
    DELEGATION_ERROR_CODE_DEADLINE_EXCEEDED: _ClassVar[DelegationErrorCode]
    DELEGATION_ERROR_CODE_TOOL_FAILED: _ClassVar[DelegationErrorCode]
    DELEGATION_ERROR_CODE_BACKEND_UNAVAILABLE: _ClassVar[DelegationErrorCode]
    DELEGATION_ERROR_CODE_CANCELLED: _ClassVar[DelegationErrorCode]
    DELEGATION_ERROR_CODE_INTERNAL: _ClassVar[DelegationErrorCode]

class CancelReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANCEL_REASON_UNSPECIFIED: _ClassVar[CancelReason]
    CANCEL_REASON_SESSION_CLOSED: _ClassVar[CancelReason]
    CANCEL_REASON_USER_CANCELLED: _ClassVar[CancelReason]
    CANCEL_REASON_SUPERSEDED: _ClassVar[CancelReason]
SPEAKER_UNSPECIFIED: Speaker
SPEAKER_USER: Speaker
SPEAKER_MODEL: Speaker
SPEAKER_BACKGROUND: Speaker
DELEGATION_ERROR_CODE_UNSPECIFIED: DelegationErrorCode
DELEGATION_ERROR_CODE_UNSUPPORTED: DelegationErrorCode
DELEGATION_ERROR_CODE_DEADLINE_EXCEEDED: DelegationErrorCode
DELEGATION_ERROR_CODE_TOOL_FAILED: DelegationErrorCode
DELEGATION_ERROR_CODE_BACKEND_UNAVAILABLE: DelegationErrorCode
DELEGATION_ERROR_CODE_CANCELLED: DelegationErrorCode
DELEGATION_ERROR_CODE_INTERNAL: DelegationErrorCode
CANCEL_REASON_UNSPECIFIED: CancelReason
CANCEL_REASON_SESSION_CLOSED: CancelReason
CANCEL_REASON_USER_CANCELLED: CancelReason
CANCEL_REASON_SUPERSEDED: CancelReason

class Utterance(_message.Message):
    __slots__ = ("speaker", "text", "start_unix_ms", "end_unix_ms", "typed")
    SPEAKER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    END_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TYPED_FIELD_NUMBER: _ClassVar[int]
    speaker: Speaker
    text: str
    start_unix_ms: int
    end_unix_ms: int
    typed: bool
    def __init__(self, speaker: _Optional[_Union[Speaker, str]] = ..., text: _Optional[str] = ..., start_unix_ms: _Optional[int] = ..., end_unix_ms: _Optional[int] = ..., typed: _Optional[bool] = ...) -> None: ...

class ContextPackage(_message.Message):
    __slots__ = ("utterances", "request", "timezone", "language")
    UTTERANCES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    utterances: _containers.RepeatedCompositeFieldContainer[Utterance]
    request: str
    timezone: str
    language: str
    def __init__(self, utterances: _Optional[_Iterable[_Union[Utterance, _Mapping]]] = ..., request: _Optional[str] = ..., timezone: _Optional[str] = ..., language: _Optional[str] = ...) -> None: ...

class DelegationRequest(_message.Message):
    __slots__ = ("delegation_id", "session_id", "chunk_index", "context", "deadline_unix_ms", "sent_unix_us")
    DELEGATION_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    delegation_id: str
    session_id: str
    chunk_index: int
    context: ContextPackage
    deadline_unix_ms: int
    sent_unix_us: int
    def __init__(self, delegation_id: _Optional[str] = ..., session_id: _Optional[str] = ..., chunk_index: _Optional[int] = ..., context: _Optional[_Union[ContextPackage, _Mapping]] = ..., deadline_unix_ms: _Optional[int] = ..., sent_unix_us: _Optional[int] = ...) -> None: ...

class PartialText(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class FinalResult(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class DelegationError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: DelegationErrorCode
    message: str
    def __init__(self, code: _Optional[_Union[DelegationErrorCode, str]] = ..., message: _Optional[str] = ...) -> None: ...

class BackgroundUpdate(_message.Message):
    __slots__ = ("delegation_id", "session_id", "seq", "partial", "final", "ui_card", "error", "sent_unix_us")
    DELEGATION_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    UI_CARD_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    delegation_id: str
    session_id: str
    seq: int
    partial: PartialText
    final: FinalResult
    ui_card: _media_pb2.UiCard
    error: DelegationError
    sent_unix_us: int
    def __init__(self, delegation_id: _Optional[str] = ..., session_id: _Optional[str] = ..., seq: _Optional[int] = ..., partial: _Optional[_Union[PartialText, _Mapping]] = ..., final: _Optional[_Union[FinalResult, _Mapping]] = ..., ui_card: _Optional[_Union[_media_pb2.UiCard, _Mapping]] = ..., error: _Optional[_Union[DelegationError, _Mapping]] = ..., sent_unix_us: _Optional[int] = ...) -> None: ...

class CancelDelegation(_message.Message):
    __slots__ = ("delegation_id", "session_id", "reason")
    DELEGATION_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    delegation_id: str
    session_id: str
    reason: CancelReason
    def __init__(self, delegation_id: _Optional[str] = ..., session_id: _Optional[str] = ..., reason: _Optional[_Union[CancelReason, str]] = ...) -> None: ...
