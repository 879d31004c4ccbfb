"""Administrators: the first account registered, or the usernames CHEXRAY_ADMINS names."""

from __future__ import annotations

from pathlib import Path

from tests.support.api import client, register


def test_the_first_account_is_the_administrator(tiny_repo: Path, tmp_path: Path) -> None:
    with client(tiny_repo, tmp_path / "data") as c:
        first, second = register(c, "founder"), register(c, "colleague")
        assert c.get("/api/v1/me", headers=first).json()["is_admin"] is True
        assert c.get("/api/v1/me", headers=second).json()["is_admin"] is False
        # The founder leaves: the oldest account present takes over.
        assert c.request("DELETE", "/api/v1/me", headers=first).status_code == 204
        assert c.get("/api/v1/me", headers=second).json()["is_admin"] is True


def test_named_administrators_replace_the_first_account(tiny_repo: Path, tmp_path: Path) -> None:
    with client(tiny_repo, tmp_path / "data", admins=("ops", "lead")) as c:
        first, ops = register(c, "founder"), register(c, "ops")
        assert c.get("/api/v1/me", headers=first).json()["is_admin"] is False
        assert c.get("/api/v1/me", headers=ops).json()["is_admin"] is True
