"""The result of one X-ray as a DICOM Structured Report: TID 1500 Measurement Report in a
Comprehensive SR, placed in the source image's study as a new series.

Per finding, one TID 1501 measurement group: the finding type (SNOMED CT), a tracking
identifier and UID, the probability (NUM, unit "1"), the present/absent call as a
qualitative evaluation, the algorithm (TID 4019: CheXray, the model version, the threshold,
backend and precision as parameters) and the source image. Comprehensive SR rather than
Comprehensive 3D SR: the report has no 3D coordinates, and more archives and viewers know it.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dicom_codes

from server.dicom import DicomResult, FindingValue, uids
from server.dicom import codes as cx
from server.dicom._common import blank_patient, check_source, copy_patient_and_study, stamp_times

SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "CheXray report"
UNTRAINED_TEXT = (
    "UNTRAINED: the networks that produced this report have random weights; "
    "its probabilities and calls are meaningless and must not be used."
)
# TID 1500 row 12 "Qualitative Evaluations" (document level), where the warning goes.
_QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")


def series_description(result: DicomResult) -> str:
    return SERIES_DESCRIPTION if result.trained else f"{SERIES_DESCRIPTION} (UNTRAINED)"


def algorithm_parameters(result: DicomResult, finding: FindingValue) -> list[str]:
    """TID 4019 Algorithm Parameters, one "name=value" each; the threshold as repr() so
    that it reads back as the very float that made the call."""
    return [
        f"threshold={finding.threshold!r}",
        f"backend={result.backend}",
        f"precision={result.precision}",
        f"trained={'true' if result.trained else 'false'}",
    ]


def _group(source: Dataset, result: DicomResult, finding: FindingValue) -> Dataset:
    code = cx.FINDING_CODES[finding.name]
    algorithm = hd.sr.AlgorithmIdentification(
        name=cx.ALGORITHM_NAME,
        version=result.model_version,
        parameters=algorithm_parameters(result, finding),
        family=cx.ALGORITHM_FAMILY,
        manufacturer=cx.MANUFACTURER,
    )
    probability = hd.sr.Measurement(
        name=cx.PROBABILITY,
        value=float(finding.probability),
        unit=cx.UNIT_ONE,
        referenced_images=[hd.sr.SourceImageForMeasurement.from_source_image(source)],
    )
    call = hd.sr.QualitativeEvaluation(
        name=code, value=cx.PRESENT if finding.present else cx.ABSENT
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.tracking_uid(result.study_id, finding.name),
            identifier=f"CheXray {finding.name}",
        ),
        finding_type=code,
        algorithm_id=algorithm,
        measurements=[probability],
        qualitative_evaluations=[call],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )


def structured_report(source: Dataset, result: DicomResult) -> Dataset:
    """The TID 1500 report of `result` on the image whose header is `source` (Pixel Data
    not needed). Patient and study attributes are the source's, nothing else."""
    check_source(source)
    unknown = [f.name for f in result.findings if f.name not in cx.FINDING_CODES]
    if unknown or not result.findings:
        raise ValueError(f"no DICOM code for findings {unknown or '(none given)'}")

    observer = hd.sr.ObserverContext(
        observer_type=dicom_codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids.DEVICE_OBSERVER_UID,
            name=cx.DEVICE_NAME,
            manufacturer_name=cx.MANUFACTURER,
            model_name=cx.MODEL_NAME,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=cx.PROCEDURE_CHEST_RADIOGRAPH,
        imaging_measurements=[_group(source, result, f) for f in result.findings],
    )
    if not result.trained:
        warning = hd.sr.ContainerContentItem(
            name=_QUALITATIVE_EVALUATIONS,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        warning.ContentSequence = hd.sr.ContentSequence(
            [
                hd.sr.TextContentItem(
                    name=cx.COMMENT,
                    value=UNTRAINED_TEXT,
                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
                )
            ]
        )
        report[0].ContentSequence.append(warning)

    sr = hd.sr.ComprehensiveSR(
        evidence=[blank_patient(source)],
        content=report[0],
        series_instance_uid=uids.sr_series_uid(result.study_id),
        series_number=SERIES_NUMBER,
        sop_instance_uid=uids.sr_instance_uid(result.study_id),
        instance_number=1,
        manufacturer=cx.MANUFACTURER,
        is_complete=True,  # every finding CheXray reports is in it
        is_final=False,  # a machine's preliminary reading, not a radiologist's report
        is_verified=False,
        series_description=series_description(result),
        manufacturer_model_name=cx.MODEL_NAME,
        software_versions=result.model_version,
    )
    copy_patient_and_study(sr, source)
    stamp_times(sr, result)
    return sr
