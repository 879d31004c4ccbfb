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


def test_trusted_proxies_and_the_account_rate_limit() -> None:
    s = Settings.from_env(
        {
            "CHEXRAY_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1,2001:db8::/32",
            "CHEXRAY_AUTH_ACCOUNT_RATE_LIMIT": "20/600",
        }
    )
    assert s.trusted_proxies == ("10.0.0.0/8", "192.0.2.1", "2001:db8::/32")
    assert s.account_rate_limit == (20, 600.0)
    assert Settings().trusted_proxies == ()  # nobody is trusted unless named
    with pytest.raises(SettingsError, match=r"CHEXRAY_TRUSTED_PROXIES: 'proxy\.local'"):
        Settings.from_env({"CHEXRAY_TRUSTED_PROXIES": "10.0.0.1,proxy.local"})
    for bad in ("20", "0/60", "20/0", "many/60", "inf/60"):
        with pytest.raises(SettingsError, match="CHEXRAY_AUTH_ACCOUNT_RATE_LIMIT must look like"):
            Settings.from_env({"CHEXRAY_AUTH_ACCOUNT_RATE_LIMIT": bad})


def test_grpc_port_and_request_size() -> None:
    s = Settings.from_env({})
    assert (s.grpc_port, s.max_request_bytes) == (8001, 64 * 1024 * 1024)
    assert Settings.from_env({"CHEXRAY_GRPC_PORT": "0"}).grpc_port == 0  # no gRPC server
    with pytest.raises(SettingsError, match=r"CHEXRAY_GRPC_PORT must be 0 \(off\) to 65535"):
        Settings.from_env({"CHEXRAY_GRPC_PORT": "70000"})
    with pytest.raises(SettingsError, match="CHEXRAY_GRPC_PORT must differ from CHEXRAY_PORT"):
        Settings.from_env({"CHEXRAY_GRPC_PORT": "9000", "CHEXRAY_PORT": "9000"})
    with pytest.raises(SettingsError, match="CHEXRAY_MAX_REQUEST_BYTES must be at least 1"):
        Settings.from_env({"CHEXRAY_MAX_REQUEST_BYTES": "0"})


def test_storage_settings() -> None:
    s = Settings.from_env(
        {
            "CHEXRAY_ANONYMOUS_TTL_HOURS": "0.5",
            "CHEXRAY_ANONYMOUS_MAX_STUDIES": "0",
            "CHEXRAY_ANONYMOUS_HOURLY_PER_ADDRESS": "0",
            "CHEXRAY_ORPHAN_GRACE_MINUTES": "0.5",
        }
    )
    assert (s.anonymous_ttl_hours, s.anonymous_max_studies) == (0.5, 0)
    assert (s.anonymous_hourly_per_address, s.orphan_grace_minutes) == (0, 0.5)
    with pytest.raises(SettingsError, match="CHEXRAY_ANONYMOUS_TTL_HOURS must be more than 0"):
        Settings.from_env({"CHEXRAY_ANONYMOUS_TTL_HOURS": "0"})
    with pytest.raises(SettingsError, match="CHEXRAY_SWEEP_INTERVAL_MINUTES"):
        Settings.from_env({"CHEXRAY_SWEEP_INTERVAL_MINUTES": "-1"})
    with pytest.raises(SettingsError, match="CHEXRAY_ORPHAN_GRACE_MINUTES"):
        Settings.from_env({"CHEXRAY_ORPHAN_GRACE_MINUTES": "0"})
    with pytest.raises(SettingsError, match="CHEXRAY_ANONYMOUS_MAX_STUDIES must be >= 0"):
        Settings.from_env({"CHEXRAY_ANONYMOUS_MAX_STUDIES": "-1"})


def test_authentication_settings() -> None:
    s = Settings.from_env({})
    assert (s.require_auth, s.api_keys_per_user) == (False, 20)  # anonymous inference is on
    s = Settings.from_env({"CHEXRAY_REQUIRE_AUTH": "true", "CHEXRAY_API_KEYS_PER_USER": "0"})
    assert (s.require_auth, s.api_keys_per_user) == (True, 0)
    with pytest.raises(SettingsError, match="CHEXRAY_API_KEYS_PER_USER must be >= 0"):
        Settings.from_env({"CHEXRAY_API_KEYS_PER_USER": "-1"})
    with pytest.raises(SettingsError, match="CHEXRAY_REQUIRE_AUTH"):
        Settings.from_env({"CHEXRAY_REQUIRE_AUTH": "perhaps"})


def test_a_rollout_at_start_up_is_checked() -> None:
    with pytest.raises(SettingsError, match="CANARY_FRACTION must be between 0 and 1"):
        Settings(canary_version="tiny-1", canary_fraction=1.5)
    with pytest.raises(SettingsError, match="not both"):
        Settings(canary_version="tiny-1", shadow_version="tiny-2")
    assert Settings.from_env({"CHEXRAY_CANARY_FRACTION": "0.25"}).canary_fraction == 0.25
