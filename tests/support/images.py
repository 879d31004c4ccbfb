"""Test X-rays made on the spot: PNG, JPEG with EXIF orientation, and DICOM via pydicom."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np

from server.runtime.checkset import anatomy  # noqa: F401  (the tests' X-ray too)


def png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def jpeg(img: np.ndarray, orientation: int | None = None, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    data = buf.tobytes()
    if orientation is None:
        return data
    # APP1 Exif with a single IFD0 entry: Orientation (0x0112), SHORT, 1 value.
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + app1 + data[2:]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size and holds one tiny IDAT: small on disk, huge if decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def dicom(
    values: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    window: tuple[float, float] | None = None,
    frames: int = 1,
    rescale: tuple[float, float] | None = None,
    transfer_syntax: str | None = None,
    patient: bool = True,
) -> bytes:
    """An uncompressed (or compressed, via pydicom's encoders) DICOM of uint16 `values`."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if patient:
        ds.PatientName = "Doe^Jane"
        ds.PatientID = "PID-4711"
        ds.PatientBirthDate = "19700101"
    arr = np.asarray(values, np.uint16)
    if frames > 1:
        arr = np.stack([arr] + [np.zeros_like(arr)] * (frames - 1))
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = arr.tobytes()
    if transfer_syntax is not None:
        ds.compress(transfer_syntax, arr)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_ramp(height: int = 240, width: int = 200) -> bytes:
    """A 12-bit DICOM whose pixels ramp from 0 to 4095."""
    ramp = np.rint(np.linspace(0, 4095, height * width)).reshape(height, width)
    return dicom(ramp.astype(np.uint16))
