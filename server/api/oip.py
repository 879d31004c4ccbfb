"""The Open Inference Protocol's tensor encodings, shared by its REST and gRPC front ends.

A tensor travels as its name, datatype and shape, and its elements in row-major order,
either as raw bytes (REST's binary tensor data extension, gRPC's raw_input_contents and
raw_output_contents: little-endian numbers, BOOL one byte each, each BYTES element after
its 4-byte little-endian length) or as typed values (REST's JSON `data`, gRPC's
`contents`). Here they become the service's Tensors (numpy arrays) and back; whatever
does not fit is InvalidInput with a stable code, never a 500.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from server.errors import ChexrayError, InvalidInput
from server.service.inference import Tensor

BYTES = "BYTES"
# Fixed-size datatypes: their little-endian numpy types.
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in {
        "BOOL": "|b1",
        "UINT8": "|u1",
        "UINT16": "<u2",
        "UINT32": "<u4",
        "UINT64": "<u8",
        "INT8": "|i1",
        "INT16": "<i2",
        "INT32": "<i4",
        "INT64": "<i8",
        "FP16": "<f2",
        "FP32": "<f4",
        "FP64": "<f8",
    }.items()
}
# What this server speaks beyond the core protocol (Triton's name for it).
EXTENSIONS = ("binary_tensor_data",)


def error_text(exc: ChexrayError) -> str:
    """An error as the protocol carries it, one string, the stable code first."""
    return f"{exc.code}: {exc.message}"


def _invalid(code: str, message: str) -> InvalidInput:
    return InvalidInput(code, message)


def checked_shape(name: str, shape: Sequence[object]) -> tuple[int, ...]:
    dims = tuple(shape)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise _invalid(
            "invalid_shape", f"input {name!r}: shape {list(dims)} must be whole numbers >= 0"
        )
    return dims  # type: ignore[return-value]


def _known(name: str, datatype: str) -> None:
    if datatype != BYTES and datatype not in DTYPES:
        raise _invalid(
            "invalid_datatype",
            f"input {name!r}: datatype {datatype!r} is not one this server reads "
            f"({', '.join([*DTYPES, BYTES])})",
        )


def _size_mismatch(name: str, shape: tuple[int, ...], what: str) -> InvalidInput:
    return _invalid(
        "invalid_tensor_size",
        f"input {name!r}: shape {list(shape)} holds {math.prod(shape)} elements, but {what}",
    )


def split_bytes(name: str, raw: bytes | memoryview) -> list[bytes]:
    """BYTES elements from raw contents: each after its 4-byte little-endian length."""
    view = memoryview(raw)
    elements, pos = [], 0
    while pos < len(view):
        if pos + 4 > len(view):
            raise _invalid(
                "invalid_binary_data",
                f"input {name!r}: a BYTES element's 4-byte length is cut short at byte {pos}",
            )
        size = int.from_bytes(view[pos : pos + 4], "little")
        pos += 4
        if pos + size > len(view):
            raise _invalid(
                "invalid_binary_data",
                f"input {name!r}: a BYTES element claims {size} bytes, only "
                f"{len(view) - pos} are left",
            )
        elements.append(bytes(view[pos : pos + size]))
        pos += size
    return elements


def _bytes_tensor(name: str, shape: tuple[int, ...], elements: list[bytes]) -> Tensor:
    if len(elements) != math.prod(shape):
        raise _size_mismatch(name, shape, f"{len(elements)} were sent")
    data = np.empty(len(elements), dtype=object)
    data[:] = elements
    return Tensor(name, BYTES, data.reshape(shape))


def from_raw(name: str, datatype: str, shape: Sequence[object], raw: bytes | memoryview) -> Tensor:
    """A tensor from its raw contents."""
    dims = checked_shape(name, shape)
    _known(name, datatype)
    if datatype == BYTES:
        return _bytes_tensor(name, dims, split_bytes(name, raw))
    dtype = DTYPES[datatype]
    if len(raw) != math.prod(dims) * dtype.itemsize:
        raise _size_mismatch(
            name, dims, f"{len(raw)} bytes are {len(raw) / dtype.itemsize:g} {datatype} elements"
        )
    return Tensor(name, datatype, np.frombuffer(raw, dtype).reshape(dims))


def from_values(name: str, datatype: str, shape: Sequence[object], values: object) -> Tensor:
    """A tensor from typed values (flat or nested lists); BYTES elements as bytes."""
    dims = checked_shape(name, shape)
    _known(name, datatype)
    if datatype == BYTES:
        flat = list(np.asarray(values, dtype=object).ravel()) if values is not None else []
        if not all(isinstance(v, bytes) for v in flat):
            raise _invalid("invalid_tensor_data", f"input {name!r}: BYTES elements must be bytes")
        return _bytes_tensor(name, dims, flat)
    dtype = DTYPES[datatype]
    try:
        array = np.asarray(values if values is not None else [])
    except ValueError:
        raise _invalid(
            "invalid_tensor_data", f"input {name!r}: its data is not a regular array"
        ) from None
    if array.size != math.prod(dims):
        raise _size_mismatch(name, dims, f"{array.size} were sent")
    kinds = {"b": "b", "u": "biu", "i": "biu", "f": "biuf"}[dtype.kind]
    if array.size and array.dtype.kind not in kinds:
        raise _invalid(
            "invalid_tensor_data",
            f"input {name!r}: its data ({array.dtype.name}) is not {datatype}",
        )
    if array.size and dtype.kind in "ui":
        info = np.iinfo(dtype)
        if int(array.min()) < info.min or int(array.max()) > info.max:
            raise _invalid(
                "invalid_tensor_data",
                f"input {name!r}: {datatype} values lie in {info.min}..{info.max}",
            )
    return Tensor(name, datatype, array.astype(dtype).reshape(dims))


def to_raw(tensor: Tensor) -> bytes:
    """A tensor's raw contents."""
    if tensor.datatype == BYTES:
        return b"".join(
            len(v).to_bytes(4, "little") + bytes(v) for v in tensor.data.ravel().tolist()
        )
    return np.ascontiguousarray(tensor.data, DTYPES[tensor.datatype]).tobytes()


def to_values(tensor: Tensor) -> list:
    """A tensor's elements as a flat list of numbers or booleans (JSON's `data`)."""
    return tensor.data.ravel().tolist()
