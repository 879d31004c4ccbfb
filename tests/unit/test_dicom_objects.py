"""CheXray's DICOM results, built from a source header as the server keeps it (no Pixel Data):
the TID 1500 Structured Report and the heatmap Secondary Captures. Read back with pydicom and
highdicom, validated with dciodvfy."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from server.dicom import DicomResult, FindingValue, to_part10
from server.dicom import codes as cx
from server.dicom._common import PATIENT_KEYWORDS, STUDY_KEYWORDS, TYPE2_KEYWORDS
from server.dicom.heatmaps import heatmap_objects
from server.dicom.sr import structured_report
from server.runtime.findings import FINDINGS
from tests.support.dciodvfy import dciodvfy
from tests.support.dicom_studies import DX_FOR_PRESENTATION, chest_instance

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
# Optional attributes a modality may leave out; the objects must stay valid without them.
OPTIONAL = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyDescription", "SeriesNumber",
    "InstanceNumber", "SpecificCharacterSet", "Manufacturer", "ContentDate", "ContentTime",
    "ViewPosition", "BodyPartExamined",
)  # fmt: skip
# What dciodvfy may still say about a source that lacks these: nothing CheXray can invent.
DICOMDIR_WARNING = "Missing attribute or value that would be needed to build DICOMDIR"


def header(**kwargs) -> Dataset:
    """A chest radiograph's header as the server keeps it: Pixel Data dropped."""
    ds = pydicom.dcmread(io.BytesIO(chest_instance(**kwargs)))
    del ds.PixelData
    return ds


def bare_header() -> Dataset:
    ds = header(view=None, body_part=None)
    for kw in OPTIONAL:
        if kw in ds:
            delattr(ds, kw)
    return ds


def result(*, study_id: str = "study-1", trained: bool = True) -> DicomResult:
    # Probabilities with more digits than a DS holds: they must still read back exactly.
    probabilities = (0.8123456789012345, 0.05, 0.4999999999999999, 0.731, 1e-7)
    thresholds = (0.5, 0.43210987654321, 0.5, 0.6, 0.2)
    return DicomResult(
        study_id=study_id,
        created_at=datetime(2026, 11, 20, 10, 16, 5, 123456, tzinfo=UTC),
        model_version="2026.11.1",
        trained=trained,
        backend="openvino-cpu-bf16",
        precision="bf16",
        findings=tuple(
            FindingValue(name=f, probability=p, present=p >= t, threshold=t)
            for f, p, t in zip(FINDINGS, probabilities, thresholds, strict=True)
        ),
    )


def overlays(source: Dataset, names=FINDINGS) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    shape = (int(source.Rows), int(source.Columns), 3)
    return {n: rng.integers(0, 256, shape, dtype=np.uint8) for n in names}


def reread(ds: Dataset) -> Dataset:
    return pydicom.dcmread(io.BytesIO(to_part10(ds)))


def items(content: Dataset):
    """Every SR content item below `content`, depth first."""
    for item in content.get("ContentSequence", []):
        yield item
        yield from items(item)


def code_of(seq) -> tuple[str, str]:
    return str(seq[0].CodeValue), str(seq[0].CodingSchemeDesignator)


def groups(sr: Dataset) -> list[Dataset]:
    return [
        i
        for i in items(sr)
        if i.ValueType == "CONTAINER" and code_of(i.ConceptNameCodeSequence) == ("125007", "DCM")
    ]


def child(group: Dataset, name: tuple[str, str], value_type: str | None = None) -> list[Dataset]:
    return [
        i
        for i in group.ContentSequence
        if code_of(i.ConceptNameCodeSequence) == name
        and (value_type is None or i.ValueType == value_type)
    ]


def numeric(item: Dataset) -> float:
    value = item.MeasuredValueSequence[0]
    if "FloatingPointValue" in value:
        return float(value.FloatingPointValue)
    return float(value.NumericValue)


def parameters(group: Dataset) -> dict[str, str]:
    texts = [i.TextValue for i in child(group, ("111002", "DCM"), "TEXT")]
    return dict(t.split("=", 1) for t in texts)


def texts(sr: Dataset) -> list[str]:
    return [str(i.TextValue) for i in items(sr) if i.ValueType == "TEXT"]


def test_every_finding_has_a_snomed_code() -> None:
    assert set(cx.FINDING_CODES) == set(FINDINGS)
    assert all(c.scheme_designator == "SCT" for c in cx.FINDING_CODES.values())
    assert len({c.value for c in cx.FINDING_CODES.values()}) == len(FINDINGS)


def test_the_report_reads_back_finding_by_finding() -> None:
    source, res = header(), result()
    sr = reread(structured_report(source, res))
    assert sr.SOPClassUID == COMPREHENSIVE_SR
    assert sr.Modality == "SR"
    assert code_of(sr.ConceptNameCodeSequence) == ("126000", "DCM")  # TID 1500 title

    found = groups(sr)
    assert len(found) == len(FINDINGS)
    for group, value in zip(found, res.findings, strict=True):
        code = cx.FINDING_CODES[value.name]
        (finding_type,) = child(group, ("121071", "DCM"), "CODE")
        assert code_of(finding_type.ConceptCodeSequence) == (code.value, "SCT")

        (probability,) = child(group, ("122157", "DCM"), "NUM")
        assert numeric(probability) == value.probability
        unit = probability.MeasuredValueSequence[0].MeasurementUnitsCodeSequence
        assert code_of(unit) == ("1", "UCUM")

        (call,) = child(group, (code.value, "SCT"), "CODE")
        expected = cx.PRESENT if value.present else cx.ABSENT
        assert code_of(call.ConceptCodeSequence) == (expected.value, "SCT")

        (name,) = child(group, ("111001", "DCM"), "TEXT")
        (version,) = child(group, ("111003", "DCM"), "TEXT")
        assert (name.TextValue, version.TextValue) == ("CheXray", res.model_version)
        params = parameters(group)
        assert float(params["threshold"]) == value.threshold
        assert (params["backend"], params["precision"]) == (res.backend, res.precision)

        (tracking_id,) = child(group, ("112039", "DCM"), "TEXT")
        assert value.name in tracking_id.TextValue
        (tracking_uid,) = child(group, ("112040", "DCM"), "UIDREF")
        assert tracking_uid.UID

        (image,) = child(group, ("121112", "DCM"), "IMAGE")
        ref = image.ReferencedSOPSequence[0]
        assert ref.ReferencedSOPClassUID == source.SOPClassUID
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID

    # Observer: the CheXray device; procedure: a chest radiograph.
    by_name = {code_of(i.ConceptNameCodeSequence): i for i in sr.ContentSequence}
    assert code_of(by_name[("121005", "DCM")].ConceptCodeSequence) == ("121007", "DCM")
    assert by_name[("121013", "DCM")].TextValue == "CheXray"
    procedure = by_name[("121058", "DCM")].ConceptCodeSequence
    assert code_of(procedure) == (cx.PROCEDURE_CHEST_RADIOGRAPH.value, "SCT")
    assert sr.Manufacturer == "CheXray"
    assert sr.SoftwareVersions == res.model_version
    assert (sr.SeriesNumber, sr.SeriesDescription) == (9901, "CheXray report")
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    ref = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_highdicom_reads_the_report_as_a_measurement_report(tmp_path: Path) -> None:
    source, res = header(), result()
    path = tmp_path / "sr.dcm"
    path.write_bytes(to_part10(structured_report(source, res)))
    report = hd.sr.srread(path).content
    assert isinstance(report, hd.sr.MeasurementReport)
    read = report.get_image_measurement_groups()
    assert len(read) == len(FINDINGS)
    for group, value in zip(read, res.findings, strict=True):
        assert group.finding_type.value == cx.FINDING_CODES[value.name].value
        (probability,) = group.get_measurements(name=cx.PROBABILITY)
        assert probability.value == value.probability
        calls = [
            q
            for q in group.get_qualitative_evaluations()
            if q.name.value == group.finding_type.value
        ]
        assert [c.value.value for c in calls] == [
            (cx.PRESENT if value.present else cx.ABSENT).value
        ]
        assert [s.referenced_sop_instance_uid for s in group.source_images] == [
            source.SOPInstanceUID
        ]


@pytest.mark.parametrize("trained", [True, False])
def test_untrained_networks_are_stated_iff_untrained(trained: bool) -> None:
    source = header()
    res = result(trained=trained)
    sr = reread(structured_report(source, res))
    heatmaps = [reread(h) for h in heatmap_objects(source, res, overlays(source))]
    said = [
        any("UNTRAINED" in t for t in texts(sr)),
        "UNTRAINED" in sr.SeriesDescription,
        *("UNTRAINED" in h.SeriesDescription for h in heatmaps),
        *("UNTRAINED" in h.ImageComments for h in heatmaps),
        *("UNTRAINED" in h.DerivationDescription for h in heatmaps),
    ]
    assert said == [not trained] * len(said)
    params = [parameters(g)["trained"] for g in groups(sr)]
    assert params == ["true" if trained else "false"] * len(FINDINGS)


def test_uids_follow_the_study_id_and_nothing_else() -> None:
    source = header()

    def uids_of(study_id: str) -> list[str]:
        res = result(study_id=study_id)
        sr = structured_report(source, res)
        maps = heatmap_objects(source, res, overlays(source))
        tracking = [child(g, ("112040", "DCM"))[0].UID for g in groups(sr)]
        return [
            sr.SeriesInstanceUID,
            sr.SOPInstanceUID,
            *(h.SeriesInstanceUID for h in maps[:1]),
            *(h.SOPInstanceUID for h in maps),
            *tracking,
        ]

    first, again, other = uids_of("study-1"), uids_of("study-1"), uids_of("study-2")
    assert first == again
    assert len(set(first)) == len(first)  # no two roles share a UID
    assert not set(first) & set(other)
    assert source.SeriesInstanceUID not in first
    assert all(pydicom.uid.UID(u).is_valid for u in first)


def test_the_same_result_gives_the_same_bytes() -> None:
    """A re-send replaces: the objects are the same to the byte, times included."""
    source, res = header(), result()
    assert to_part10(structured_report(source, res)) == to_part10(structured_report(source, res))
    maps = overlays(source, FINDINGS[:1])
    first = heatmap_objects(source, res, maps)
    assert [to_part10(h) for h in first] == [
        to_part10(h) for h in heatmap_objects(source, res, maps)
    ]


@pytest.mark.parametrize("make", [header, bare_header], ids=["full", "bare"])
def test_patient_and_study_are_the_sources_and_nothing_more(make) -> None:
    source = make()
    res = result()
    for ds in [structured_report(source, res), *heatmap_objects(source, res, overlays(source))]:
        ds = reread(ds)
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        for kw in (*PATIENT_KEYWORDS, *STUDY_KEYWORDS):
            if kw in source:
                assert ds[kw].value == source[kw].value, kw
            elif kw in ds:
                assert kw in TYPE2_KEYWORDS and ds[kw].value in (None, ""), kw


def test_a_name_without_caret_and_with_accents_is_copied_as_it_is() -> None:
    source = header()
    source.PatientName = "MÜLLER"  # no "^": highdicom's own check would refuse it
    res = result()
    for ds in [structured_report(source, res), *heatmap_objects(source, res, overlays(source))]:
        ds = reread(ds)
        assert ds.SpecificCharacterSet == "ISO_IR 100"
        assert str(ds.PatientName) == "MÜLLER"


def test_heatmaps_are_rgb_pictures_of_the_source() -> None:
    source, res = header(), result()
    given = overlays(source, ("Pleural Effusion", "Cardiomegaly"))
    maps = [reread(h) for h in heatmap_objects(source, res, given)]

    assert [h.InstanceNumber for h in maps] == [2, 5]  # FINDINGS order, numbered by place
    assert len({h.SeriesInstanceUID for h in maps}) == 1
    for h, name in zip(maps, ("Cardiomegaly", "Pleural Effusion"), strict=True):
        value = next(f for f in res.findings if f.name == name)
        assert h.SOPClassUID == SECONDARY_CAPTURE
        assert (h.Rows, h.Columns) == (source.Rows, source.Columns)
        assert (h.SamplesPerPixel, h.PhotometricInterpretation, h.BitsAllocated) == (3, "RGB", 8)
        assert np.array_equal(h.pixel_array, given[name])
        assert (h.SeriesNumber, h.SeriesDescription) == (9902, "CheXray heatmaps")
        assert h.Manufacturer == "CheXray"
        ref = h.SourceImageSequence[0]
        assert ref.ReferencedSOPClassUID == source.SOPClassUID
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        purpose = ref.PurposeOfReferenceCodeSequence
        assert code_of(purpose) == (cx.PURPOSE_SOURCE_IMAGE.value, "DCM")
        assert name in h.ImageComments
        assert f"{value.probability:.3f}" in h.ImageComments
        assert ("present" if value.present else "absent") in h.ImageComments


def test_an_overlay_not_of_the_sources_size_is_refused() -> None:
    source, res = header(), result()
    wrong = np.zeros((int(source.Rows) + 1, int(source.Columns), 3), np.uint8)
    with pytest.raises(ValueError, match="source's size"):
        heatmap_objects(source, res, {"Edema": wrong})
    grey = np.zeros((int(source.Rows), int(source.Columns)), np.uint8)
    with pytest.raises(ValueError, match="uint8 RGB"):
        heatmap_objects(source, res, {"Edema": grey})
    with pytest.raises(ValueError, match="without a result"):
        heatmap_objects(source, res, {"Pneumothorax": grey})


def test_a_source_without_its_uids_is_refused() -> None:
    source = header()
    del source.SOPInstanceUID
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        structured_report(source, result())


def test_part10_has_preamble_meta_and_explicit_little_endian() -> None:
    sr = structured_report(header(), result())
    data = to_part10(sr)
    assert data[128:132] == b"DICM"
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPInstanceUID == sr.SOPInstanceUID
    assert ds.SOPInstanceUID == sr.SOPInstanceUID


@pytest.mark.parametrize(
    "make",
    [
        header,
        lambda: header(sop_class=DX_FOR_PRESENTATION, modality="DX", orientation="P\\F"),
        bare_header,
    ],
    ids=["cr", "dx", "bare"],
)
@pytest.mark.parametrize("trained", [True, False])
def test_dciodvfy_finds_no_error(make, trained: bool, tmp_path: Path) -> None:
    source = make()
    res = result(trained=trained)
    objects = {"sr": structured_report(source, res)}
    for h in heatmap_objects(source, res, overlays(source)):
        objects[f"heatmap-{h.InstanceNumber}"] = h
    for name, ds in objects.items():
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(to_part10(ds))
        errors, warnings = dciodvfy(path)
        assert errors == [], name
        # Only what the source itself lacks (a bare source has no Patient ID, Study ID...).
        assert all(DICOMDIR_WARNING in w for w in warnings), (name, warnings)
        if make is not bare_header:
            assert warnings == [], name
