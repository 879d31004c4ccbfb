"""The coded concepts of CheXray's DICOM objects, each checked against its source.

Findings are SNOMED CT concepts (`SCT`). Where DICOM PS3.16 itself lists a concept (as
pydicom's concept dictionary, generated from PS3.16, shows) that code is used: Pleural
effusion (CID 645), Pulmonary edema (CID 3700), Present/Absent (CID 240 "Present-Absent"),
Artificial Intelligence (CID 7162), no units (CID 7181). The others are SNOMED CT
International concepts with their fully specified names: 46621007 |Atelectasis (disorder)|,
8186001 |Cardiomegaly (disorder)|, 95436008 |Lung consolidation (disorder)|,
399208008 |Plain X-ray of chest (procedure)|. Cardiomegaly is the disorder concept, not
287272002, which DICOM lists only in its cardiac ultrasound summaries (CID 12248/12249).
"""

from __future__ import annotations

from pydicom.sr.coding import Code

# Makers' names, as they appear in Manufacturer, the device observer and the algorithm.
MANUFACTURER = "CheXray"
DEVICE_NAME = "CheXray"
ALGORITHM_NAME = "CheXray"
MODEL_NAME = "CheXray ensemble"  # ManufacturerModelName: five CNNs voting, CAM heatmaps

FINDING_CODES: dict[str, Code] = {
    "Atelectasis": Code("46621007", "SCT", "Atelectasis"),
    "Cardiomegaly": Code("8186001", "SCT", "Cardiomegaly"),
    "Consolidation": Code("95436008", "SCT", "Lung consolidation"),
    "Edema": Code("19242006", "SCT", "Pulmonary edema"),
    "Pleural Effusion": Code("60046008", "SCT", "Pleural effusion"),
}

# The call at the threshold (CID 240 "Present-Absent").
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("272519000", "SCT", "Absent")

# TID 1500 "Procedure reported": a plain chest radiograph (CR or DX, any view).
PROCEDURE_CHEST_RADIOGRAPH = Code("399208008", "SCT", "Plain chest X-ray")

# TID 4019 "Algorithm Family" (CID 7162).
ALGORITHM_FAMILY = Code("123110", "DCM", "Artificial Intelligence")

# The numeric result: the ensemble's probability that the finding is present, a number in
# [0, 1] without dimension. UCUM "1" is the dimensionless unit itself (CID 7181 "no units");
# "{probability}" would mean the same to UCUM, but an annotation is free text that receivers
# may not parse, and the concept name already says the number is a probability.
PROBABILITY = Code("122157", "DCM", "Probability")
UNIT_ONE = Code("1", "UCUM", "no units")

# A free-text remark in the report (the untrained-networks warning).
COMMENT = Code("121106", "DCM", "Comment")

# SourceImageSequence's purpose of reference for a heatmap drawn over its X-ray (CID 7202).
PURPOSE_SOURCE_IMAGE = Code("121322", "DCM", "Source image for image processing operation")
