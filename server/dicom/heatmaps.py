"""One DICOM object per finding showing where the evidence lies: the server's heatmap
already blended over the X-ray, as an RGB Secondary Capture image in a new series of the
source's study, pixel for pixel the source's geometry.

Secondary Capture rather than a Parametric Map or a presentation state: every viewer and
PACS displays an SC image as it is, whereas a Parametric Map (float CAM values) needs a viewer
that colour-maps and overlays it, and a GSPS cannot carry a colour heat map at all. The
cost: the heatmap is a picture, not data to re-threshold.
"""

from __future__ import annotations

from collections.abc import Mapping

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from server.dicom import DicomResult, FindingValue, uids
from server.dicom import codes as cx
from server.dicom._common import blank_patient, check_source, copy_patient_and_study, stamp_times
from server.runtime.findings import FINDINGS

SERIES_NUMBER = 9902
SERIES_DESCRIPTION = "CheXray heatmaps"


def series_description(result: DicomResult) -> str:
    return SERIES_DESCRIPTION if result.trained else f"{SERIES_DESCRIPTION} (UNTRAINED)"


def describe(result: DicomResult, finding: FindingValue) -> str:
    """What the heatmap shows, for ImageComments and DerivationDescription."""
    call = "present" if finding.present else "absent"
    text = (
        f"CheXray heatmap: {finding.name}, probability {finding.probability:.3f}, "
        f"called {call} at threshold {finding.threshold:.3f} (model {result.model_version})"
    )
    if not result.trained:
        text += ". UNTRAINED networks (random weights): meaningless, do not use"
    return text


def _orientation(source: Dataset) -> tuple[str, str] | None:
    value = source.get("PatientOrientation")
    if value is not None and not isinstance(value, str) and len(value) == 2:
        return str(value[0]), str(value[1])
    return None


def _heatmap(
    source: Dataset, result: DicomResult, finding: FindingValue, overlay: np.ndarray
) -> Dataset:
    rows, columns = int(source.Rows), int(source.Columns)
    if overlay.dtype != np.uint8 or overlay.shape != (rows, columns, 3):
        raise ValueError(
            f"the {finding.name} overlay must be uint8 RGB of the source's size "
            f"({rows}x{columns}x3), not {overlay.dtype} {overlay.shape}"
        )
    orientation = _orientation(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=blank_patient(source),
        pixel_array=np.ascontiguousarray(overlay),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=uids.heatmap_series_uid(result.study_id),
        series_number=SERIES_NUMBER,
        sop_instance_uid=uids.heatmap_instance_uid(result.study_id, finding.name),
        # Numbered by the finding's place in FINDINGS, whichever subset is sent.
        instance_number=FINDINGS.index(finding.name) + 1,
        manufacturer=cx.MANUFACTURER,
        # highdicom insists on an orientation for a patient image; where the source has
        # none, the placeholder is emptied below (Type 2C: present, empty, is valid).
        patient_orientation=orientation or ("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=series_description(result),
        manufacturer_model_name=cx.MODEL_NAME,
        software_versions=result.model_version,
    )
    if orientation is None:
        sc.PatientOrientation = None
    copy_patient_and_study(sc, source)
    stamp_times(sc, result)
    # What is drawn over: the source image, referenced with the purpose of the reference.
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ref.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(cx.PURPOSE_SOURCE_IMAGE)]
    sc.SourceImageSequence = [ref]
    sc.DerivationDescription = describe(result, finding)
    sc.ImageComments = describe(result, finding)
    if "BurnedInAnnotation" in source:  # the X-ray shows through, and with it any text
        sc.BurnedInAnnotation = source.BurnedInAnnotation
    if source.get("LossyImageCompression") == "01":
        sc.LossyImageCompression = "01"  # once lossy, every derived image stays so
    # General Series. CheXray reads chest films only, so the picture is of a chest whatever
    # the source says; naming it also tells validators that no Laterality is due (2C).
    sc.BodyPartExamined = source.get("BodyPartExamined") or "CHEST"
    if "Laterality" in source:
        sc.Laterality = source.Laterality
    return sc


def heatmap_objects(
    source: Dataset, result: DicomResult, overlays: Mapping[str, np.ndarray]
) -> list[Dataset]:
    """One Secondary Capture per finding in `overlays` (finding name -> uint8 RGB array of
    the source's Rows x Columns), in FINDINGS order."""
    check_source(source)
    by_name = {f.name: f for f in result.findings}
    unknown = sorted(set(overlays) - set(by_name))
    if unknown:
        raise ValueError(f"overlays for findings without a result: {unknown}")
    return [
        _heatmap(source, result, by_name[name], np.asarray(overlays[name]))
        for name in FINDINGS
        if name in overlays
    ]
