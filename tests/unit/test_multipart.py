"""multipart/related for DICOMweb (server/pacs/multipart.py): round trips, bodies written by
independent encoders (dicomweb-client's, the email package's), what real senders vary
(quoting, preamble, epilogue, folded headers, bare LF, padding), and every broken body
refused as `invalid_multipart` with a message, never a bare exception."""

from __future__ import annotations

import email
import email.policy
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart

import pytest

from server.errors import InvalidInput
from server.pacs.multipart import Part, decode_related, encode_related, parse_content_type
from tests.support.dicom_studies import chest_instance

CT = 'multipart/related; type="application/dicom"; boundary=BND'


def invalid(body: bytes, content_type: str | None, **kw: int) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        decode_related(body, content_type, **kw)
    assert caught.value.code == "invalid_multipart"
    assert caught.value.message
    return caught.value


def test_round_trip_keeps_bytes_order_and_type() -> None:
    parts = [
        chest_instance(seed=1),
        b"",
        b"\r\n--not-the-boundary\r\n\r\n",
        bytes(range(256)) * 3,
        b"ends with CR\r",
    ]
    body, content_type = encode_related(parts)
    media, params = parse_content_type(content_type)
    assert media == "multipart/related"
    assert params["type"] == "application/dicom"
    assert b"--" + params["boundary"].encode() + b"--\r\n" in body
    decoded = decode_related(body, content_type)
    assert [p.data for p in decoded] == parts
    assert {p.content_type for p in decoded} == {"application/dicom"}


def test_part_type_with_parameters_keeps_them_per_part() -> None:
    ts = 'application/dicom; transfer-syntax="1.2.840.10008.1.2.1"'
    body, content_type = encode_related([b"x"], ts)
    assert parse_content_type(content_type)[1]["type"] == "application/dicom"
    (part,) = decode_related(body, content_type)
    assert part.content_type == ts
    assert parse_content_type(part.content_type) == (
        "application/dicom",
        {"transfer-syntax": "1.2.840.10008.1.2.1"},
    )


def test_encoder_picks_a_boundary_absent_from_the_parts() -> None:
    body, content_type = encode_related([b"a", b"b"])
    boundary = parse_content_type(content_type)[1]["boundary"]
    assert body.count(b"--" + boundary.encode()) == 3


def test_encoder_refuses_a_line_break_in_the_part_type() -> None:
    with pytest.raises(ValueError):
        encode_related([b"x"], "application/dicom\r\nX-Injected: 1")


def test_body_from_dicomweb_clients_encoder() -> None:
    """dicomweb-client starts with CRLF (an empty preamble) and ends without one."""
    from dicomweb_client.web import DICOMwebClient

    parts = [chest_instance(seed=2), chest_instance(seed=3)]
    content_type = 'multipart/related; type="application/dicom"; boundary=0f3cf5c0-70e0-41ef'
    body = DICOMwebClient._encode_multipart_message(parts, content_type)
    assert body.startswith(b"\r\n--") and not body.endswith(b"\r\n")
    decoded = decode_related(body, content_type)
    assert [p.data for p in decoded] == parts
    assert decoded[0].content_type == "application/dicom"


def test_body_from_the_email_package_base64_and_preamble() -> None:
    """The email package writes a preamble, quotes the boundary, and base64-encodes
    application parts."""
    parts = [chest_instance(seed=4), b"\x00\xff" * 100]
    msg = MIMEMultipart("related", type="application/dicom")
    msg.preamble = "This is a multi-part message in MIME format."
    for p in parts:
        msg.attach(MIMEApplication(p, "dicom"))
    raw = msg.as_bytes(policy=email.policy.HTTP)
    header_end = raw.index(b"\r\n\r\n")
    headers, body = raw[:header_end].decode(), raw[header_end + 4 :]
    content_type = next(
        line.split(":", 1)[1] for line in headers.splitlines() if line.startswith("Content-Type")
    )
    assert 'boundary="' in content_type and body.startswith(b"This is a multi-part")
    decoded = decode_related(body, content_type)
    assert [p.data for p in decoded] == parts
    assert decoded[0].headers["content-transfer-encoding"] == "base64"


def test_our_body_read_by_the_email_parser() -> None:
    parts = [chest_instance(seed=5), b"second\r\n\r\npart"]
    body, content_type = encode_related(parts)
    msg = email.message_from_bytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body, policy=email.policy.HTTP
    )
    assert msg.get_content_type() == "multipart/related"
    assert not msg.defects
    assert [p.get_payload(decode=True) for p in msg.iter_parts()] == parts


def test_what_real_senders_vary() -> None:
    body = (
        b"preamble, to be ignored\r\n"
        b"--BND  \t\r\n"  # transport padding after the boundary
        b"content-type: application/dicom\r\n"
        b"X-Folded: first\r\n\tsecond\r\n"
        b"Content-Length: 5\r\n"
        b"\r\n"
        b"hello\r\n"
        b"--BND\r\n"
        b"\r\n"  # no headers: the root's type
        b"second\r\n"
        b"--BNDX not a delimiter\r\n"  # the boundary as a prefix of a data line
        b"--BND--\r\n"
        b"epilogue, to be ignored\r\n--BND\r\n"
    )
    a, b = decode_related(body, "Multipart/Related; boundary = BND ; type=application/dicom")
    assert a == Part(
        "application/dicom",
        b"hello",
        {"content-type": "application/dicom", "x-folded": "first second", "content-length": "5"},
    )
    assert b == Part("application/dicom", b"second\r\n--BNDX not a delimiter", {})


def test_part_without_any_type_is_text_plain() -> None:
    (part,) = decode_related(b"--BND\r\n\r\nx\r\n--BND--", "multipart/related; boundary=BND")
    assert part.content_type == "text/plain"


def test_bare_lf_line_ends() -> None:
    body = (
        b"--BND\nContent-Type: application/dicom\n\nabc\n--BND\nContent-Type: text/x\n\nd\n--BND--"
    )
    a, b = decode_related(body, CT)
    assert (a.data, b.data, b.content_type) == (b"abc", b"d", "text/x")


def test_quoted_boundary_with_escapes_and_specials() -> None:
    boundary = "a:b=c?d (e)"
    body, _ = encode_related([b"x"])
    body = body.replace(body[2 : body.index(b"\r\n")], boundary.encode())
    (part,) = decode_related(body, 'multipart/related; boundary="a:b=c?d \\(e)"')
    assert part.data == b"x"


def test_boundary_prefix_inside_data_is_data() -> None:
    body = b"--BND\r\n\r\nline\r\n--BND-but-longer\r\nmore\r\n--BND--"
    (part,) = decode_related(body, CT)
    # "--BND" then "-b": neither the close delimiter's "--" nor padding and a line end.
    assert part.data == b"line\r\n--BND-but-longer\r\nmore"


@pytest.mark.parametrize(
    ("content_type", "says"),
    [
        (None, "no Content-Type"),
        ("", "no Content-Type"),
        ("application/dicom", "not multipart/related"),
        ("multipart/mixed; boundary=BND", "not multipart/related"),
        ('multipart/related; type="application/dicom"', "no boundary"),
        ("multipart/related; boundary=", "no boundary"),
        ("multipart/related; boundary=" + "x" * 201, "1 to 200"),
        ('multipart/related; boundary="ends in space "', "1 to 200"),
        ('multipart/related; boundary="b\u00e9"', "1 to 200"),
    ],
)
def test_content_type_problems(content_type: str | None, says: str) -> None:
    body, _ = encode_related([b"x"])
    assert says in invalid(body, content_type).message


def test_wrong_boundary() -> None:
    body, _ = encode_related([b"x"])
    assert "no line with the boundary" in invalid(body, CT).message


def test_truncated_bodies() -> None:
    body, content_type = encode_related([chest_instance(seed=6), b"second"])
    for cut in (len(body) - 3, len(body) // 2, 60):
        error = invalid(body[:cut], content_type)
        assert "cut short" in error.message, cut


def test_close_delimiter_alone_has_no_parts() -> None:
    assert "no parts" in invalid(b"--BND--\r\n", CT).message


def test_too_many_parts() -> None:
    body, content_type = encode_related([b"p"] * 5)
    assert len(decode_related(body, content_type, max_parts=5)) == 5
    error = invalid(body, content_type, max_parts=4)
    assert "more than 4 parts" in error.message and error.detail == {"max_parts": 4}


def test_part_without_blank_line_after_headers() -> None:
    body = b"--BND\r\n" + b"\x00DICM binary without headers" + b"\r\n--BND--"
    assert "no blank line" in invalid(body, CT).message
    long_headerless = b"--BND\r\n" + b"x" * 20000 + b"\r\n\r\ny\r\n--BND--"
    assert "no blank line" in invalid(long_headerless, CT).message


def test_malformed_header_line() -> None:
    body = b"--BND\r\nContent-Type application/dicom\r\n\r\nx\r\n--BND--"
    error = invalid(body, CT)
    assert "part 1's headers are malformed" in error.message and error.detail == {"part": 1}


def test_content_length_that_disagrees() -> None:
    body = b"--BND\r\nContent-Length: 9\r\n\r\nabc\r\n--BND--"
    assert "declares Content-Length 9 but holds 3" in invalid(body, CT).message


def test_transfer_encodings() -> None:
    qp = b"--BND\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\na=3Db\r\n--BND--"
    assert decode_related(qp, CT)[0].data == b"a=b"
    bad64 = b"--BND\r\nContent-Transfer-Encoding: base64\r\n\r\nabc\r\n--BND--"
    assert "not valid base64" in invalid(bad64, CT).message
    other = b"--BND\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nabc\r\n--BND--"
    assert "does not read" in invalid(other, CT).message


def test_garbage_never_raises_anything_else() -> None:
    import random

    rng = random.Random(7)
    good, content_type = encode_related([b"alpha", chest_instance(seed=8)[:300], b"omega"])
    for _ in range(500):
        body = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            body[rng.randrange(len(body))] = rng.choice(b"\r\n-xB:\x00")
        if rng.random() < 0.3:
            del body[rng.randrange(len(body)) :]
        try:
            parts = decode_related(bytes(body), content_type)
        except InvalidInput as exc:
            assert exc.code == "invalid_multipart"
        else:
            assert all(isinstance(p.data, bytes) for p in parts)
