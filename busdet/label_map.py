"""Read ``label_map.pbtxt``, the one source of truth for class ids.

The file is the Object Detection API's ``StringIntLabelMap`` text proto::

    item { id: 1 name: "benign" }
    item { id: 2 name: "malignant" }

It is parsed with protobuf's own text-format parser against a descriptor of that
message built here, so quoting, comments and field order follow the proto rules
instead of a hand-written line splitter. The file is UTF-8 (a byte-order mark is
dropped) or UTF-16 with its mark, as Windows editors write it. Every problem,
a missing or unreadable file included, is one :class:`LabelMapError` naming the file.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Dict

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from busdet.files import NOT_FOUND_REASON, read_text, unreadable_reason

# Id 0 is reserved for the background class by Model Garden's RetinaNet.
BACKGROUND_ID = 0


class LabelMapError(ValueError):
    """A label map that cannot be used; the message names the file and why, on one line."""


@functools.lru_cache(maxsize=None)
def _label_map_message_class():
    """Builds the StringIntLabelMap message class (same fields as the OD API proto)."""
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="busdet_string_int_label_map.proto", package="busdet", syntax="proto2")
    item = file_proto.message_type.add(name="StringIntLabelMapItem")
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    string_type = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    int_type = descriptor_pb2.FieldDescriptorProto.TYPE_INT32
    item.field.add(name="name", number=1, label=optional, type=string_type)
    item.field.add(name="id", number=2, label=optional, type=int_type)
    item.field.add(name="display_name", number=3, label=optional, type=string_type)
    label_map = file_proto.message_type.add(name="StringIntLabelMap")
    label_map.field.add(name="item", number=1, label=repeated,
                        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                        type_name=".busdet.StringIntLabelMapItem")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("busdet.StringIntLabelMap"))


def parse_label_map(text: str, source: str = "<label map>") -> Dict[int, str]:
    """Parses label-map text into ``{id: name}``, ordered by id.

    Raises:
      LabelMapError: on a syntax error, a missing/duplicate id or name, id <= 0, or a name with
        spaces at an end or control characters (it could never equal a class folder or CSV label).
    """
    message = _label_map_message_class()()
    try:
        # Label maps written for the Object Detection API may carry more fields
        # (frequency, keypoints...): they do not concern us, so they are skipped.
        text_format.Parse(text, message, allow_unknown_field=True)
    except text_format.ParseError as error:
        raise LabelMapError(f"{source}: not a valid label map: {error}") from None
    classes: Dict[int, str] = {}
    for item in message.item:
        if not item.HasField("id") or not item.name:
            raise LabelMapError(f"{source}: every item needs an id and a name")
        if item.id <= BACKGROUND_ID:
            raise LabelMapError(f"{source}: id {item.id} of {item.name!r} must be >= 1 (0 is background)")
        if item.id in classes or item.name in classes.values():
            raise LabelMapError(f"{source}: duplicate id or name in item {item.id} {item.name!r}")
        if item.name != item.name.strip() or not item.name.isprintable():
            raise LabelMapError(f"{source}: name {item.name!r} of id {item.id} has spaces at an end or "
                                "control characters")
        classes[item.id] = item.name
    if not classes:
        raise LabelMapError(f"{source}: no items")
    return dict(sorted(classes.items()))


def load_label_map(path: str | Path) -> Dict[int, str]:
    """Reads a label map file into ``{id: name}`` (see :func:`parse_label_map`).

    Raises:
      LabelMapError: the file is missing, a folder, a named pipe, unreadable or not text, or its
        content is not a label map.
    """
    path = Path(path)
    reason = unreadable_reason(path)  # a folder, a pipe, a broken link, no permission
    if reason == NOT_FOUND_REASON:
        raise LabelMapError(f"{path}: label map not found (expected a label_map.pbtxt)")
    if reason is not None:
        raise LabelMapError(f"{path}: cannot read the label map ({reason})")
    try:
        text = read_text(path)
    except OSError as error:  # replaced or unreadable since the check
        raise LabelMapError(f"{path}: cannot read the label map ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise LabelMapError(f"{path}: cannot read the label map (not UTF-8 text: byte "
                            f"0x{error.object[error.start]:02x} at offset {error.start}); save it as UTF-8") from None
    return parse_label_map(text, source=str(path))


def name_to_id(classes: Dict[int, str]) -> Dict[str, int]:
    """Inverts ``{id: name}`` into ``{name: id}``."""
    return {name: class_id for class_id, name in classes.items()}
