"""What a file is, by its content (never by its name): a Darknet ``.cfg`` or
``.weights`` file, an ONNX model or a PyTorch file, so that a file given in the
wrong place is named for what it is.

``file_kind(path)`` reads the first bytes only:

- ``.weights``: the int32 header ``major = 0, minor <= 2`` (``save_weights``);
- ONNX: a protobuf ``ModelProto`` opening with ``ir_version`` and another of its fields;
- TFLite: a flatbuffer with the file identifier ``TFL3`` at bytes 4-8;
- OpenVINO IR: an XML document whose root element is ``<net>`` (the ``.xml``; its
  ``.bin`` holds raw data, which nothing identifies);
- PyTorch: ``torch.save``'s zip archive (a ``data.pkl`` member) or its legacy pickle;
- ``.cfg``: text whose first line that is not blank or a comment is a ``[section]``.

``pickled_classes(path)`` lists the classes a PyTorch file's pickle names, without
unpickling it, to tell a state_dict from a pickled ``nn.Module``.
"""
import os
import pickletools
import zipfile
from typing import NamedTuple

#: Header versions Darknet's ``load_weights`` reads: ``MAJOR_VERSION.MINOR_VERSION``
#: is 0.2 in both forks (files written before 0.2 store ``seen`` as 32 bits).
MAJOR_VERSION, MAX_MINOR_VERSION = 0, 2

_HEAD = 4096
_ZIP_MAGIC = b"PK\x03\x04"
#: torch.save's legacy (non-zip) format: protocol 2, then the magic number as a LONG1.
_TORCH_LEGACY = b"\x80\x02\x8a\x0a" + (0x1950a86a20f9469cfc6c).to_bytes(10, "little")
#: ``ModelProto`` fields that follow ``ir_version``: field number -> protobuf wire type.
_ONNX_FIELDS = {2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


class FileKind(NamedTuple):
    key: str
    text: str          #: for messages: "an ONNX model"

    def __str__(self):
        return self.text


CFG = FileKind("cfg", "a Darknet .cfg file")
WEIGHTS = FileKind("weights", "a Darknet .weights file")
ONNX = FileKind("onnx", "an ONNX model")
TFLITE = FileKind("tflite", "a TFLite model")
OPENVINO = FileKind("openvino", "an OpenVINO IR model (.xml)")
TORCH = FileKind("torch", "a PyTorch file (torch.save)")
#: What a state_dict file is, for a message about another file given instead.
STATE_DICT = "a state_dict saved with torch.save(model.state_dict(), path)"


def _varint(data, pos):
    """``(value, next position)`` of the protobuf varint at ``pos``, or None."""
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None


def _is_onnx(head):
    first = _varint(head, 0)
    if first is None or first[0] != (1 << 3):                  # field 1 (ir_version), varint
        return False
    version = _varint(head, first[1])
    if version is None or not 1 <= version[0] <= 255:
        return False
    tag = _varint(head, version[1])
    return tag is not None and _ONNX_FIELDS.get(tag[0] >> 3) == tag[0] & 7


def _is_tflite(head):
    return head[4:8] == b"TFL3"


def _is_openvino(head):
    """An XML declaration or comments, then ``<net``."""
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        text = head[:e.start].decode("utf-8-sig", "ignore")
    text = text.lstrip()
    if text.startswith("<?xml"):
        end = text.find("?>")
        text = text[end + 2:].lstrip() if end >= 0 else ""
    while text.startswith("<!--"):
        end = text.find("-->")
        text = text[end + 3:].lstrip() if end >= 0 else ""
    return text.startswith("<net") and text[4:5] in (" ", ">", "\t", "\n", "\r")


def _is_weights(head):
    if len(head) < 12:
        return False
    major, minor = (int.from_bytes(head[i:i + 4], "little", signed=True) for i in (0, 4))
    return major == MAJOR_VERSION and 0 <= minor <= MAX_MINOR_VERSION


def _is_cfg(head):
    if b"\0" in head:
        return False
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:                  # not just a character cut at the end
            return False
        text = head[:e.start].decode("utf-8-sig")
    for line in text.splitlines():
        line = "".join(line.split())
        if line and line[0] not in "#;":
            return line[0] == "[" and line.endswith("]")
    return False


def _is_torch(path, head):
    if head.startswith(_TORCH_LEGACY):
        return True
    if not head.startswith(_ZIP_MAGIC):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("data.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def file_kind(path):
    """The ``FileKind`` of the file at ``path`` by its first bytes, or None (unknown,
    or not a readable regular file)."""
    try:
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            head = f.read(_HEAD)
    except OSError:
        return None
    if _is_torch(path, head):
        return TORCH
    if _is_onnx(head):
        return ONNX
    if _is_tflite(head):
        return TFLITE
    if _is_openvino(head):
        return OPENVINO
    if _is_weights(head):
        return WEIGHTS
    if _is_cfg(head):
        return CFG
    return None


def pickled_classes(path):
    """The classes (``module.name``) the pickle of a ``torch.save`` zip archive names,
    in order, read with ``pickletools`` (nothing is unpickled); () when the file is
    not such an archive."""
    try:
        with zipfile.ZipFile(path) as z:
            member = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            data = z.read(member) if member else b""
    except (zipfile.BadZipFile, OSError):
        return ()
    names, strings, memo = [], [], {}
    top = None                              # the string the previous opcode left on top
    try:
        for op, arg, _ in pickletools.genops(data):
            pushed = None
            if op.name == "GLOBAL":
                names.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif "UNICODE" in op.name:
                pushed = arg
            elif op.name in ("MEMOIZE", "BINPUT", "LONG_BINPUT"):
                key = len(memo) if op.name == "MEMOIZE" else arg
                memo[key] = top
                pushed = top
            elif op.name in ("BINGET", "LONG_BINGET"):
                pushed = memo.get(arg)
            if pushed is not None and op.name not in ("MEMOIZE", "BINPUT", "LONG_BINPUT"):
                strings.append(pushed)
            top = pushed
    except Exception:                       # a damaged pickle: the classes read so far
        pass
    return tuple(dict.fromkeys(names))


#: Where a pickled ``torch.nn.Module``'s classes live.
_MODULE_PACKAGES = ("torch.nn.modules.", "torch.nn.parallel.", "torch.jit.",
                    "torch.fx.", "torchvision.models.")


def pickled_module_class(path):
    """For a PyTorch file holding a pickled ``nn.Module`` (``torch.save(model)``: its
    pickle names ``torch.nn`` module classes), the first class it names, the model's
    own; else None."""
    classes = pickled_classes(path)
    if any(name.startswith(_MODULE_PACKAGES) for name in classes):
        return classes[0]
    return None
