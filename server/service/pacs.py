"""The link to the PACS: results out, studies in, by DICOMweb (server/pacs/client.py).

Out: every study stored from a DICOM is queued (a row of the database, so a restart loses
nothing); a background task sends its Structured Report, and its heatmap objects when
asked, by STOW-RS, retrying what may pass later (the PACS unreachable, busy or failing)
with a doubling delay, until it is sent or the tries run out; a refusal that a retry cannot
change fails it at once. Each study shows where its transfer stands. In: a pull fetches a
study or series by WADO-RS and analyses every instance as a STOW-RS request would.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import dataclass

from server.errors import ChexrayError, NotFound, Unavailable
from server.pacs.client import DicomWebClient
from server.service.audit import AuditContext
from server.service.dicom_intake import DicomIntake, InstanceOutcome
from server.service.predictions import Predictions
from server.settings import Settings
from server.store import pacs as transfers
from server.store.models import PacsTransfer, Study
from server.store.store import Store

log = logging.getLogger("chexray.pacs")

CLAIM_BATCH = 4
IDLE_POLL_S = 5.0


@dataclass(frozen=True)
class Transfer:
    """Where a study's results stand with the PACS."""

    status: str  # pending, sent, failed
    attempts: int
    detail: str
    updated_at: dt.datetime
    next_try_at: dt.datetime | None
    sent_at: dt.datetime | None
    sent_instances: tuple[str, ...]


def _transfer(row: PacsTransfer) -> Transfer:
    return Transfer(
        row.status,
        row.attempts,
        row.detail,
        row.updated_at,
        row.next_try_at if row.status == transfers.PENDING else None,
        row.sent_at,
        tuple(row.sent_instances),
    )


def not_configured() -> Unavailable:
    return Unavailable(
        "pacs_not_configured",
        "no PACS is configured on this server: set CHEXRAY_PACS_URL (and its credentials)",
    )


def _study(s, study_id: str) -> Study | None:
    return s.get(Study, study_id)


class PacsLink:
    def __init__(self, settings: Settings, store: Store, predictions: Predictions) -> None:
        self.settings = settings
        self.store = store
        self.predictions = predictions
        self.intake = DicomIntake(predictions)
        self.enabled = bool(settings.pacs_url)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def client(self) -> DicomWebClient:
        s = self.settings
        return DicomWebClient(
            s.pacs_url,
            username=s.pacs_username or None,
            password=s.pacs_password or None,
            token=s.pacs_token or None,
            timeout=s.pacs_timeout_s,
            max_retrieve_bytes=s.pacs_max_pull_bytes,
        )

    # -- out -------------------------------------------------------------------------------

    async def queue(self, study_id: str) -> None:
        """Queue a study's results for the PACS (nothing when no PACS is configured). A
        database that is away now leaves it unqueued, logged: the study itself is kept."""
        if not self.enabled:
            return
        try:
            await self.store.call(transfers.queue, study_id)
        except ChexrayError as exc:
            log.error("study %s: results not queued for the PACS: %s", study_id, exc.message)
            return
        self._wake.set()

    async def resend(self, study: Study) -> Transfer:
        """Queue a study again now (after a failure, or to send it again)."""
        if not self.enabled:
            raise not_configured()
        if not await self.store.call(transfers.queue, study.id):
            raise NotFound("not_found", "no such study")
        self._wake.set()
        status = await self.status(study.id)
        assert status is not None
        return status

    async def status(self, study_id: str) -> Transfer | None:
        row = await self.store.call(transfers.get, study_id)
        return _transfer(row) if row is not None else None

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        lease = dt.timedelta(seconds=self.settings.pacs_timeout_s * 4 + 60)
        while True:
            try:
                due = await self.store.call(transfers.claim_due, lease, CLAIM_BATCH)
            except ChexrayError as exc:
                log.warning("PACS queue not readable now: %s", exc.message)
                due = []
            except Exception:
                log.exception("PACS queue: unexpected error")
                due = []
            for study_id in due:
                await self._send(study_id)
            if not due:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)

    async def _objects(self, study: Study) -> list[bytes]:
        objects = [await self.predictions.dicom_sr(study)]
        if self.settings.pacs_send_heatmaps:
            objects += await self.predictions.dicom_heatmaps(study)
        return objects

    def _retry_at(self, attempts_before: int) -> dt.datetime:
        delay = self.settings.pacs_retry_s * 2**attempts_before
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=min(delay, 3600.0))

    async def _send(self, study_id: str) -> None:
        """One try of one claimed study; the outcome is recorded, never raised."""
        row = await self.store.call(transfers.get, study_id)
        study = await self.store.call(_study, study_id)
        if row is None or study is None:
            return  # deleted meanwhile
        try:
            objects = await self._objects(study)
            async with self.client() as client:
                outcome = await client.store(objects, study_uid=None)
        except ChexrayError as exc:
            retryable = getattr(exc, "retryable", False) or isinstance(exc, Unavailable)
            if retryable and row.attempts + 1 < self.settings.pacs_max_attempts:
                when = self._retry_at(row.attempts)
                detail = f"{exc.message} (try {row.attempts + 1}; next at {when:%H:%M:%S} UTC)"
                await self._record(study_id, transfers.PENDING, detail, when)
            else:
                tries = f" after {row.attempts + 1} tries" if retryable else ""
                await self._record(study_id, transfers.FAILED, f"{exc.message}{tries}")
            return
        except Exception as exc:  # a bug must not stop the queue: fail this one, loudly
            log.exception("study %s: results could not be sent", study_id)
            await self._record(study_id, transfers.FAILED, f"internal error: {exc}")
            return
        if not outcome.ok:
            reasons = [f"{f.sop_instance_uid}: {f.reason_text}" for f in outcome.failed]
            if outcome.unreported:
                reasons.append(f"{len(outcome.unreported)} not acknowledged")
            refused = len(outcome.failed) + len(outcome.unreported)
            detail = f"the PACS refused {refused} of {len(objects)} objects: {'; '.join(reasons)}"
            await self._record(study_id, transfers.FAILED, detail)
            return
        await self._record(
            study_id,
            transfers.SENT,
            f"{len(outcome.stored)} objects stored by the PACS",
            sent=outcome.stored_uids,
        )

    async def _record(
        self,
        study_id: str,
        status: str,
        detail: str,
        when: dt.datetime | None = None,
        sent: list[str] | None = None,
    ) -> None:
        level = logging.WARNING if status != transfers.SENT else logging.INFO
        log.log(level, "study %s: PACS transfer %s: %s", study_id, status, detail)
        try:
            await self.store.call(transfers.record, study_id, status, detail, when, sent)
        except ChexrayError as exc:  # the lease runs out and the transfer is tried again
            log.warning("study %s: PACS outcome not recorded: %s", study_id, exc.message)

    async def counts(self) -> dict[str, int]:
        return await self.store.call(transfers.counts)

    # -- in --------------------------------------------------------------------------------

    async def pull(
        self,
        study_uid: str,
        series_uid: str | None,
        owner_id: int,
        force: bool = False,
        client: str | None = None,
        audit: AuditContext | None = None,
    ) -> list[InstanceOutcome]:
        """Fetch a study (or one of its series) from the PACS and analyse every instance;
        each stored analysis is queued back to the PACS. `audit`: who asked, for the
        audit log (one record per instance)."""
        if not self.enabled:
            raise not_configured()
        async with self.client() as pacs:
            if series_uid:
                instances = await pacs.retrieve_series(study_uid, series_uid)
            else:
                instances = await pacs.retrieve_study(study_uid)
        # One at a time: a pull is background work and must not crowd out interactive users.
        return [
            await self.intake.analyse(data, owner_id, force, client=client, admit=True, audit=audit)
            for data in instances
        ]
