"""Settings from environment variables: parsed, validated, named in the error."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.settings import Settings, SettingsError


def test_settings_from_environment() -> None:
    s = Settings.from_env(
        {
            "CHEXRAY_MAX_BATCH": "16",
            "CHEXRAY_WARMUP_BATCH_SIZES": "1,4,16",
            "CHEXRAY_ALLOW_SPINNING": "true",
            "CHEXRAY_MODEL_DIR": "/srv/models",
        }
    )
    assert (s.max_batch, s.warmup_batch_sizes, s.allow_spinning) == (16, (1, 4, 16), True)
    assert s.model_dir == Path("/srv/models")
    with pytest.raises(SettingsError, match="CHEXRAY_MAX_BATCH"):
        Settings.from_env({"CHEXRAY_MAX_BATCH": "many"})
    with pytest.raises(SettingsError, match="CHEXRAY_MAX_QUEUE must be at least 1"):
        Settings.from_env({"CHEXRAY_MAX_QUEUE": "0"})
    with pytest.raises(SettingsError, match="CHEXRAY_PROVIDER"):
        Settings.from_env({"CHEXRAY_PROVIDER": "tpu"})
