"""What a prediction is, independent of protocol and of storage: one `Result` built from a
fresh prediction or from a stored study, and the study row built from a Result only when
it is stored."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from server.runtime.engine import Prediction
from server.runtime.findings import present
from server.store.models import Study, utcnow

UNTRAINED_WARNING = (
    "the models are not trained (random weights): these probabilities are meaningless"
)


# The DICOM attributes an answer shows: what the image is (never whose it is).
DICOM_SHOWN = ("Modality", "BodyPartExamined", "ViewPosition", "PatientOrientation", "SOPClassUID")


@dataclass(frozen=True)
class ImageMeta:
    format: str
    width: int
    height: int
    bit_depth: int
    notes: list[str]
    dicom: dict[str, str] | None = None  # DICOM_SHOWN attributes the source had


def dicom_shown(tags: dict[str, object]) -> dict[str, str]:
    out = {}
    for name in DICOM_SHOWN:
        value = tags.get(name)
        if value is None or value == "":
            continue
        out[name] = "\\".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return out


@dataclass(frozen=True)
class Result:
    """Per finding lists are in FINDINGS order; `id` is None unless the study is stored."""

    id: str | None
    owner_id: int | None
    title: str
    created_at: dt.datetime
    model_version: str
    trained: bool
    probabilities: list[float]
    thresholds: list[float]
    calls: list[bool]
    cam_probabilities: list[float]
    member_probabilities: dict[str, list[float]]
    cam_maps: list  # [finding][row][col], raw maps rounded to 1e-6
    image: ImageMeta
    timings: dict[str, float | int | None]  # decode/preprocess/queue/compute ms, batch_size
    backend: str | None  # backend-device-precision that answered (None: not recorded)
    precision: str | None
    expires_at: dt.datetime | None = None  # anonymous stored studies: when they are deleted

    @property
    def stored(self) -> bool:
        return self.id is not None

    @property
    def present(self) -> list[str]:
        return present(self.calls)

    @property
    def warnings(self) -> list[str]:
        return [] if self.trained else [UNTRAINED_WARNING]


def _floats(values: np.ndarray) -> list[float]:
    return [float(x) for x in values]


def result_from_prediction(
    p: Prediction, study_id: str | None, owner_id: int | None, title: str
) -> Result:
    t = p.timings
    return Result(
        id=study_id,
        owner_id=owner_id,
        title=title,
        created_at=utcnow(),
        model_version=p.model_version,
        trained=p.trained,
        probabilities=_floats(p.probabilities),
        thresholds=list(p.thresholds),
        calls=[bool(c) for c in p.calls],
        cam_probabilities=_floats(p.cam_probabilities),
        member_probabilities={k: _floats(v) for k, v in p.member_probabilities.items()},
        cam_maps=np.asarray(p.cam_maps, np.float32).round(6).tolist(),
        image=ImageMeta(
            p.image.format,
            p.image.width,
            p.image.height,
            p.image.bit_depth,
            list(p.image.notes),
            dicom_shown(p.image.dicom) if p.image.format == "dicom" else None,
        ),
        timings={
            "decode_ms": t.decode_ms,
            "preprocess_ms": t.preprocess_ms,
            "queue_ms": t.queue_ms,
            "compute_ms": t.compute_ms,
            "batch_size": t.batch_size,
        },
        backend=p.backend,
        precision=p.precision,
    )


# Fields a Result and a study row share under one name.
_SAME = (
    "id",
    "owner_id",
    "title",
    "created_at",
    "model_version",
    "trained",
    "probabilities",
    "thresholds",
    "calls",
    "cam_probabilities",
    "member_probabilities",
    "cam_maps",
    "timings",
    "backend",
    "precision",
)


def result_from_study(s: Study) -> Result:
    image = ImageMeta(s.image_format, s.width, s.height, s.bit_depth, s.notes, s.dicom)
    return Result(image=image, **{name: getattr(s, name) for name in _SAME})


def study_row(r: Result) -> Study:
    assert r.id is not None
    return Study(
        present="|" + "".join(f"{f}|" for f in r.present),
        image_format=r.image.format,
        width=r.image.width,
        height=r.image.height,
        bit_depth=r.image.bit_depth,
        notes=r.image.notes,
        dicom=r.image.dicom,
        **{name: getattr(r, name) for name in _SAME},
    )
