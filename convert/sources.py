"""Finds the trained weight files for each member in a user's folder and tells their kind.

Keras files come in four shapes: a `.keras` archive (Keras 3), a full-model `.h5`
(architecture + weights), a weights-only `.h5` for one of the default architectures,
and the legacy application's pair of a JSON architecture plus an `.h5` of weights. Keras 2 era `.h5`
files are read by the legacy `tf_keras` loader, which Keras 3 cannot always replace.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import msgspec

from convert.errors import ConversionError

SourceKind = Literal["keras", "h5-model", "h5-weights", "json+h5"]
Loader = Literal["keras3", "tf_keras"]

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5", ".json")


class Source(msgspec.Struct, frozen=True):
    path: str
    kind: SourceKind
    loader: Loader
    weights_path: str | None = None  # the .h5 beside a JSON architecture


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _h5_attrs(path: Path) -> dict[str, str]:
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            attrs = {}
            for key in ("keras_version", "backend", "model_config"):
                if key in fh.attrs:
                    value = fh.attrs[key]
                    attrs[key] = value.decode() if isinstance(value, bytes) else str(value)
            return attrs
    except OSError as exc:
        raise ConversionError(f"{path}: not a readable HDF5 file ({exc})") from None


def _loader_for_h5(attrs: dict[str, str], override: str) -> Loader:
    if override in ("keras3", "tf_keras"):
        return override  # type: ignore[return-value]
    # Keras 2 (and tf.keras 2.x) write keras_version 2.x; Keras 3 writes 3.x.
    return "keras3" if attrs.get("keras_version", "").startswith("3.") else "tf_keras"


def classify(path: Path, loader: str = "auto") -> Source:
    """Say what a weight file is and which Keras should read it."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such weight file")
    if path.stat().st_size == 0:
        raise ConversionError(f"{path}: empty file")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        if loader == "tf_keras":
            raise ConversionError(f"{path}: a .keras archive needs Keras 3, not tf_keras")
        return Source(str(path), "keras", "keras3")
    if suffix in (".h5", ".hdf5"):
        attrs = _h5_attrs(path)
        kind: SourceKind = "h5-model" if "model_config" in attrs else "h5-weights"
        return Source(str(path), kind, _loader_for_h5(attrs, loader))
    if suffix == ".json":
        try:
            json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConversionError(f"{path}: not a JSON model architecture ({exc})") from None
        candidates = [path.with_suffix(s) for s in (".h5", ".hdf5")] + [
            path.with_name(path.stem + "_weights" + s) for s in (".h5", ".hdf5")
        ]
        weights = next((c for c in candidates if c.is_file()), None)
        if weights is None:
            raise ConversionError(
                f"{path}: JSON architecture without weights: expected "
                f"{candidates[0].name} or {candidates[2].name} beside it"
            )
        attrs = _h5_attrs(weights)
        return Source(str(path), "json+h5", _loader_for_h5(attrs, loader), str(weights))
    raise ConversionError(f"{path}: unknown weight file type (expected .keras, .h5 or .json)")


def find_sources(
    directory: Path, member_names: list[str], loader: str = "auto"
) -> tuple[dict[str, Source], list[str]]:
    """Match files to members by name (case, '_' and '-' ignored).

    Returns the sources found and warnings about files that matched no member. A JSON
    architecture wins over an `.h5` of the same name, which is then its weights.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ConversionError(f"{directory}: weights folder does not exist")
    by_key: dict[str, list[Path]] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix.lower() in KERAS_SUFFIXES:
            stem = path.stem[: -len("_weights")] if path.stem.endswith("_weights") else path.stem
            by_key.setdefault(_key(stem), []).append(path)
    found: dict[str, Source] = {}
    for name in member_names:
        paths = by_key.pop(_key(name), [])
        if not paths:
            continue
        jsons = [p for p in paths if p.suffix.lower() == ".json"]
        kerases = [p for p in paths if p.suffix.lower() == ".keras"]
        chosen = (jsons or kerases or paths)[0]
        found[name] = classify(chosen, loader)
    warnings = [
        f"{p}: matches no member ({', '.join(member_names)}); ignored"
        for paths in by_key.values()
        for p in paths
    ]
    return found, warnings
