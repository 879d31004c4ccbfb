"""Intended use: frontal (PA or AP) chest radiographs, CR or DX, which is what the networks
were trained on. A DICOM says what it holds (Modality, BodyPartExamined, ViewPosition,
PatientOrientation), so one that says it is something else is refused by default; a caller
who knows better forces it and gets the answer with a warning. PNG and JPEG carry no such
attributes and are taken as what the caller says they are."""

from __future__ import annotations

from dataclasses import dataclass

from server.errors import UnprocessableInput
from server.runtime.decode import DecodedImage

RADIOGRAPHY = ("CR", "DX")
# BodyPartExamined values (DICOM's defined term is CHEST; sites write others) that mean chest.
CHEST_WORDS = ("CHEST", "THORAX", "LUNG", "THX")
# ViewPosition defined terms: AP, PA (frontal), LL, RL (lateral), RLD, LLD (decubitus,
# frontal projections), RLO, LLO (oblique). Free text seen in the wild is matched too.
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL", "LLAT", "RLAT")
OBLIQUE_VIEWS = ("RLO", "LLO", "LAO", "RAO", "LPO", "RPO", "OBLIQUE")


@dataclass(frozen=True)
class Concern:
    code: str  # not_radiograph, not_chest, lateral_view, oblique_view
    message: str


def _text(tags: dict[str, object], name: str) -> str:
    value = tags.get(name)
    if isinstance(value, list | tuple):
        return "\\".join(str(v) for v in value).strip().upper()
    return str(value).strip().upper() if value is not None else ""


def concerns(image: DecodedImage) -> list[Concern]:
    """Why a decoded DICOM is outside the intended use (empty: inside it, or not a DICOM)."""
    if image.format != "dicom":
        return []
    tags = image.dicom
    found = []
    modality = _text(tags, "Modality")
    if modality not in RADIOGRAPHY:
        said = f"Modality {modality}" if modality else "no Modality"
        found.append(Concern("not_radiograph", f"{said}: only radiographs (CR, DX) are analysed"))
    body = _text(tags, "BodyPartExamined")
    if body and not any(word in body for word in CHEST_WORDS):
        found.append(Concern("not_chest", f"BodyPartExamined {body}: only chests are analysed"))
    view = _text(tags, "ViewPosition")
    orientation = _text(tags, "PatientOrientation")
    if view in LATERAL_VIEWS:
        found.append(
            Concern("lateral_view", f"ViewPosition {view}: only frontal views are analysed")
        )
    elif view in OBLIQUE_VIEWS:
        found.append(
            Concern("oblique_view", f"ViewPosition {view}: only frontal views are analysed")
        )
    elif not view and orientation[:1] in ("A", "P"):
        # Rows running anterior-posterior: the patient was seen from the side.
        found.append(
            Concern(
                "lateral_view",
                f"PatientOrientation {orientation}: a lateral view; only frontal views are "
                "analysed",
            )
        )
    return found


def check(image: DecodedImage, force: bool) -> None:
    """Refuse an image outside the intended use (UnprocessableInput `outside_intended_use`,
    the concerns in `detail`), or, forced, note why its answer needs care."""
    found = concerns(image)
    if not found:
        return
    reasons = "; ".join(c.message for c in found)
    if force:
        image.notes.append(f"outside the intended use, analysed because forced: {reasons}")
        return
    raise UnprocessableInput(
        "outside_intended_use",
        f"not analysed: {reasons}. The networks were trained on frontal chest radiographs; "
        "to analyse it anyway, repeat the request with force=true (the answer then carries "
        "a warning)",
        detail={"concerns": [{"code": c.code, "message": c.message} for c in found]},
    )
