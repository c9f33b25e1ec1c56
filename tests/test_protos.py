"""The contracts: every message round-trips, the stubs match the .proto files, services have the
right shapes."""

from __future__ import annotations

import filecmp

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from microturn.protocol import codegen
from microturn.v1 import (
    chunk_pb2,
    delegation_pb2,
    interaction_pb2,
    interaction_pb2_grpc,
    media_pb2,
    tools_pb2,
    tools_pb2_grpc,
)

MODULES = [chunk_pb2, media_pb2, interaction_pb2, delegation_pb2, tools_pb2]
ALL_MESSAGES = sorted(
    {
        (m.__name__, name): getattr(m, name) for m in MODULES for name in m.DESCRIPTOR.message_types_by_name
    }.items()
)


def _fill(msg: Message, depth: int = 0) -> None:
    """Set every field to a distinct non-default value (first member of each oneof)."""
    seen_oneofs = set()
    for i, f in enumerate(msg.DESCRIPTOR.fields, start=1):
        if f.containing_oneof is not None:
            if f.containing_oneof.name in seen_oneofs:
                continue
            seen_oneofs.add(f.containing_oneof.name)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            getattr(msg, f.name)[f"k{i}"] = (
                f"v{i}" if f.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_STRING else i
            )
            continue
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if depth > 3:
                continue
            sub = getattr(msg, f.name).add() if f.is_repeated else getattr(msg, f.name)
            _fill(sub, depth + 1)
            if not f.is_repeated and not sub.ListFields():
                sub.SetInParent()
            continue
        value = _scalar(f, i)
        if f.is_repeated:
            getattr(msg, f.name).extend([value, value])
        else:
            setattr(msg, f.name, value)


def _scalar(f: FieldDescriptor, i: int):
    if f.type == FieldDescriptor.TYPE_STRING:
        return f"s{i}-é"
    if f.type == FieldDescriptor.TYPE_BYTES:
        return bytes([i, 0, 255, i])
    if f.type == FieldDescriptor.TYPE_BOOL:
        return True
    if f.type == FieldDescriptor.TYPE_ENUM:
        return f.enum_type.values[-1].number
    if f.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return i + 0.5
    if f.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return -(2**40) - i
    if f.type in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return 2**40 + i
    return i


@pytest.mark.parametrize("cls", [c for _, c in ALL_MESSAGES], ids=[f"{m}.{n}" for (m, n), _ in ALL_MESSAGES])
def test_every_message_round_trips(cls):
    msg = cls()
    _fill(msg)
    data = msg.SerializeToString()
    back = cls.FromString(data)
    assert back == msg
    # every non-oneof field survived with a non-default value
    set_names = {f.name for f, _ in back.ListFields()}
    for f in cls.DESCRIPTOR.fields:
        if f.containing_oneof is None:
            assert f.name in set_names, f"{cls.__name__}.{f.name} lost in the round trip"


def test_every_oneof_member_round_trips():
    """_fill takes the first member of each oneof; check every other member too."""
    checked = 0
    for _, cls in ALL_MESSAGES:
        for oneof in cls.DESCRIPTOR.oneofs:
            for f in oneof.fields:
                msg = cls()
                if f.type == FieldDescriptor.TYPE_MESSAGE:
                    _fill(getattr(msg, f.name))
                    getattr(msg, f.name).SetInParent()
                else:
                    setattr(msg, f.name, _scalar(f, 3))
                back = cls.FromString(msg.SerializeToString())
                assert back.WhichOneof(oneof.name) == f.name
                assert back == msg
                checked += 1
    assert checked >= 10


def test_media_messages_carry_a_chunk_header():
    for cls in (media_pb2.InputChunk, media_pb2.OutputChunk):
        assert cls.DESCRIPTOR.fields_by_name["header"].message_type.full_name == "microturn.v1.ChunkHeader"


def test_stubs_match_protos(tmp_path):
    written = codegen.generate(tmp_path)
    committed = codegen.STUB_ROOT / "microturn" / "v1"
    names = sorted(p.name for p in written)
    assert names == sorted(p.name for p in committed.iterdir() if p.is_file()), (
        "stub files differ: run `make protos`"
    )
    _match, mismatch, errors = filecmp.cmpfiles(
        tmp_path / "microturn" / "v1", committed, names, shallow=False
    )
    assert not mismatch and not errors, f"stale stubs {mismatch + errors}: run `make protos`"


def test_service_shapes():
    interaction = interaction_pb2.DESCRIPTOR.services_by_name["Interaction"]
    converse = interaction.methods_by_name["Converse"]
    assert converse.client_streaming and converse.server_streaming
    tools = tools_pb2.DESCRIPTOR.services_by_name["Tools"]
    assert {m.name for m in tools.methods} == {"Call", "ListTools"}
    assert hasattr(interaction_pb2_grpc, "InteractionServicer")
    assert hasattr(tools_pb2_grpc, "ToolsStub")
