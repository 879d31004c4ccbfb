"""Errors below the front ends: a stable `code`, a message for people, no protocol status.

The class says what kind of failure it is (as KServe's and gRPC's error kinds do); each
front end maps kinds to its own statuses in one table (`server/api/errors.py` for HTTP).
"""

from __future__ import annotations


class ChexrayError(Exception):
    """`code`: stable, for programs; `message`: what was wrong and what to do;
    `detail`: structured extras (e.g. the field concerned); `retry_after`: seconds."""

    def __init__(
        self,
        code: str,
        message: str,
        detail: object | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.detail, self.retry_after = detail, retry_after


class InvalidInput(ChexrayError):
    """The request is malformed (e.g. an empty upload)."""


class Unauthenticated(ChexrayError):
    """No valid credentials."""


class Forbidden(ChexrayError):
    """Known, but not allowed to do this (e.g. an administrator's action)."""


class NotFound(ChexrayError):
    """No such thing, or not the caller's to see (the two are never told apart)."""


class Conflict(ChexrayError):
    """The request clashes with what exists (e.g. a taken username)."""


class TooLarge(ChexrayError):
    """The input exceeds a configured limit."""


class UnsupportedInput(ChexrayError):
    """A format or encoding this server cannot read."""


class UnprocessableInput(ChexrayError):
    """Well-formed but unusable: a damaged image, a weak password."""


class Unavailable(ChexrayError):
    """The server cannot take the work now (loading, failed models, overloaded)."""


class QuotaExceeded(ChexrayError):
    """The caller has used up an allowance for now; `retry_after` says when it frees up."""


class InsufficientStorage(ChexrayError):
    """No room to keep the work: the disk is full, or a storage quota is reached."""


class UpstreamError(ChexrayError):
    """A service CheXray relies on (the PACS) refused or answered wrongly: not the caller's
    input, and not this server's failure."""
