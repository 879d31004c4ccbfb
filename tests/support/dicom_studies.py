"""Chest X-ray instances as a modality writes them: CR or DX, with the patient, study and
series attributes a PACS expects, so that results can be placed in the same study."""

from __future__ import annotations

import io

import numpy as np

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def chest_pixels(height: int = 256, width: int = 224, seed: int = 0) -> np.ndarray:
    """12-bit values shaped like a frontal chest film: bright body, two dark lung fields."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.full((height, width), 2600.0, np.float32)
    for cx in (0.3, 0.7):
        lung = ((x / width - cx) / 0.16) ** 2 + ((y / height - 0.48) / 0.3) ** 2 < 1
        img[lung] = 900.0
    img += rng.normal(0, 60, img.shape)
    return np.clip(img, 0, 4095).astype(np.uint16)


def chest_instance(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_class: str = CR_IMAGE_STORAGE,
    modality: str = "CR",
    view: str | None = "PA",
    body_part: str | None = "CHEST",
    orientation: str | None = None,
    pixels: np.ndarray | None = None,
    instance_number: int = 1,
    seed: int = 0,
) -> bytes:
    """A Part 10 file of one uncompressed chest radiograph; None drops an attribute."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    values = chest_pixels(seed=seed) if pixels is None else np.asarray(pixels, np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-4711"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID = "S1"
    ds.StudyDate, ds.StudyTime = "20261120", "101500"
    ds.AccessionNumber = "ACC-1"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Chest PA"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.Modality = modality
    ds.Manufacturer = "Example Modality Co"
    ds.ContentDate, ds.ContentTime = "20261120", "101530"
    if view is not None:
        ds.ViewPosition = view
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if orientation is not None:
        ds.PatientOrientation = orientation.split("\\")
    if sop_class == DX_FOR_PRESENTATION:
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = values.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# What CheXray's results must say: the SNOMED CT code of each finding (server/dicom/codes.py
# holds the served ones; these are the expected values, written out independently).
SNOMED = {
    "Atelectasis": "46621007",
    "Cardiomegaly": "8186001",
    "Consolidation": "95436008",
    "Edema": "19242006",
    "Pleural Effusion": "60046008",
}


def read(data: bytes):
    """A Part 10 file's dataset."""
    import pydicom

    return pydicom.dcmread(io.BytesIO(data))


def content_items(ds):
    """Every content item of a Structured Report, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def numbers(sr) -> list[float]:
    """The numeric values a Structured Report holds."""
    return [
        float(i.MeasuredValueSequence[0].NumericValue)
        for i in content_items(sr)
        if i.get("ValueType") == "NUM" and "MeasuredValueSequence" in i
    ]


def concept_codes(sr) -> set[str]:
    return {
        str(i.ConceptCodeSequence[0].CodeValue)
        for i in content_items(sr)
        if "ConceptCodeSequence" in i
    }
