"""Open Inference Protocol answers checked against /api/v1/predictions for the same files."""

from __future__ import annotations

import numpy as np

from server.runtime import contract

OUTPUTS = [*contract.OUTPUTS, "present"]


def assert_like_api_v1(outputs: dict[str, np.ndarray], references: list[dict]) -> None:
    """Row i of each output given equals /api/v1/predictions' answer for file i. The images
    may have been batched differently: within the contract's tolerance (maps relative to
    their magnitude); the calls the same."""
    tol = contract.FUSED_TOLERANCE
    for i, ref in enumerate(references):
        findings = ref["findings"]
        expected = {
            "probabilities": [f["probability"] for f in findings],
            "cam_probabilities": [f["cam_probability"] for f in findings],
            "member_probabilities": [
                [m["probabilities"][f["name"]] for f in findings] for m in ref["members"]
            ],
            "cam_maps": ref["cam_maps"],
        }
        for name, want in expected.items():
            if name in outputs:
                want = np.asarray(want, np.float32)
                scale = max(1.0, float(np.abs(want).max()))
                np.testing.assert_allclose(outputs[name][i], want, atol=tol * scale, err_msg=name)
        if "present" in outputs:
            assert outputs["present"][i].tolist() == [f["present"] for f in findings]
