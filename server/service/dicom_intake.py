"""DICOM instances in, one analysis each: what a STOW-RS request to CheXray and a pull
from the PACS both do. Each instance stands alone: one that is refused (not a radiograph's
SOP class, damaged, outside the intended use) is reported with its reason and does not
stop the others."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from server.errors import ChexrayError
from server.service.audit import AuditContext
from server.service.predictions import AnalyseOptions, Predictions

log = logging.getLogger("chexray")

# Storage SOP classes of radiographs: CR, and DX for presentation and for processing.
RADIOGRAPH_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
}

# Failure reasons of a Store Instances response (PS3.18 Table I.2-1 / PS3.4 C-STORE).
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122

_REASONS = {
    "unsupported_transfer_syntax": TRANSFER_SYNTAX_NOT_SUPPORTED,
    "image_too_large": OUT_OF_RESOURCES,
    "image_too_many_pixels": OUT_OF_RESOURCES,
    "overloaded": OUT_OF_RESOURCES,
    "storage_full": OUT_OF_RESOURCES,
    "outside_intended_use": PROCESSING_FAILURE,
    "inference_timeout": PROCESSING_FAILURE,
    "engine_failed": PROCESSING_FAILURE,
}


@dataclass(frozen=True)
class InstanceOutcome:
    """One instance: analysed into `study_id`, or refused with a DICOM failure reason,
    CheXray's error code and a message saying why and what to do."""

    sop_class_uid: str
    sop_instance_uid: str
    study_id: str | None = None
    failure_reason: int | None = None
    code: str | None = None
    message: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def stored(self) -> bool:
        return self.study_id is not None


def _identity(data: bytes) -> tuple[str, str, str, str | None]:
    """SOP class, SOP instance, Study Instance UIDs and a reason it cannot be read (None)
    from the header, without reading pixels."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:  # any damage: reported per instance, never raised
        return "", "", "", f"not a readable DICOM file: {type(exc).__name__}: {exc}"
    meta = getattr(ds, "file_meta", None) or {}
    # A truncated file may keep its file meta and lose the dataset's own copies.
    sop_class = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID") or ""
    sop_instance = ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID") or ""
    return str(sop_class), str(sop_instance), str(ds.get("StudyInstanceUID", "") or ""), None


class DicomIntake:
    def __init__(self, predictions: Predictions) -> None:
        self.predictions = predictions

    async def analyse(
        self,
        data: bytes,
        owner_id: int,
        force: bool = False,
        study_uid: str | None = None,
        client: str | None = None,
        admit: bool = False,
        audit: AuditContext | None = None,
    ) -> InstanceOutcome:
        """Analyse one instance into a stored study of `owner_id`. `study_uid`: the study
        the caller said it belongs to (STOW-RS to /studies/{uid}); another is refused.
        `admit`: take its place with the engine here (a refusal is this instance's outcome)
        rather than the caller holding it already. `audit`: who asked; each instance,
        analysed or refused, is recorded in the audit log."""
        sop_class, sop_instance, its_study, unreadable = _identity(data)
        options = AnalyseOptions(
            title=f"DICOM {sop_instance}"[:200],
            owner_id=owner_id,
            store=True,
            force=force,
            client=client,
            audit=audit,
        )
        outcome = self._refusal(sop_class, sop_instance, its_study, unreadable, study_uid)
        if outcome is not None:
            assert outcome.code is not None
            await self.predictions.refused(data, options, outcome.code)
            return outcome
        try:
            if admit:
                with self.predictions.admit(audit=audit):
                    analysis = await self.predictions.analyse(data, options)
            else:
                analysis = await self.predictions.analyse(data, options)
        except ChexrayError as exc:
            return InstanceOutcome(
                sop_class,
                sop_instance,
                None,
                _REASONS.get(exc.code, CANNOT_UNDERSTAND),
                exc.code,
                exc.message,
            )
        result = analysis.result
        return InstanceOutcome(
            sop_class,
            sop_instance,
            result.id,
            warnings=tuple(result.warnings) + tuple(result.image.notes),
        )

    @staticmethod
    def _refusal(
        sop_class: str,
        sop_instance: str,
        its_study: str,
        unreadable: str | None,
        study_uid: str | None,
    ) -> InstanceOutcome | None:
        """Why an instance is refused before it is analysed, if it is."""
        if unreadable:
            return InstanceOutcome(
                sop_class, sop_instance, None, CANNOT_UNDERSTAND, "corrupt_image", unreadable
            )
        if study_uid and its_study != study_uid:
            return InstanceOutcome(
                sop_class,
                sop_instance,
                None,
                DOES_NOT_MATCH,
                "wrong_study",
                f"the instance belongs to study {its_study or '(none)'}, not to {study_uid} "
                "named in the request's path",
            )
        if sop_class not in RADIOGRAPH_SOP_CLASSES:
            return InstanceOutcome(
                sop_class,
                sop_instance,
                None,
                SOP_CLASS_NOT_SUPPORTED,
                "unsupported_sop_class",
                f"SOP class {sop_class or '(none)'} is not a radiograph: only "
                + ", ".join(RADIOGRAPH_SOP_CLASSES.values())
                + " instances are analysed",
            )
        return None
