"""Bytes in, an 8-bit grey X-ray out: PNG and JPEG via OpenCV, DICOM via pydicom.

The format comes from the bytes (never the file name or the client's content type), and
size limits are checked against the header before anything is decoded, so a small file
that claims 30000x30000 pixels is refused without allocating them. DICOM patient data
stays out of answers: `dicom` holds technical tags only; the header itself (no pixels) is
carried in `dicom_header` so that a stored study's results can become DICOM objects in the
source's study (server/service/dicom_results.py), and is kept only with such a study.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from server.errors import (
    ChexrayError,
    InvalidInput,
    TooLarge,
    UnprocessableInput,
    UnsupportedInput,
)

# "pixels": an image given already at model resolution (Engine.predict_pixels), never decoded.
Format = Literal["png", "jpeg", "dicom", "pixels"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"

# Technical DICOM attributes that may leave decode (none identifies a patient).
DICOM_TECHNICAL_TAGS = (
    "Modality",
    "PhotometricInterpretation",
    "BitsStored",
    "BitsAllocated",
    "PixelRepresentation",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "ViewPosition",
    "BodyPartExamined",
    "PatientOrientation",
    "SOPClassUID",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "WindowCenter",
    "WindowWidth",
    "RescaleSlope",
    "RescaleIntercept",
)


# Every error decode raises is one of these kinds, with a stable code.
DecodeError = ChexrayError


def empty() -> DecodeError:
    return InvalidInput("empty_image", "the upload is empty: send the image's bytes")


def too_large(size: int, limit: int) -> DecodeError:
    return TooLarge(
        "image_too_large",
        f"the upload is {size / 2**20:.1f} MiB; the limit is {limit / 2**20:.0f} MiB",
    )


def too_many_pixels(width: int, height: int, limit: int) -> DecodeError:
    return TooLarge(
        "image_too_many_pixels",
        f"the image is {width}x{height} = {width * height / 1e6:.0f} megapixels; the limit is "
        f"{limit / 1e6:.0f} megapixels: downscale it before sending",
    )


def unsupported_format() -> DecodeError:
    return UnsupportedInput(
        "unsupported_format",
        "not a PNG, JPEG or DICOM file (judged from its content, not its name)",
    )


def corrupt(kind: str, detail: str) -> DecodeError:
    return UnprocessableInput("corrupt_image", f"the {kind} file cannot be decoded: {detail}")


def zero_sized(kind: str) -> DecodeError:
    return UnprocessableInput("empty_image", f"the {kind} header says the image has no pixels")


@dataclass
class DecodedImage:
    pixels: np.ndarray  # uint8 [height, width], air dark (MONOCHROME2 convention)
    format: Format
    width: int
    height: int
    bit_depth: int  # of the source data
    notes: list[str] = field(default_factory=list)  # what a user should know, e.g. frames
    dicom: dict[str, object] = field(default_factory=dict)  # technical tags only
    # The DICOM's header without its pixel data (a pydicom Dataset): the patient, study and
    # series a result object must name. Never put in an answer.
    dicom_header: object | None = field(default=None, repr=False)
    # The input bytes' SHA-256 (hex), where the server computed it beside the decoding: the
    # audit log knows an input by it.
    sha256: str | None = None


def detect_format(data: bytes) -> Format:
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    raise unsupported_format()


def png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise corrupt("PNG", "no IHDR header (file truncated?)")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def jpeg_size(data: bytes) -> tuple[int, int]:
    """Width and height from the first SOFn marker, without decoding."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise corrupt("JPEG", f"bad marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    raise corrupt("JPEG", "no frame header (file truncated?)")


def _check_pixels(kind: str, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise zero_sized(kind)
    if width * height > max_pixels:
        raise too_many_pixels(width, height, max_pixels)


def _to_grey(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return img
    if img.shape[2] == 4:  # composite over black: transparent means no signal
        alpha = img[..., 3:4].astype(np.float32) / np.iinfo(img.dtype).max
        img = (img[..., :3].astype(np.float32) * alpha).astype(img.dtype)
    return cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY)


def stretch_to_uint8(img: np.ndarray) -> np.ndarray:
    """Linear min..max -> 0..255, for data deeper than 8 bits with no display window."""
    img = img.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return np.zeros(img.shape, np.uint8)
    return np.rint((img - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _decode_raster(data: bytes, kind: Format, max_pixels: int) -> DecodedImage:
    width, height = png_size(data) if kind == "png" else jpeg_size(data)
    name = kind.upper()
    _check_pixels(name, width, height, max_pixels)
    if kind == "jpeg":
        # A truncated JPEG decodes to a grey-padded picture with only a warning: refuse it.
        sos = data.rfind(b"\xff\xda")
        if sos < 0 or data.rfind(b"\xff\xd9") < sos:
            raise corrupt(name, "the image data ends early (file truncated?)")
        # ANYDEPTH|ANYCOLOR applies the EXIF orientation (UNCHANGED would not).
        flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    else:
        flags = cv2.IMREAD_UNCHANGED  # keeps 16 bits and alpha
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None or img.size == 0:
        raise corrupt(name, "the decoder rejected it (file truncated or damaged?)")
    bits = 16 if img.dtype == np.uint16 else 8
    grey = _to_grey(img)
    pixels = grey if grey.dtype == np.uint8 else stretch_to_uint8(grey)
    return DecodedImage(np.ascontiguousarray(pixels), kind, pixels.shape[1], pixels.shape[0], bits)


def _dicom_tags(ds: object) -> dict[str, object]:
    tags: dict[str, object] = {}
    for name in DICOM_TECHNICAL_TAGS:
        value = getattr(ds, name, None)
        if value is None or value == "":
            continue
        if isinstance(value, str | int | float):
            tags[name] = value
        elif all(isinstance(v, str) for v in value):  # a multi-valued string: A\\F
            tags[name] = "\\".join(value)
        else:
            try:
                tags[name] = [float(v) for v in value]
            except (TypeError, ValueError):
                tags[name] = str(value)
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None)
    if uid is not None:
        tags["TransferSyntax"] = f"{uid.name} ({uid})"
    return tags


def _first(value: object) -> float | None:
    """A DICOM number that may be multi-valued (several windows): the first; None when it
    is empty, not a number, or not finite (damaged headers exist in the wild)."""
    try:
        if isinstance(value, str | bytes):
            number = float(value)
        else:
            try:
                number = float(value[0])  # type: ignore[index]
            except TypeError:
                number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, IndexError):
        return None
    return number if np.isfinite(number) else None


def _window(arr: np.ndarray, ds: object) -> np.ndarray | None:
    """VOI LUT or window centre/width (first of several) -> float 0..1, or None."""
    from pydicom.pixels import apply_voi_lut

    if "VOILUTSequence" in ds:
        out = apply_voi_lut(arr, ds, index=0, prefer_lut=True).astype(np.float32)
        lut = ds.VOILUTSequence[0]
        bits = int(lut.LUTDescriptor[2]) if "LUTDescriptor" in lut else 16
        return np.clip(out / float(2**bits - 1), 0.0, 1.0)
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    centre, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if centre is None or width is None or width <= 0:
        return None  # unusable window: the caller stretches the full range instead
    function = str(getattr(ds, "VOILUTFunction", "LINEAR")).upper()
    x = arr.astype(np.float32)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - centre) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - (centre - width / 2)) / width, 0.0, 1.0)
    if width < 1:  # LINEAR needs width >= 1 (PS3.3 C.11.2.1.2)
        return None
    return np.clip((x - (centre - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian


def _file_meta(stream: io.BytesIO):
    """The file meta group alone (preamble, DICM, group 2), the stream left after it."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    read_preamble(stream, False)
    return _read_file_meta_info(stream)


def _inflated(stream: io.BytesIO, meta, limit: int):
    """A deflated DICOM's dataset, inflated under `limit` bytes: a few kilobytes of deflate
    can claim gigabytes, and pydicom would inflate them all before anything is checked."""
    import zlib

    from pydicom.filereader import read_dataset
    from pydicom.uid import ExplicitVRLittleEndian

    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        body = inflater.decompress(stream.read(), limit + 1)
    except zlib.error as exc:
        raise corrupt("DICOM", f"deflated data: {exc}") from None
    if len(body) > limit or inflater.unconsumed_tail:
        raise TooLarge(
            "image_too_large",
            f"the deflated DICOM inflates to more than {limit / 2**20:.0f} MiB: refused",
        )
    ds = read_dataset(io.BytesIO(body), is_implicit_VR=False, is_little_endian=True)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian  # what the inflated bytes now are
    ds.file_meta = meta
    return ds


def _decode_dicom(data: bytes, max_pixels: int) -> DecodedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    errors = (InvalidDicomError, EOFError, ValueError, struct.error, OSError, KeyError)
    try:
        stream = io.BytesIO(data)
        meta = _file_meta(stream)
        if str(meta.get("TransferSyntaxUID", "")) == DEFLATED:
            # Room for the largest image we accept at 16 bits, plus its header.
            ds = _inflated(stream, meta, 2 * max_pixels + 1024 * 1024)
        else:
            ds = pydicom.dcmread(io.BytesIO(data))
    except errors as exc:
        raise corrupt("DICOM", f"{type(exc).__name__}: {exc}") from None
    if "PixelData" not in ds:
        raise UnprocessableInput(
            "no_pixel_data",
            "the DICOM file holds no image (no Pixel Data element: truncated?)",
        )
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise corrupt("DICOM", f"image size: {exc}") from None
    # One frame is decoded (below), with all its samples: that is what the budget bounds.
    _check_pixels("DICOM", cols * samples, rows, max_pixels)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    syntax = ds.file_meta.TransferSyntaxUID if "TransferSyntaxUID" in ds.file_meta else None
    try:
        if frames > 1:
            ds.pixel_array_options(index=0)  # decode the first frame, not all of them
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        name = f"{syntax.name} ({syntax})" if syntax is not None else "unknown"
        raise UnsupportedInput(
            "unsupported_transfer_syntax",
            f"unsupported transfer syntax {name}: no installed decoder can read it "
            f"({exc}); send it uncompressed or as PNG",
        ) from None
    except Exception as exc:  # damaged pixel data: wrong length, broken codestream
        raise corrupt("DICOM", f"pixel data: {type(exc).__name__}: {exc}") from None
    notes = []
    if frames > 1:
        notes.append(f"multi-frame DICOM: the first of {frames} frames was analysed")
    if arr.ndim == 3:  # colour (RGB after pydicom's YBR conversion)
        if arr.dtype not in (np.uint8, np.uint16):
            arr = arr.astype(np.float32)
        grey = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
        pixels = grey if grey.dtype == np.uint8 else stretch_to_uint8(grey)
    else:
        for tag in ("RescaleSlope", "RescaleIntercept"):
            if tag in ds and _first(ds.get(tag)) is None:
                raise UnprocessableInput(
                    "corrupt_image",
                    f"the DICOM's {tag} ({ds.get(tag)!r}) is not a finite number, so its "
                    "pixel values cannot be read: fix the header or send the image as PNG",
                )
        values = apply_modality_lut(arr, ds)
        windowed = _window(values, ds)
        if windowed is not None:
            pixels = np.rint(windowed * 255.0).astype(np.uint8)
        else:
            pixels = stretch_to_uint8(values)
        if photometric == "MONOCHROME1":  # bright air: invert to the MONOCHROME2 convention
            pixels = 255 - pixels
            notes.append("MONOCHROME1: inverted so that air is dark")
    bits = int(getattr(ds, "BitsStored", 8) or 8)
    return DecodedImage(
        np.ascontiguousarray(pixels),
        "dicom",
        pixels.shape[1],
        pixels.shape[0],
        bits,
        notes,
        _dicom_tags(ds),
        _header(ds),
    )


def _header(ds):
    """The dataset without its bulk data (pixels, overlays, waveforms): a few kilobytes."""
    del ds.PixelData
    tags = list(ds.keys())  # the keys alone: values are not parsed (damaged ones exist)
    for tag in tags:
        if 0x5000 <= tag.group <= 0x60FF or tag.group >= 0x7FE0:
            del ds[tag]
    return ds


def decode(data: bytes, max_bytes: int, max_pixels: int) -> DecodedImage:
    """Decode an upload or raise a DecodeError (a ChexrayError kind) with a stable code."""
    if not data:
        raise empty()
    if len(data) > max_bytes:
        raise too_large(len(data), max_bytes)
    kind = detect_format(data)
    if kind == "dicom":
        return _decode_dicom(data, max_pixels)
    return _decode_raster(data, kind, max_pixels)
