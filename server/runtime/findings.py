"""The five findings, their order everywhere (outputs, manifest, storage), and their slugs
(`pleural_effusion`) for URLs and file names."""

from __future__ import annotations

from collections.abc import Iterable

FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)


def slug(finding: str) -> str:
    return finding.lower().replace(" ", "_")


SLUGS: dict[str, str] = {slug(f): f for f in FINDINGS}


def finding_for(name: str) -> str | None:
    """The finding a slug or name stands for (`pleural-effusion`, `Pleural Effusion`)."""
    return SLUGS.get(slug(name).replace("-", "_"))


def present(calls: Iterable[bool]) -> list[str]:
    """The findings called present, in FINDINGS order."""
    return [f for f, c in zip(FINDINGS, calls, strict=True) if c]
