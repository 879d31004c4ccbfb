"""CheXray's results as DICOM objects that can go back into a PACS: a TID 1500 Measurement
Report (Comprehensive SR) per analysed image and one Secondary Capture heatmap per finding.

A pure library: it builds datasets from the source image's header and a result; sending them
is the caller's business. `structured_report` is in `server.dicom.sr`, `heatmap_objects` in
`server.dicom.heatmaps`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian


@dataclass(frozen=True)
class FindingValue:
    name: str  # one of server.runtime.findings.FINDINGS
    probability: float
    present: bool  # probability >= threshold
    threshold: float


@dataclass(frozen=True)
class DicomResult:
    study_id: str  # CheXray's study id: the objects' UIDs derive from it
    created_at: datetime  # UTC, when analysed: content date/time
    model_version: str
    trained: bool  # False: random-weight networks, results meaningless
    backend: str  # e.g. "openvino-cpu-bf16"
    precision: str  # e.g. "bf16"
    findings: tuple[FindingValue, ...]  # FINDINGS order


def to_part10(ds: Dataset) -> bytes:
    """The dataset as a Part 10 file (preamble, file meta, Explicit VR Little Endian), as
    STOW-RS and a PACS expect it."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    out = Dataset()
    out.update(ds)  # a shallow copy: the caller's file meta and preamble stay as they were
    out.file_meta = meta
    out.preamble = b"\x00" * 128
    buf = io.BytesIO()
    out.save_as(buf, enforce_file_format=True, little_endian=True, implicit_vr=False)
    return buf.getvalue()
