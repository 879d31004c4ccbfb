"""Who the client is, given the peer, CHEXRAY_TRUSTED_PROXIES and forwarding headers."""

from __future__ import annotations

from server.api.middleware import TrustedProxies, client_address, forwarded_scheme


def scope(peer: str | None, *headers: tuple[str, str]) -> dict:
    return {
        "type": "http",
        "client": (peer, 40000) if peer else None,
        "headers": [(k.encode(), v.encode()) for k, v in headers],
    }


PROXY = TrustedProxies(["10.0.0.0/8", "192.0.2.1"])


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    s = scope("10.0.0.1", ("x-forwarded-for", "198.51.100.7"), ("x-forwarded-proto", "https"))
    assert client_address(s, TrustedProxies()) == "10.0.0.1"
    assert forwarded_scheme(s, TrustedProxies()) is None
    assert client_address(scope(None), TrustedProxies()) == "unknown"


def test_an_untrusted_peer_cannot_choose_its_address() -> None:
    s = scope("203.0.113.66", ("x-forwarded-for", "198.51.100.7"), ("x-forwarded-proto", "https"))
    assert client_address(s, PROXY) == "203.0.113.66"
    assert forwarded_scheme(s, PROXY) is None


def test_behind_a_trusted_proxy_the_right_most_untrusted_entry_is_the_client() -> None:
    assert client_address(scope("10.0.0.1", ("x-forwarded-for", "198.51.100.7")), PROXY) == (
        "198.51.100.7"
    )
    # the client wrote the left entries itself; the proxy appended what it saw
    forged = scope("10.0.0.1", ("x-forwarded-for", "1.1.1.1, 8.8.8.8,198.51.100.7"))
    assert client_address(forged, PROXY) == "198.51.100.7"
    # two proxies (both trusted): the entry the outer one appended is the client
    chain = scope("10.0.0.1", ("x-forwarded-for", "1.1.1.1, 198.51.100.7, 192.0.2.1"))
    assert client_address(chain, PROXY) == "198.51.100.7"
    # repeated headers are one list, in order
    split = scope("192.0.2.1", ("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "198.51.100.8"))
    assert client_address(split, PROXY) == "198.51.100.8"


def test_entries_with_ports_brackets_and_mapped_addresses() -> None:
    cases = {
        "198.51.100.7:5123": "198.51.100.7",
        "[2001:db8::1]:443": "2001:db8::1",
        "2001:DB8::1": "2001:db8::1",
        "::ffff:198.51.100.9": "198.51.100.9",
        "unknown": "unknown",
    }
    for entry, client in cases.items():
        assert client_address(scope("10.1.2.3", ("x-forwarded-for", entry)), PROXY) == client
    assert client_address(scope("::ffff:10.0.0.1", ("x-forwarded-for", "198.51.100.1")), PROXY) == (
        "198.51.100.1"
    )


def test_a_trusted_peer_without_usable_header_is_the_client() -> None:
    assert client_address(scope("10.0.0.1"), PROXY) == "10.0.0.1"
    assert client_address(scope("10.0.0.1", ("x-forwarded-for", " , ")), PROXY) == "10.0.0.1"
    # every hop a trusted proxy: the left-most is the nearest thing to a client
    inner = scope("10.0.0.1", ("x-forwarded-for", "10.9.9.9, 10.0.0.2"))
    assert client_address(inner, PROXY) == "10.9.9.9"


def test_the_scheme_a_trusted_proxy_forwards() -> None:
    assert forwarded_scheme(scope("10.0.0.1", ("x-forwarded-proto", "HTTPS")), PROXY) == "https"
    assert forwarded_scheme(scope("10.0.0.1", ("x-forwarded-proto", "https, http")), PROXY) is None
    assert forwarded_scheme(scope("10.0.0.1", ("x-forwarded-proto", "gopher")), PROXY) is None
    assert forwarded_scheme(scope("10.0.0.1"), PROXY) is None
