"""UIDs derived from CheXray's study id, so that the same study always gives the same series
and instance UIDs: a re-send to a PACS replaces the earlier objects instead of adding copies.

Each UID hashes (SHA-512, pydicom's `generate_uid` with entropy sources) the study id and a
role, under pydicom's UID root; nothing random, nothing that identifies the patient.
"""

from __future__ import annotations

from pydicom.uid import generate_uid

from server.runtime.findings import slug

_NAMESPACE = "chexray"  # keeps these UIDs apart from any other use of the same strings


def _uid(*parts: str) -> str:
    return str(generate_uid(entropy_srcs=[_NAMESPACE, *parts]))


def sr_series_uid(study_id: str) -> str:
    return _uid(study_id, "sr-series")


def sr_instance_uid(study_id: str) -> str:
    return _uid(study_id, "sr-instance")


def heatmap_series_uid(study_id: str) -> str:
    return _uid(study_id, "heatmap-series")


def heatmap_instance_uid(study_id: str, finding: str) -> str:
    return _uid(study_id, "heatmap-instance", slug(finding))


def tracking_uid(study_id: str, finding: str) -> str:
    """TID 4108's Tracking Unique Identifier of one finding's measurement group."""
    return _uid(study_id, "tracking", slug(finding))


# The device observer (TID 1004) is CheXray itself, the same in every report.
DEVICE_OBSERVER_UID = _uid("device-observer")
