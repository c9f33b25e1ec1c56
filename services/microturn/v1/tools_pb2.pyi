from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ToolErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOOL_ERROR_CODE_UNSPECIFIED: _ClassVar[ToolErrorCode]
    TOOL_ERROR_CODE_UNKNOWN_TOOL: _ClassVar[ToolErrorCode]
    TOOL_ERROR_CODE_INVALID_ARGUMENTS: _ClassVar[ToolErrorCode]
    TOOL_ERROR_CODE_TOO_LARGE: _ClassVar[ToolErrorCode]
    TOOL_ERROR_CODE_TIMEOUT: _ClassVar[ToolErrorCode]
    TOOL_ERROR_CODE_EXECUTION_FAILED: _ClassVar[ToolErrorCode]
TOOL_ERROR_CODE_UNSPECIFIED: ToolErrorCode
TOOL_ERROR_CODE_UNKNOWN_TOOL: ToolErrorCode
TOOL_ERROR_CODE_INVALID_ARGUMENTS: ToolErrorCode
TOOL_ERROR_CODE_TOO_LARGE: ToolErrorCode
TOOL_ERROR_CODE_TIMEOUT: ToolErrorCode
TOOL_ERROR_CODE_EXECUTION_FAILED: ToolErrorCode

class ToolCall(_message.Message):
    __slots__ = ("call_id", "tool", "schema", "arguments_json", "deadline_unix_ms", "session_id", "delegation_id")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DELEGATION_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    tool: str
    schema: str
    arguments_json: str
    deadline_unix_ms: int
    session_id: str
    delegation_id: str
    def __init__(self, call_id: _Optional[str] = ..., tool: _Optional[str] = ..., schema: _Optional[str] = ..., arguments_json: _Optional[str] = ..., deadline_unix_ms: _Optional[int] = ..., session_id: _Optional[str] = ..., delegation_id: _Optional[str] = ...) -> None: ...

class ToolError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: ToolErrorCode
    message: str
    def __init__(self, code: _Optional[_Union[ToolErrorCode, str]] = ..., message: _Optional[str] = ...) -> None: ...

class ToolResult(_message.Message):
    __slots__ = ("call_id", "result_json", "error", "duration_us")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DURATION_US_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    result_json: str
    error: ToolError
    duration_us: int
    def __init__(self, call_id: _Optional[str] = ..., result_json: _Optional[str] = ..., error: _Optional[_Union[ToolError, _Mapping]] = ..., duration_us: _Optional[int] = ...) -> None: ...

class ToolSpec(_message.Message):
    __slots__ = ("name", "description", "schema", "arguments_json_schema", "timeout_ms", "max_argument_bytes", "max_result_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_ARGUMENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULT_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    schema: str
    arguments_json_schema: str
    timeout_ms: int
    max_argument_bytes: int
    max_result_bytes: int
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., schema: _Optional[str] = ..., arguments_json_schema: _Optional[str] = ..., timeout_ms: _Optional[int] = ..., max_argument_bytes: _Optional[int] = ..., max_result_bytes: _Optional[int] = ...) -> None: ...

class ListToolsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListToolsResponse(_message.Message):
    __slots__ = ("tools",)
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    tools: _containers.RepeatedCompositeFieldContainer[ToolSpec]
    def __init__(self, tools: _Optional[_Iterable[_Union[ToolSpec, _Mapping]]] = ...) -> None: ...
