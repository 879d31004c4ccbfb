"""Edges of the history API: absurd page numbers, concurrent deletes, cache and sniffing
headers on health data."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.errors import NotFound
from tests.support.api import client, register, upload


@pytest.fixture
def c(tiny_repo: Path, tmp_path: Path):
    with client(tiny_repo, tmp_path) as c:
        yield c


def test_an_absurd_page_number_is_a_400_not_a_500(c) -> None:
    auth = register(c, "pager")
    r = c.get("/api/v1/studies", params={"page": 10**17}, headers=auth)
    assert r.status_code == 400 and r.json()["code"] == "invalid_request"
    assert c.get("/api/v1/studies", params={"page": 10**6}, headers=auth).status_code == 200


def test_two_deletes_of_one_study_answer_once_and_then_not_found(c) -> None:
    auth = register(c, "twice")
    study = upload(c, auth)["id"]
    service = c.app.state.service
    user = c.get("/api/v1/me", headers=auth).json()["id"]

    async def both():
        return await asyncio.gather(
            service.predictions.delete(study, user),
            service.predictions.delete(study, user),
            return_exceptions=True,
        )

    outcomes = asyncio.run(both())
    assert sorted(type(o).__name__ for o in outcomes) == ["NoneType", "NotFound"]
    assert all(o is None or isinstance(o, NotFound) for o in outcomes)
    r = c.delete(f"/api/v1/studies/{study}", headers=auth)
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_health_data_is_never_cached_and_never_sniffed(c) -> None:
    auth = register(c, "nocache")
    body = upload(c, auth)
    for url in (body["urls"]["image"], body["urls"]["heatmap"]):
        r = c.get(url, headers=auth)
        assert r.status_code == 200
        assert r.headers["cache-control"] == "private, no-store"
        assert r.headers["x-content-type-options"] == "nosniff"
    for r in (c.get("/api/v1/studies", headers=auth), c.get("/api/v1/nothing-here")):
        assert r.headers["x-content-type-options"] == "nosniff"
