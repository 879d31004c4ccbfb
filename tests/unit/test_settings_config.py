"""CHEXRAY_CONFIG: a TOML file of settings under the environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.settings import Settings, SettingsError


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chexray.toml"
    path.write_text(text)
    return path


def test_the_file_sets_what_the_environment_does_not(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        'max_batch = 4\ncors_origins = ["https://a"]\nwarmup_batch_sizes = [1, 2, 4]\n'
        'model_dir = "/srv/models"\nallow_spinning = true\nheatmap_alpha = 0.3\n',
    )
    s = Settings.from_env({"CHEXRAY_CONFIG": str(path)})
    assert (s.max_batch, s.cors_origins, s.warmup_batch_sizes) == (4, ("https://a",), (1, 2, 4))
    assert (s.model_dir, s.allow_spinning, s.heatmap_alpha) == (Path("/srv/models"), True, 0.3)
    assert s.max_queue == Settings().max_queue, "what neither sets keeps its default"


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    path = config(tmp_path, 'max_batch = 4\ncors_origins = ["https://a"]\nport = 9000\n')
    env = {
        "CHEXRAY_CONFIG": str(path),
        "CHEXRAY_MAX_BATCH": "8",
        "CHEXRAY_CORS_ORIGINS": "https://b, https://c",
    }
    s = Settings.from_env(env)
    assert (s.max_batch, s.cors_origins, s.port) == (8, ("https://b", "https://c"), 9000)
    assert Settings.from_env(env, port=9100).port == 9100, "an override wins over both"


def test_an_unknown_key_is_refused(tmp_path: Path) -> None:
    path = config(tmp_path, "max_batch = 4\nmax_batches = 8\n")
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"CHEXRAY_CONFIG": str(path)})
    assert str(path) in str(err.value) and "'max_batches'" in str(err.value)
    path = config(tmp_path, "MAX_BATCH = 4\n")
    with pytest.raises(SettingsError, match="did you mean max_batch"):
        Settings.from_env({"CHEXRAY_CONFIG": str(path)})


def test_bad_toml_is_refused(tmp_path: Path) -> None:
    path = config(tmp_path, "max_batch = \n")
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"CHEXRAY_CONFIG": str(path)})
    assert str(path) in str(err.value) and "not a valid TOML" in str(err.value)


def test_a_missing_or_unreadable_file_is_refused(tmp_path: Path) -> None:
    for path in (tmp_path / "absent.toml", tmp_path):
        with pytest.raises(SettingsError) as err:
            Settings.from_env({"CHEXRAY_CONFIG": str(path)})
        assert "CHEXRAY_CONFIG" in str(err.value) and str(path) in str(err.value)


def test_a_bad_value_in_the_file_names_the_file_and_key(tmp_path: Path) -> None:
    path = config(tmp_path, 'max_batch = "many"\n')
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"CHEXRAY_CONFIG": str(path)})
    assert f"{path}: max_batch" in str(err.value)
    path = config(tmp_path, "max_queue = 0\n")
    with pytest.raises(SettingsError, match="max_queue must be at least 1") as err:
        Settings.from_env({"CHEXRAY_CONFIG": str(path)})
    assert str(path) in str(err.value)
    path = config(tmp_path, "warmup_batch_sizes = [1, 0.5]\n")
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"CHEXRAY_CONFIG": str(path)})
    assert f"{path}: warmup_batch_sizes" in str(err.value)
    # A variable that replaces a bad file value is the one judged.
    assert Settings.from_env({"CHEXRAY_CONFIG": str(path), "CHEXRAY_WARMUP_BATCH_SIZES": "2"})
