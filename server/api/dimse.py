"""DIMSE C-STORE into CheXray: a Storage SCP (pynetdicom) for modalities and PACS nodes that
push DICOM over DICOM's own network protocol rather than DICOMweb. A thin translator: each
received instance goes to `service.intake`, as a STOW-RS part would, and its outcome
becomes the C-STORE status (0x0000, or a failure with an ErrorComment saying why).

DIMSE carries no credentials: what arrives is kept in the history of the account
CHEXRAY_DIMSE_OWNER, and only the calling AE titles of CHEXRAY_DIMSE_CALLING_AES are
accepted (empty: any, which is for a trusted network only). The SCP runs in pynetdicom's
threads; the analysis runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import TimeoutError as FutureTimeout

from server.service import InstanceOutcome, Service
from server.service.audit import AuditContext
from server.settings import Settings

log = logging.getLogger("chexray.dimse")

# Statuses of a C-STORE response (PS3.4 B.2.3).
SUCCESS = 0x0000
NOT_AUTHORISED = 0x0124
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700


def status_of(outcome: InstanceOutcome):
    """The C-STORE response: Status and, on failure, an ErrorComment (at most 64 characters)
    with CheXray's code and the start of its message."""
    from pydicom.dataset import Dataset

    rsp = Dataset()
    if outcome.stored:
        rsp.Status = SUCCESS
        return rsp
    rsp.Status = outcome.failure_reason or PROCESSING_FAILURE
    rsp.ErrorComment = f"{outcome.code}: {outcome.message or ''}"[:64]
    return rsp


class StorageScp:
    """The SCP bound to `settings.dimse_port` while the server runs."""

    def __init__(self, service: Service, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server = None
        self._owner_id: int | None = None

    async def start(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.loop = asyncio.get_running_loop()
        ae = AE(ae_title=self.settings.dimse_ae_title)
        # Every storage SOP class is accepted, so that each instance gets a status of its
        # own (0x0122 for those that are not radiographs) instead of a refused context.
        ae.supported_contexts = AllStoragePresentationContexts
        if self.settings.dimse_calling_aes:
            ae.require_calling_aet = list(self.settings.dimse_calling_aes)
        ae.maximum_pdu_size = 0  # unlimited: the peer's choice
        self.server = ae.start_server(
            (self.settings.host, self.settings.dimse_port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        log.info(
            "DICOM Storage SCP %s on %s:%d, received instances kept for %r",
            self.settings.dimse_ae_title,
            self.settings.host,
            self.settings.dimse_port,
            self.settings.dimse_owner,
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    async def _owner(self) -> int | None:
        if self._owner_id is None:
            user = await self.service.accounts.user_named(self.settings.dimse_owner)
            self._owner_id = user.id if user is not None else None
        return self._owner_id

    async def _analyse(self, data: bytes, calling: str) -> InstanceOutcome | None:
        owner = await self._owner()
        if owner is None:
            return None
        client = f"dicom:{calling}"
        audit = AuditContext("dimse", "user", owner, None, client, None)
        return await self.service.intake.analyse(
            data, owner, client=client, admit=True, audit=audit
        )

    def _on_store(self, event):
        """pynetdicom's thread: the instance to the event loop, its outcome back."""
        from pydicom.dataset import Dataset

        assert self.loop is not None
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            data = event.encoded_dataset()
            future = asyncio.run_coroutine_threadsafe(self._analyse(data, calling), self.loop)
            outcome = future.result(timeout=self.settings.inference_timeout_s + 30)
        except FutureTimeout:
            rsp = Dataset()
            rsp.Status, rsp.ErrorComment = OUT_OF_RESOURCES, "timed out: retry later"
            return rsp
        except Exception:  # a bug must not kill the association's thread silently
            log.exception("C-STORE from %s could not be handled", calling)
            rsp = Dataset()
            rsp.Status, rsp.ErrorComment = PROCESSING_FAILURE, "internal error"
            return rsp
        if outcome is None:
            log.error(
                "C-STORE from %s refused: the account %r (CHEXRAY_DIMSE_OWNER) does not exist",
                calling,
                self.settings.dimse_owner,
            )
            rsp = Dataset()
            rsp.Status = NOT_AUTHORISED
            rsp.ErrorComment = "CHEXRAY_DIMSE_OWNER names no account"
            return rsp
        return status_of(outcome)
