"""The audit log, below every protocol: one record per analysis asked of CheXray, answered
or refused, appended to the hash chain of server/store/audit.py.

Who asked comes from the front end as an AuditContext (protocol, principal, client address,
request id); what was asked and what answered from the service's own analysis. Never
pixels, never who the patient is: the input is known by its SHA-256.

Writes are group-committed: records wait in a queue, one writer task commits everything
queued in one transaction, and each request awaits its own record's commit before its
answer leaves, so nothing is answered unlogged. When the log cannot be written, the
analysis fails with `database_unavailable` rather than answer unrecorded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio.to_thread

from server.errors import ChexrayError, Unavailable
from server.store import audit as table
from server.store.store import Store

if TYPE_CHECKING:
    from server.runtime.engine import Prediction

log = logging.getLogger("chexray.audit")

PROTOCOLS = ("rest", "legacy", "oip-rest", "oip-grpc", "dicomweb", "pacs-pull", "dimse")
MAX_GROUP = 500  # records committed in one transaction at most
HASH_IN_THREAD = 1 << 20  # inputs above this size are hashed off the event loop


@dataclass(frozen=True)
class AuditContext:
    """Who asked, as the front end knows it."""

    protocol: str  # one of PROTOCOLS
    principal: str = "anonymous"  # user, api_key, anonymous
    user_id: int | None = None
    api_key_id: int | None = None
    client: str | None = None  # the client's address (proxies considered)
    request_id: str | None = None


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def sha256(data: bytes) -> str:
    if len(data) > HASH_IN_THREAD:  # hashlib lets go of the GIL: another thread's work
        return await anyio.to_thread.run_sync(lambda: hashlib.sha256(data).hexdigest())
    return hashlib.sha256(data).hexdigest()


def entry(
    context: AuditContext,
    started: dt.datetime,
    *,
    digest: str | None = None,
    size: int | None = None,
    prediction: Prediction | None = None,
    image_format: str | None = None,
    forced: bool = False,
    total_ms: float | None = None,
    error: ChexrayError | str | None = None,
    model_version: str | None = None,
) -> dict[str, object]:
    """A record's fields: `prediction` when answered, `error` (or its code) when refused."""
    p = prediction
    timings = None
    if p is not None:
        timings = {
            "decode_ms": round(p.timings.decode_ms + p.timings.preprocess_ms, 3),
            "queue_ms": round(p.timings.queue_ms, 3),
            "compute_ms": round(p.timings.compute_ms, 3),
            "total_ms": None if total_ms is None else round(total_ms, 3),
        }
    elif total_ms is not None:
        timings = {"total_ms": round(total_ms, 3)}
    code = error.code if isinstance(error, ChexrayError) else error
    return {
        "time": started,
        "request_id": context.request_id,
        "protocol": context.protocol,
        "principal": context.principal,
        "user_id": context.user_id,
        "api_key_id": context.api_key_id,
        "client": context.client,
        "input_sha256": digest,
        "image_format": p.image.format if p is not None else image_format,
        "byte_size": size,
        "width": p.image.width if p is not None else None,
        "height": p.image.height if p is not None else None,
        "model_version": p.model_version if p is not None else model_version,
        "backend": p.backend if p is not None else None,
        "precision": p.precision if p is not None else None,
        "forced": forced,
        "thresholds": [float(t) for t in p.thresholds] if p is not None else None,
        "probabilities": [float(x) for x in p.probabilities] if p is not None else None,
        "calls": [bool(c) for c in p.calls] if p is not None else None,
        "timings": timings,
        "outcome": "answered" if error is None else "refused",
        "error_code": code,
    }


def unlogged() -> Unavailable:
    return Unavailable(
        "database_unavailable",
        "the audit log could not be written, so the analysis is not answered; retry shortly",
        retry_after=5.0,
    )


class AuditLog:
    def __init__(self, store: Store, enabled: bool = True, retention_days: float = 0) -> None:
        """`retention_days`: records older than this are deleted by `sweep` (0: never)."""
        self.store = store
        self.enabled = enabled
        self.retention = dt.timedelta(days=retention_days) if retention_days > 0 else None
        self._queue: list[tuple[dict[str, object], asyncio.Future[None] | None]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._idle: asyncio.Event | None = None

    # -- appending -------------------------------------------------------------------------

    async def append(self, *records: dict[str, object]) -> None:
        """Queue records and wait until they are committed; Unavailable when one cannot be.
        A caller cancelled meanwhile (a client gone) still has its records committed."""
        if not self.enabled or not records:
            return
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in records]
        for record, future in zip(records, futures, strict=True):
            self._put(record, future)
        await asyncio.shield(asyncio.gather(*futures))

    def append_nowait(self, record: dict[str, object]) -> None:
        """Queue a record without waiting for it: for refusals in places that cannot wait
        (admission, a synchronous context manager). A failure is logged."""
        if self.enabled:
            self._put(record, None)

    def _put(self, record: dict[str, object], future: asyncio.Future[None] | None) -> None:
        self._queue.append((record, future))
        if self._task is None or self._task.done():
            self._wake, self._idle = asyncio.Event(), asyncio.Event()
            self._task = asyncio.create_task(self._write_forever())
        assert self._wake is not None and self._idle is not None
        self._idle.clear()
        self._wake.set()

    async def _write_forever(self) -> None:
        assert self._wake is not None and self._idle is not None
        while True:
            if not self._queue:
                self._idle.set()
                await self._wake.wait()
                self._wake.clear()
                continue
            # Everything queued while the last commit ran goes in this one.
            group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
            try:
                await self.store.call(table.append, [r for r, _ in group])
            except Exception as exc:
                failure = exc if isinstance(exc, ChexrayError) else unlogged()
                log.error("audit log: %d record(s) not written: %s", len(group), exc)
                for _, future in group:
                    if future is not None and not future.done():
                        future.set_exception(failure)
            else:
                for _, future in group:
                    if future is not None and not future.done():
                        future.set_result(None)

    async def flush(self) -> None:
        """Wait until everything queued is written (or has failed)."""
        if self._task is not None and not self._task.done() and self._idle is not None:
            await self._idle.wait()

    async def close(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            self._task = None

    # -- reading, verifying, retention -----------------------------------------------------

    async def page(
        self,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        after_id: int = 0,
        limit: int = 1000,
    ) -> list[dict[str, object]]:
        """Records (as export dicts), oldest first."""
        rows = await self.store.call(table.page, since, until, after_id, limit)
        return [table.as_dict(r) for r in rows]

    async def verify(self) -> table.Verification:
        return await self.store.call(table.verify)

    async def sweep(self) -> int:
        """Delete the records past retention, a batch at a time; how many were deleted."""
        if self.retention is None:
            return 0
        cutoff, total = now() - self.retention, 0
        while deleted := await self.store.call(table.delete_before, cutoff):
            total += deleted
        return total


def export_line(record: dict[str, object]) -> str:
    """One record as a JSON Lines line (without the newline): the fields of
    server/store/audit.py FIELDS and `hash`, in that order."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)
