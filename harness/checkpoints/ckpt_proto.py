"""The message layout of a MindSpore ``.ckpt``, as protobuf classes built here: no ``protoc``,
no generated code, no MindSpore import.

MindSpore 2.x's own ``checkpoint.proto`` (proto2) declares::

    message Checkpoint {
      message Value {
        required string tag = 1;
        oneof value { TensorProto tensor = 2; MapTensorProto maptensor = 3; }
      }
      repeated Value value = 1;
    }
    message TensorProto {
      repeated int64 dims = 1;          // not packed: proto2 writes one varint per dim
      required string tensor_type = 2;  // "Float32", "Int64", ... or "str"
      required bytes tensor_content = 3;
    }
    message MapTensorProto { repeated TensorProto tensor = 1; }

:data:`LAYOUT` below has the same field numbers and wire types, so it writes the same bytes
and reads every file that one reads. It differs where that makes reading safer:

- ``tag`` and ``tensor_type`` are ``bytes``: proto2 does not check a ``string``'s UTF-8
  (protobuf hands back ``bytes`` for a bad one); the reader decodes and refuses in one line.
- every field is ``optional``: a missing ``required`` one would be a parse error that names
  no field, and the reader says which is missing; the writer sets every field, so every
  field is written, as ``required`` would have it.
- ``MapTensorProto`` is empty: map parameters are refused, and an empty message keeps their
  content as unparsed bytes (no nested messages built for a file that is refused).
- no ``oneof``: it changes nothing on the wire.
"""
from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError  # noqa: F401 - what parsing a bad message raises

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "nlparity.mindspore_checkpoint"   # not MindSpore's names: its own file may share the process

# message -> its fields: (name, number, label, scalar type or message name)
LAYOUT = {
    "TensorProto": (("dims", 1, _F.LABEL_REPEATED, _F.TYPE_INT64),
                    ("tensor_type", 2, _F.LABEL_OPTIONAL, _F.TYPE_BYTES),
                    ("tensor_content", 3, _F.LABEL_OPTIONAL, _F.TYPE_BYTES)),
    "MapTensorProto": (),
    "Value": (("tag", 1, _F.LABEL_OPTIONAL, _F.TYPE_BYTES),
              ("tensor", 2, _F.LABEL_OPTIONAL, "TensorProto"),
              ("maptensor", 3, _F.LABEL_OPTIONAL, "MapTensorProto")),
    "Checkpoint": (("value", 1, _F.LABEL_REPEATED, "Value"),),
}


def _message_classes() -> dict:
    file = descriptor_pb2.FileDescriptorProto(name="nlparity/mindspore_checkpoint.proto", package=_PACKAGE,
                                              syntax="proto2")
    for name, fields in LAYOUT.items():
        message = file.message_type.add(name=name)
        for field, number, label, kind in fields:
            if isinstance(kind, str):
                message.field.add(name=field, number=number, label=label, type=_F.TYPE_MESSAGE,
                                  type_name=f".{_PACKAGE}.{kind}")
            else:
                message.field.add(name=field, number=number, label=label, type=kind)
    pool = descriptor_pool.DescriptorPool()   # a pool of our own: nothing registered process-wide
    pool.AddSerializedFile(file.SerializeToString())
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
            for name in LAYOUT}


_CLASSES = _message_classes()
Checkpoint = _CLASSES["Checkpoint"]
Value = _CLASSES["Value"]
TensorProto = _CLASSES["TensorProto"]
