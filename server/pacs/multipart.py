"""multipart/related (RFC 2387, framed as RFC 2046 says) for DICOMweb: STOW-RS request bodies
and WADO-RS response bodies, in both directions.

The decoder takes what real senders write: a quoted or bare boundary, a preamble and an
epilogue, part headers (folded or not), CRLF or bare LF line ends, padding after a
boundary. Whatever it cannot take raises `InvalidInput("invalid_multipart", ...)` saying
what was wrong and what to send instead, never a bare exception.
"""

from __future__ import annotations

import binascii
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from server.errors import InvalidInput

CODE = "invalid_multipart"
# RFC 2046 says 70; Orthanc sends 73 (two UUIDs): be liberal in what is accepted.
MAX_BOUNDARY = 200
# A part's header block this long without its blank line is binary data without headers.
MAX_HEADER_BYTES = 16 * 1024
# RFC 2046's bchars: digits, letters and '()+_,-./:=? and space (not last).
_BCHARS = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SEND = 'send multipart/related; type="application/dicom"; boundary=<boundary>'


@dataclass(frozen=True, slots=True)
class Part:
    """One body part: its media type (parameters kept, e.g. a transfer-syntax), its bytes,
    and all its headers by lower-case name."""

    content_type: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _invalid(message: str, **detail: object) -> InvalidInput:
    return InvalidInput(CODE, message, detail or None)


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """A Content-Type header's media type (lower case) and parameters (names in lower case,
    values unquoted). Lenient about spacing; a parameter without '=' is ignored."""
    media, _, rest = value.partition(";")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        start = i
        while i < n and rest[i] not in "=;":
            i += 1
        name = rest[start:i].strip().lower()
        if i >= n or rest[i] == ";":
            continue
        i += 1  # '='
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            i += 1
            chars: list[str] = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(rest[i])
                i += 1
            i += 1  # closing quote (or the end, for an unclosed one)
            val = "".join(chars)
        else:
            start = i
            while i < n and rest[i] != ";":
                i += 1
            val = rest[start:i].strip()
        if name:
            params[name] = val
    return media.strip().lower(), params


def _boundary(content_type: str | None) -> tuple[bytes, dict[str, str]]:
    if not content_type:
        raise _invalid(f"the request has no Content-Type; {_SEND}")
    media, params = parse_content_type(content_type)
    if media != "multipart/related":
        raise _invalid(
            f"the Content-Type is {media or 'empty'!r}, not multipart/related; {_SEND}",
            content_type=media,
        )
    boundary = params.get("boundary", "")
    if not boundary:
        raise _invalid(f"the Content-Type has no boundary parameter; {_SEND}")
    raw = boundary.encode("latin-1", "replace")
    if len(raw) > MAX_BOUNDARY or raw.endswith(b" ") or not set(raw) <= _BCHARS:
        raise _invalid(
            f"the boundary must be 1 to {MAX_BOUNDARY} letters, digits or '()+_,-./:=? (not "
            "ending in a space); quote it if it holds any of these, and send one that is",
            boundary=boundary[:100],
        )
    return raw, params


def _line_end(body: bytes, i: int) -> int | None:
    """Where the line after a boundary starts, if only padding (spaces, tabs) and a line
    end (CRLF or LF) follow position i; else None (not a delimiter after all)."""
    n = len(body)
    while i < n and body[i] in b" \t":
        i += 1
    if body.startswith(b"\r\n", i):
        return i + 2
    if body.startswith(b"\n", i):
        return i + 1
    return None


def _next_delimiter(body: bytes, dash: bytes, start: int) -> tuple[int, int, bool] | None:
    """The next delimiter line at or after `start` (which is right after a line end):
    (where the data before it ends, where the next part starts, is it the close delimiter).
    A line that merely begins with the boundary followed by other text is data."""
    i = start
    while True:
        at = body.find(dash, i)
        if at < 0:
            return None
        if at == start or body[at - 1 : at] == b"\n":
            after = at + len(dash)
            # The line end before the delimiter belongs to it, not to the data.
            data_end = at
            if at - 2 >= start and body[at - 2 : at] == b"\r\n":
                data_end = at - 2
            elif at - 1 >= start and body[at - 1 : at] == b"\n":
                data_end = at - 1
            if body.startswith(b"--", after):
                return data_end, after + 2, True
            nxt = _line_end(body, after)
            if nxt is not None:
                return data_end, nxt, False
        i = at + 1


def _parse_headers(block: bytes, index: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    last: str | None = None
    for raw in block.split(b"\n"):
        line = raw.removesuffix(b"\r").decode("latin-1")
        if not line:
            continue
        if line[0] in " \t" and last is not None:  # folded onto the previous header
            headers[last] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or not set(name.encode("latin-1")) <= _TOKEN:
            raise _invalid(
                f"part {index + 1}'s headers are malformed ({line[:80]!r}); each part needs "
                "header lines such as 'Content-Type: application/dicom', then a blank line, "
                "then its bytes",
                part=index + 1,
            )
        last = name.lower()
        headers[last] = value.strip()
    return headers


def _split_part(chunk: bytes, index: int, default_type: str) -> Part:
    """A part's header block (up to its blank line) and data. A part that starts with a
    line end has no headers."""
    if not chunk:
        return Part(default_type, b"", {})
    if chunk.startswith(b"\r\n"):
        headers, data = {}, chunk[2:]
    elif chunk.startswith(b"\n"):
        headers, data = {}, chunk[1:]
    else:
        crlf, lf = chunk.find(b"\r\n\r\n"), chunk.find(b"\n\n")
        ends = [(p, w) for p, w in ((crlf, 4), (lf, 2)) if p >= 0]
        if not ends or min(ends)[0] > MAX_HEADER_BYTES:
            raise _invalid(
                f"part {index + 1} has no blank line ending its headers; each part needs "
                "header lines such as 'Content-Type: application/dicom', then a blank line, "
                "then its bytes",
                part=index + 1,
            )
        end, width = min(ends)
        headers, data = _parse_headers(chunk[:end], index), chunk[end + width :]
    data = _transfer_decode(data, headers.get("content-transfer-encoding", ""), index)
    declared = headers.get("content-length")
    if declared is not None and declared.strip() != str(len(data)):
        raise _invalid(
            f"part {index + 1} declares Content-Length {declared[:20]} but holds "
            f"{len(data)} bytes: the body is damaged or cut; send it again",
            part=index + 1,
        )
    return Part(headers.get("content-type") or default_type, data, headers)


def _transfer_decode(data: bytes, encoding: str, index: int) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "binary", "8bit", "7bit"):
        return data
    try:
        if encoding == "base64":
            return binascii.a2b_base64(data)
        if encoding == "quoted-printable":
            return binascii.a2b_qp(data)
    except binascii.Error as exc:
        raise _invalid(
            f"part {index + 1} is not valid {encoding} ({exc}); send it in binary",
            part=index + 1,
        ) from None
    raise _invalid(
        f"part {index + 1} has Content-Transfer-Encoding {encoding[:40]!r}, which this server "
        "does not read; send it in binary",
        part=index + 1,
    )


def decode_related(body: bytes, content_type: str | None, *, max_parts: int = 1000) -> list[Part]:
    """The parts of a multipart/related body, in order. A part without a Content-Type takes
    the `type` parameter's (the root's type, RFC 2387), else text/plain."""
    dash_boundary, params = _boundary(content_type)
    dash = b"--" + dash_boundary
    default_type = params.get("type") or "text/plain"
    first = _next_delimiter(body, dash, 0)
    if first is None:
        raise _invalid(
            "the body holds no line with the boundary that the Content-Type names; send "
            "the boundary line '--<boundary>' before each part, or fix the boundary parameter",
            body_bytes=len(body),
        )
    _, pos, closed = first
    parts: list[Part] = []
    while not closed:
        found = _next_delimiter(body, dash, pos)
        if found is None:
            raise _invalid(
                f"the body ends inside part {len(parts) + 1}, without the closing boundary "
                "'--<boundary>--': it was cut short; send the whole body",
                parts_complete=len(parts),
            )
        if len(parts) == max_parts:
            raise _invalid(
                f"the body holds more than {max_parts} parts; send at most {max_parts} per request",
                max_parts=max_parts,
            )
        data_end, nxt, closed = found
        parts.append(_split_part(body[pos:data_end], len(parts), default_type))
        pos = nxt
    if not parts:
        raise _invalid("the body holds no parts (only a closing boundary); send at least one")
    return parts


def _media_type(part_type: str) -> str:
    return part_type.partition(";")[0].strip()


def encode_related(
    parts: Sequence[bytes], part_type: str = "application/dicom"
) -> tuple[bytes, str]:
    """A multipart/related body of `parts`, each with Content-Type `part_type`, and the
    Content-Type header for it (type = the parts' media type, a fresh random boundary)."""
    if any(c in part_type for c in "\r\n"):
        raise ValueError("a part's Content-Type cannot hold a line break")
    while True:
        boundary = f"chexray-{secrets.token_hex(16)}".encode("ascii")
        dash = b"--" + boundary
        if not any(dash in p for p in parts):
            break
    head = b"\r\nContent-Type: " + part_type.encode("latin-1") + b"\r\n\r\n"
    chunks: list[bytes] = []
    for p in parts:
        chunks += [dash, head, p, b"\r\n"]
    chunks += [dash, b"--\r\n"]
    content_type = (
        f'multipart/related; type="{_media_type(part_type)}"; boundary={boundary.decode()}'
    )
    return b"".join(chunks), content_type
