"""Decode matrix: every format and depth CheXray reads, and each way an upload can be bad."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from server.api.errors import status_of
from server.runtime.decode import DecodeError, decode
from tests.support.images import anatomy, dicom, dicom_ramp, jpeg, png, png_header_only

MAX_BYTES, MAX_PIXELS = 32 * 2**20, 40_000_000
IMG = anatomy()  # float 0..1, 240 x 200
GREY8 = np.rint(IMG * 255).astype(np.uint8)


def run(data: bytes, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS):
    return decode(data, max_bytes, max_pixels)


def refused(data: bytes, code: str, status: int, **limits) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        run(data, **limits)
    assert (info.value.code, status_of(info.value)) == (code, status), info.value.message
    return info.value


def test_png_8_bit_grey_is_kept_exactly() -> None:
    r = run(png(GREY8))
    assert (r.format, r.width, r.height, r.bit_depth) == ("png", 200, 240, 8)
    np.testing.assert_array_equal(r.pixels, GREY8)


def test_png_16_bit_is_stretched_to_8_bit() -> None:
    deep = (IMG * 4000 + 1000).astype(np.uint16)  # 12-bit data in a 16-bit PNG
    r = run(png(deep))
    assert r.bit_depth == 16 and r.pixels.dtype == np.uint8
    assert r.pixels.min() == 0 and r.pixels.max() == 255
    lo, hi = deep.min(), deep.max()
    expected = np.rint((deep.astype(np.float32) - lo) * 255 / (hi - lo))
    assert np.abs(r.pixels.astype(int) - expected).max() <= 1


def test_png_rgb_and_rgba() -> None:
    bgr = cv2.merge([GREY8, GREY8, GREY8])
    np.testing.assert_array_equal(run(png(bgr)).pixels, GREY8)
    opaque = cv2.merge([GREY8, GREY8, GREY8, np.full_like(GREY8, 255)])
    np.testing.assert_array_equal(run(png(opaque)).pixels, GREY8)
    half = cv2.merge([GREY8, GREY8, GREY8, np.full_like(GREY8, 0)])
    half[..., 3][:, 100:] = 255
    r = run(png(half))
    assert r.pixels[:, :100].max() == 0, "transparent pixels carry no signal"
    np.testing.assert_array_equal(r.pixels[:, 100:], GREY8[:, 100:])


def test_jpeg_respects_exif_orientation() -> None:
    plain = run(jpeg(GREY8))
    assert (plain.format, plain.width, plain.height) == ("jpeg", 200, 240)
    assert np.abs(plain.pixels.astype(int) - GREY8).mean() < 2
    rotated = run(jpeg(GREY8, orientation=6))  # 6: rotate 90 degrees clockwise to view
    assert (rotated.width, rotated.height) == (240, 200)
    upright = cv2.rotate(GREY8, cv2.ROTATE_90_CLOCKWISE)
    assert np.abs(rotated.pixels.astype(int) - upright).mean() < 2


def test_jpeg_colour() -> None:
    bgr = cv2.merge([GREY8, GREY8, GREY8])
    assert np.abs(run(jpeg(bgr)).pixels.astype(int) - GREY8).mean() < 2


@pytest.mark.parametrize("bits", [12, 16])
def test_dicom_monochrome2_with_voi_window(bits: int) -> None:
    top = 2**bits - 1
    values = np.rint(IMG * top).astype(np.uint16)
    centre, width = 0.5 * top, 0.5 * top  # shows the middle half of the range
    r = run(dicom(values, bits_stored=bits, window=(centre, width)))
    assert (r.format, r.width, r.height, r.bit_depth) == ("dicom", 200, 240, bits)
    x = values.astype(np.float64)
    expected = np.clip((x - (centre - 0.5)) / (width - 1) + 0.5, 0, 1) * 255
    assert np.abs(r.pixels.astype(int) - np.rint(expected)).max() <= 1
    assert r.pixels.min() == 0 and r.pixels.max() == 255  # the window clips both ends


def test_dicom_modality_lut_comes_before_the_window() -> None:
    values = np.rint(IMG * 1000).astype(np.uint16)
    # Stored 0..1000 with slope 2, intercept -1000 -> -1000..1000; window on that scale.
    r = run(dicom(values, rescale=(2.0, -1000.0), window=(0.0, 1000.0)))
    hu = values * 2.0 - 1000.0
    expected = np.clip((hu + 0.5) / 999 + 0.5, 0, 1) * 255
    assert np.abs(r.pixels.astype(int) - np.rint(expected)).max() <= 1


def test_dicom_without_window_is_stretched() -> None:
    values = np.rint(IMG * 3000 + 500).astype(np.uint16)
    r = run(dicom(values))
    assert r.pixels.min() == 0 and r.pixels.max() == 255


@pytest.mark.parametrize(("bits", "window"), [(12, (1800.0, 2500.0)), (16, None)])
def test_monochrome1_decodes_like_monochrome2(bits: int, window) -> None:
    """The same anatomy stored both ways gives the same 8-bit picture (air dark)."""
    top = 2**bits - 1
    m2 = np.rint(IMG * top).astype(np.uint16)
    m1 = (top - m2).astype(np.uint16)
    # The inverse of the DICOM LINEAR window at centre c is the one at top - c + 1.
    w1 = None if window is None else (top - window[0] + 1, window[1])
    a = run(dicom(m2, bits_stored=bits, window=window))
    b = run(dicom(m1, bits_stored=bits, photometric="MONOCHROME1", window=w1))
    assert "MONOCHROME1: inverted so that air is dark" in b.notes
    # Rounding at exact .5 steps may differ by one grey level, nothing more.
    assert np.abs(a.pixels.astype(int) - b.pixels).max() <= 1
    assert (a.pixels != b.pixels).mean() < 0.01
    assert a.pixels[120, 64] < a.pixels[120, 100], "lung (air) darker than the mediastinum"


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEG2000Lossless"])
def test_compressed_dicom(syntax: str) -> None:
    import pydicom.uid

    values = np.rint(IMG * 4095).astype(np.uint16)
    uid = getattr(pydicom.uid, syntax)
    r = run(dicom(values, transfer_syntax=uid, window=(2048, 4096)))
    plain = run(dicom(values, window=(2048, 4096)))
    np.testing.assert_array_equal(r.pixels, plain.pixels)
    assert r.dicom["TransferSyntax"].startswith(uid.name)


def test_dicom_with_a_syntax_nothing_decodes() -> None:
    from pydicom.encaps import encapsulate

    data = bytearray(dicom(np.zeros((16, 16), np.uint16)))
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(bytes(data)))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\0" * 60])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    err = refused(buf.getvalue(), "unsupported_transfer_syntax", 415)
    assert "unsupported transfer syntax MPEG2" in err.message


def test_multiframe_dicom_uses_the_first_frame() -> None:
    values = np.rint(IMG * 4095).astype(np.uint16)
    r = run(dicom(values, frames=3, window=(2048, 4096)))
    assert r.notes == ["multi-frame DICOM: the first of 3 frames was analysed"]
    np.testing.assert_array_equal(r.pixels, run(dicom(values, window=(2048, 4096))).pixels)


def test_patient_data_never_leaves_decode() -> None:
    r = run(dicom(np.rint(IMG * 4095).astype(np.uint16)))
    text = repr(r.dicom) + repr(r.notes)
    for secret in ("Doe", "Jane", "PID-4711", "19700101"):
        assert secret not in text
    assert r.dicom["Modality"] == "DX" and r.dicom["PhotometricInterpretation"] == "MONOCHROME2"


def test_empty_upload() -> None:
    refused(b"", "empty_image", 400)


def test_text_file_named_png_is_not_an_image() -> None:
    refused(b"hello, this is not an X-ray\n" * 10, "unsupported_format", 415)


def test_too_many_bytes() -> None:
    refused(png(GREY8), "image_too_large", 413, max_bytes=1000)


def test_huge_claimed_size_is_refused_before_decoding() -> None:
    bomb = png_header_only(30000, 30000)
    assert len(bomb) < 200
    err = refused(bomb, "image_too_many_pixels", 413)
    assert "30000x30000" in err.message
    big = dicom(np.zeros((4, 4), np.uint16))
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(big))
    ds.Rows, ds.Columns = 30000, 30000
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    refused(buf.getvalue(), "image_too_many_pixels", 413)


def test_zero_sized_image() -> None:
    refused(png_header_only(0, 0), "empty_image", 422)


@pytest.mark.parametrize("kind", ["png", "jpeg", "dicom"])
def test_truncated_files(kind: str) -> None:
    data = {
        "png": png(GREY8),
        "jpeg": jpeg(GREY8),
        "dicom": dicom(np.rint(IMG * 4095).astype(np.uint16)),
    }[kind]
    refused(data[: len(data) // 2], "corrupt_image", 422)
    if kind == "dicom":  # cut inside the header: pydicom reads what is there
        refused(data[:300], "no_pixel_data", 422)
    else:
        refused(data[:20], "corrupt_image", 422)


def deflated(values: np.ndarray, **kwargs) -> bytes:
    """The test DICOM re-saved with the Deflated Explicit VR Little Endian syntax."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(io.BytesIO(dicom(values, **kwargs)))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_a_deflated_dicom_is_read() -> None:
    ramp = np.rint(np.linspace(0, 4095, 240 * 200)).reshape(240, 200).astype(np.uint16)
    img = decode(deflated(ramp), 1 << 26, 40_000_000)
    assert (img.width, img.height, img.format) == (200, 240, "dicom")
    assert img.pixels[0, 0] < img.pixels[-1, -1]


def test_a_deflate_bomb_is_refused_before_it_is_inflated() -> None:
    # 2000x2000 zeros at 16 bits: 8 MB inflated from a few kilobytes; the budget of one
    # megapixel allows about 3 MB.
    data = deflated(np.zeros((2000, 2000), np.uint16))
    assert len(data) < 100_000
    err = refused(data, "image_too_large", 413, max_pixels=1_000_000)
    assert "inflates" in err.message


def test_only_the_first_frame_is_decoded_and_budgeted() -> None:
    frame = np.rint(anatomy() * 4095).astype(np.uint16)
    img = decode(dicom(frame, frames=40), 1 << 26, 240 * 200)  # 40 frames, budget of one
    assert (img.width, img.height) == (200, 240)
    assert any("first of 40 frames" in n for n in img.notes)


@pytest.mark.parametrize(("centre", "width"), [("", "400"), ("2048", "wide"), ("nan", "100")])
def test_damaged_window_tags_fall_back_to_the_full_range(centre: str, width: str) -> None:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_ramp()))
    # As text (LO): pydicom itself refuses to write such values as DS.
    ds["WindowCenter"] = pydicom.DataElement(0x00281050, "LO", centre)
    ds["WindowWidth"] = pydicom.DataElement(0x00281051, "LO", width)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    img = decode(buf.getvalue(), 1 << 26, 40_000_000)
    assert img.pixels.min() == 0 and img.pixels.max() == 255  # stretched, not black


def test_a_nan_rescale_slope_is_refused_not_analysed_as_black() -> None:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_ramp()))
    ds["RescaleSlope"] = pydicom.DataElement(0x00281053, "LO", "NaN")
    ds.RescaleIntercept = "0"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    err = refused(buf.getvalue(), "corrupt_image", 422)
    assert "RescaleSlope" in err.message
