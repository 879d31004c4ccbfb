"""The Open Inference Protocol's tensor encodings (server/api/oip.py): raw and typed contents
to tensors and back, and every malformed tensor refused with a stable code."""

from __future__ import annotations

import numpy as np
import pytest

from server.api import oip
from server.errors import InvalidInput


def raw_bytes(*elements: bytes) -> bytes:
    return b"".join(len(e).to_bytes(4, "little") + e for e in elements)


def test_bytes_elements_round_trip_through_raw_contents() -> None:
    files = [b"\x89PNG first", b"", b"\xff\xd8\xff" + bytes(range(256))]
    t = oip.from_raw("image", "BYTES", [3], raw_bytes(*files))
    assert t.shape == (3,) and t.datatype == "BYTES"
    assert list(t.data) == files
    assert oip.to_raw(t) == raw_bytes(*files)


def test_numbers_round_trip_little_endian() -> None:
    values = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    raw = values.astype("<f4").tobytes()
    t = oip.from_raw("x", "FP32", [2, 3, 4], raw)
    np.testing.assert_array_equal(t.data, values)
    assert oip.to_raw(t) == raw
    flags = oip.from_raw("b", "BOOL", [2, 2], bytes([1, 0, 0, 1]))
    assert flags.data.tolist() == [[True, False], [False, True]]
    assert oip.to_values(flags) == [True, False, False, True]


def test_typed_values_flat_or_nested() -> None:
    flat = oip.from_values("pixels", "UINT8", [1, 2, 2], [0, 128, 255, 7])
    nested = oip.from_values("pixels", "UINT8", [1, 2, 2], [[[0, 128], [255, 7]]])
    assert flat.data.dtype == np.uint8 and flat.data.tolist() == nested.data.tolist()
    assert oip.from_values("image", "BYTES", [2], [b"a", b"bc"]).data.tolist() == [b"a", b"bc"]


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("x", "FP32", [2], b"\0" * 7), "invalid_tensor_size"),
        (("x", "UINT8", [2, -1], b"\0\0"), "invalid_shape"),
        (("x", "BF16", [1], b"\0\0"), "invalid_datatype"),
        (("x", "BYTES", [2], raw_bytes(b"one")), "invalid_tensor_size"),
        (("x", "BYTES", [1], b"\5\0\0\0abc"), "invalid_binary_data"),
        (("x", "BYTES", [1], b"\1\0"), "invalid_binary_data"),
    ],
)
def test_malformed_raw_contents_are_refused(args: tuple, code: str) -> None:
    with pytest.raises(InvalidInput) as info:
        oip.from_raw(*args)
    assert info.value.code == code and "'x'" in info.value.message


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("x", "UINT8", [2], [1, 256]), "invalid_tensor_data"),
        (("x", "UINT8", [2], [1, -1]), "invalid_tensor_data"),
        (("x", "UINT8", [2], [1.5, 2]), "invalid_tensor_data"),
        (("x", "UINT8", [2], ["a", "b"]), "invalid_tensor_data"),
        (("x", "UINT8", [3], [1, 2]), "invalid_tensor_size"),
        (("x", "UINT8", [2, 2], [[1, 2], [3]]), "invalid_tensor_data"),
        (("x", "BYTES", [1], ["text, not bytes"]), "invalid_tensor_data"),
        (("x", "FP32", [True], [1.0]), "invalid_shape"),
    ],
)
def test_malformed_values_are_refused(args: tuple, code: str) -> None:
    with pytest.raises(InvalidInput) as info:
        oip.from_values(*args)
    assert info.value.code == code


def test_error_text_leads_with_the_stable_code() -> None:
    assert oip.error_text(InvalidInput("empty_image", "no bytes")) == "empty_image: no bytes"
