"""What the SR and the heatmaps share: the patient and study attributes taken from the
source image, and the dates and times that come from the result."""

from __future__ import annotations

import copy
from datetime import UTC

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from server.dicom import DicomResult

# The root attributes of the Patient, Clinical Trial Subject, General Study, Patient Study and
# Clinical Trial Study modules (PS3.3): copied when, and only when, the source has them.
PATIENT_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientID", "IssuerOfPatientID", "TypeOfPatientID",
    "IssuerOfPatientIDQualifiersSequence", "SourcePatientGroupIdentificationSequence",
    "GroupOfPatientsIdentificationSequence", "PatientBirthDate", "PatientBirthTime",
    "PatientBirthDateInAlternativeCalendar", "PatientDeathDateInAlternativeCalendar",
    "PatientAlternativeCalendar", "PatientSex", "QualityControlSubject", "StrainDescription",
    "StrainNomenclature", "StrainStockSequence", "StrainAdditionalInformation",
    "StrainCodeSequence", "GeneticModificationsSequence", "OtherPatientNames",
    "OtherPatientIDsSequence", "ReferencedPatientPhotoSequence", "EthnicGroupCodeSequence",
    "PatientSpeciesDescription", "PatientSpeciesCodeSequence", "PatientBreedDescription",
    "PatientBreedCodeSequence", "BreedRegistrationSequence", "ResponsiblePerson",
    "ResponsiblePersonRole", "ResponsibleOrganization", "PatientComments",
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "ReferencedPatientSequence",
    "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName",
    "IssuerOfClinicalTrialProtocolID", "OtherClinicalTrialProtocolIDsSequence",
    "ClinicalTrialSiteID", "ClinicalTrialSiteName", "IssuerOfClinicalTrialSiteID",
    "ClinicalTrialSubjectID", "IssuerOfClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID", "IssuerOfClinicalTrialSubjectReadingID",
    "ClinicalTrialProtocolEthicsCommitteeName",
    "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
)  # fmt: skip
STUDY_KEYWORDS: tuple[str, ...] = (
    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName",
    "ConsultingPhysicianIdentificationSequence", "StudyDescription", "ProcedureCodeSequence",
    "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence",
    "NameOfPhysiciansReadingStudy", "PhysiciansReadingStudyIdentificationSequence",
    "ReferencedStudySequence", "StudyID", "RequestingService", "RequestingServiceCodeSequence",
    "ReasonForPerformedProcedureCodeSequence",
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge",
    "PatientSize", "PatientSizeCodeSequence", "PatientBodyMassIndex", "MeasuredAPDimension",
    "MeasuredLateralDimension", "PatientWeight", "MedicalAlerts", "Allergies", "Occupation",
    "SmokingStatus", "AdditionalPatientHistory", "PregnancyStatus", "LastMenstrualDate",
    "PatientSexNeutered", "ReasonForVisit", "ReasonForVisitCodeSequence", "AdmissionID",
    "IssuerOfAdmissionIDSequence", "ServiceEpisodeID", "ServiceEpisodeDescription",
    "IssuerOfServiceEpisodeIDSequence", "PatientState",
    "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription",
    "LongitudinalTemporalOffsetFromEvent", "LongitudinalTemporalEventType",
    "ClinicalTrialTimePointTypeCodeSequence", "IssuerOfClinicalTrialTimePointID",
    "ConsentForClinicalTrialUseSequence",
)  # fmt: skip

# Type 2 attributes of those modules: present in every object, empty where the source has
# none, so that the object is valid without inventing a value.
TYPE2_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
)  # fmt: skip


def check_source(source: Dataset) -> None:
    """The few attributes without which no object can refer to the source."""
    missing = [
        kw for kw in ("StudyInstanceUID", "SOPClassUID", "SOPInstanceUID") if not source.get(kw)
    ]
    if missing:
        raise ValueError(f"the source image's header lacks {', '.join(missing)}")


def blank_patient(source: Dataset) -> Dataset:
    """The source's header with every patient and study attribute empty: what highdicom's
    constructors read (they would reject or choke on some real values, e.g. a patient name
    without "^"); `copy_patient_and_study` then puts the source's own values in."""
    ds = Dataset()
    ds.update({el.tag: el for el in source if el.keyword != "PixelData"})
    for kw in TYPE2_KEYWORDS:
        # New elements: the source's own (shared by the shallow copy) stay untouched.
        tag = tag_for_keyword(kw)
        ds[tag] = DataElement(tag, dictionary_VR(tag), None)
    return ds


def copy_patient_and_study(target: Dataset, source: Dataset) -> None:
    """Make the target's patient and study attributes exactly the source's: copied where
    the source has them, removed where it does not (Type 2 ones kept, empty)."""
    for kw in (*PATIENT_KEYWORDS, *STUDY_KEYWORDS):
        if kw in source:
            target[kw] = copy.deepcopy(source[kw])
        elif kw in TYPE2_KEYWORDS:
            setattr(target, kw, None)
        elif kw in target:
            del target[kw]
    if "SpecificCharacterSet" in source:
        target.SpecificCharacterSet = copy.deepcopy(source.SpecificCharacterSet)
    elif "SpecificCharacterSet" in target:
        del target.SpecificCharacterSet


def stamp_times(target: Dataset, result: DicomResult) -> None:
    """Every date and time of the object is the analysis's (UTC), so that the same result
    always gives the same object."""
    when = result.created_at
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")
    target.InstanceCreationDate, target.InstanceCreationTime = date, time
    target.ContentDate, target.ContentTime = date, time
    target.SeriesDate, target.SeriesTime = date, time
    target.TimezoneOffsetFromUTC = "+0000"
    for item in target.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:  # highdicom stamps its own part with "now"
            item.ContributionDateTime = f"{date}{time}"
    if "DateOfSecondaryCapture" in target:
        target.DateOfSecondaryCapture, target.TimeOfSecondaryCapture = date, time
