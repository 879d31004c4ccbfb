"""A stored study's results as DICOM: its Structured Report and its heatmap objects
(server/dicom), built on demand from the study row, its heatmaps and the source's header
kept beside them. The UIDs derive from the study's id, so every build of one study gives
the same objects: a download and a push to the PACS are the same instances, and sending
again replaces rather than duplicates."""

from __future__ import annotations

import io

import anyio.to_thread
import cv2
import numpy as np

from server.dicom import DicomResult, FindingValue, to_part10
from server.dicom.heatmaps import heatmap_objects
from server.dicom.sr import structured_report
from server.errors import Conflict
from server.runtime.findings import FINDINGS
from server.store.models import Study

SOURCE_HEADER = "source-header.dcm"


def header_bytes(header: object) -> bytes:
    """A source's header (a pydicom Dataset without pixels) as a Part 10 file to keep."""
    from pydicom.uid import ExplicitVRLittleEndian

    ds = header
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # no pixels left to encode
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)  # type: ignore[attr-defined]
    return buf.getvalue()


def read_header(data: bytes):
    import pydicom

    return pydicom.dcmread(io.BytesIO(data))


def not_dicom() -> Conflict:
    return Conflict(
        "not_dicom",
        "this study was not analysed from a DICOM, so there is no source study to put DICOM "
        "results in: upload the DICOM itself (or send it by DICOMweb)",
    )


def dicom_result(study: Study) -> DicomResult:
    return DicomResult(
        study_id=study.id,
        created_at=study.created_at,
        model_version=study.model_version,
        trained=study.trained,
        backend=study.backend or "unknown",
        precision=study.precision or "unknown",
        findings=tuple(
            FindingValue(name, float(p), bool(c), float(t))
            for name, p, c, t in zip(
                FINDINGS, study.probabilities, study.calls, study.thresholds, strict=True
            )
        ),
    )


def _rgb(png: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(bgr[..., ::-1])


def build_sr(header: bytes, study: Study) -> bytes:
    return to_part10(structured_report(read_header(header), dicom_result(study)))


def build_heatmaps(header: bytes, study: Study, pngs: dict[str, bytes]) -> list[bytes]:
    """One object per finding, in FINDINGS order, from each finding's heatmap PNG."""
    overlays = {finding: _rgb(pngs[finding]) for finding in FINDINGS if finding in pngs}
    objects = heatmap_objects(read_header(header), dicom_result(study), overlays)
    return [to_part10(ds) for ds in objects]


async def sr_bytes(header: bytes, study: Study) -> bytes:
    return await anyio.to_thread.run_sync(build_sr, header, study)


async def heatmap_bytes(header: bytes, study: Study, pngs: dict[str, bytes]) -> list[bytes]:
    return await anyio.to_thread.run_sync(build_heatmaps, header, study, pngs)
