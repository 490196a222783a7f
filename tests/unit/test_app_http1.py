"""Sans-io HTTP/1.1 pieces of the app forwarder, the JWT signer and header templates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jumpgate.core.app.http1 import (
    CHUNKED,
    LENGTH,
    NONE,
    UNTIL_CLOSE,
    ChunkedScanner,
    HTTPError,
    head_end,
    parse_request_head,
    parse_response_head,
    request_framing,
    response_framing,
)
from jumpgate.core.app.jwt import app_claims, public_jwk, sign_es256
from jumpgate.core.app.rewrite import render_headers
from jumpgate.core.tlsca import generate_private_key

BODY = b"5\r\nhello\r\n1;ext=1\r\n \r\n0\r\nTrailer: x\r\n\r\n"


@given(st.lists(st.integers(min_value=1, max_value=len(BODY)), max_size=8))
def test_chunked_scanner_finds_the_end_across_any_split(cuts: list[int]) -> None:
    data = BODY + b"NEXT"
    points = sorted({c for c in cuts if c < len(data)})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    sc = ChunkedScanner()
    consumed = 0
    for piece in pieces:
        end = sc.feed(piece)
        if end >= 0:
            consumed += end
            break
        consumed += len(piece)
    assert consumed == len(BODY)


def test_chunked_scanner_refuses_bad_sizes() -> None:
    with pytest.raises(HTTPError):
        ChunkedScanner().feed(b"zz\r\n")
    with pytest.raises(HTTPError):
        ChunkedScanner().feed(b"-5\r\n")


def test_request_framing_and_smuggling_guards() -> None:
    raw = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n"
    assert head_end(raw + b"body") == len(raw)
    assert request_framing(parse_request_head(raw)) == (LENGTH, 10)
    te = parse_request_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert request_framing(te) == (CHUNKED, 0)
    both = parse_request_head(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
    )
    with pytest.raises(HTTPError):
        request_framing(both)
    two = parse_request_head(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n")
    with pytest.raises(HTTPError):
        request_framing(two)
    with pytest.raises(HTTPError):
        parse_request_head(b"GET / HTTP/1.1\r\n folded: x\r\n\r\n")
    with pytest.raises(HTTPError) as exc:
        parse_request_head(b"GET / HTTP/2.0\r\n\r\n")
    assert exc.value.status == 505
    assert request_framing(parse_request_head(b"GET / HTTP/1.1\r\n\r\n")) == (NONE, 0)


def test_response_framing() -> None:
    ok = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert response_framing(ok, "GET") == (LENGTH, 5)
    assert response_framing(ok, "HEAD") == (NONE, 0)
    nc = parse_response_head(b"HTTP/1.1 304 Not Modified\r\n\r\n")
    assert response_framing(nc, "GET") == (NONE, 0)
    eof = parse_response_head(b"HTTP/1.0 200 OK\r\n\r\n")
    assert response_framing(eof, "GET") == (UNTIL_CLOSE, 0)
    with pytest.raises(HTTPError):
        parse_response_head(b"garbage\r\n\r\n")


def test_es256_jwt_verifies_with_pyjwt() -> None:
    import jwt as pyjwt

    key = generate_private_key()
    now = datetime.now(UTC)
    token = sign_es256(
        app_claims(
            username="alice",
            roles=["access"],
            traits={"logins": ["root"]},
            issuer="example.com",
            audience="http://localhost:3000",
            now=now,
            expires=now + timedelta(hours=1),
            jwt_claims="roles",
        ),
        key,
    )
    claims = pyjwt.decode(
        token,
        key.public_key(),
        algorithms=["ES256"],
        audience="http://localhost:3000",
        issuer="example.com",
    )
    assert claims["roles"] == ["access"] and "traits" not in claims and claims["sub"] == "alice"


def test_jwk_coordinates_keep_leading_zero_bytes() -> None:
    """About one key in 128 has a coordinate below 2**248; its JWK must still carry 32
    bytes, or PyJWT (like any verifier) rejects the key as not on the curve."""
    import base64

    import jwt as pyjwt
    from cryptography.hazmat.primitives.asymmetric import ec

    key = next(
        k
        for k in (ec.generate_private_key(ec.SECP256R1()) for _ in range(20_000))
        if min(k.public_key().public_numbers().x, k.public_key().public_numbers().y) < 2**248
    )
    jwk = public_jwk(key.public_key())
    for coord in ("x", "y"):
        assert len(base64.urlsafe_b64decode(jwk[coord] + "=")) == 32
    now = datetime.now(UTC)
    claims = app_claims(
        username="alice",
        roles=["access"],
        traits={},
        issuer="example.com",
        audience="http://localhost:3000",
        now=now,
        expires=now + timedelta(hours=1),
        jwt_claims="roles",
    )
    verify_key = pyjwt.PyJWK(jwk).key
    got = pyjwt.decode(
        sign_es256(claims, key),
        verify_key,
        algorithms=["ES256"],
        audience="http://localhost:3000",
        issuer="example.com",
    )
    assert got["sub"] == "alice"


def test_rewrite_headers_fill_templates_and_drop_missing_traits() -> None:
    out = render_headers(
        [
            ("Authorization", "Bearer {{internal.jwt}}"),
            ("X-Login", "{{internal.logins}}"),
            ("X-Team", "{{external.team}}"),
        ],
        jwt="J",
        traits={"logins": ["a", "b"]},
    )
    assert out == [("Authorization", "Bearer J"), ("X-Login", "a,b")]


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nX-Note: a\nX-Forwarded-For: 6.6.6.6\r\n\r\n",  # bare LF
        b"GET / HTTP/1.1\r\nX-Note: a\rX-Forwarded-For: 6.6.6.6\r\n\r\n",  # bare CR
        b"GET / HTTP/1.1\r\nX-Note: a\x00b\r\n\r\n",  # NUL
        b"GET / HTTP/1.1\r\nX-Note: a\x0bb\r\n\r\n",  # vertical tab
        b"GET / HTTP/1.1\r\nX-Note: a\x7fb\r\n\r\n",  # DEL
        b"GET /a\nb HTTP/1.1\r\n\r\n",  # LF in the target
        b"GET /a\x01b HTTP/1.1\r\n\r\n",  # control character in the target
        b"GET /a\tb HTTP/1.1\r\n\r\n",  # tab in the target
        b"GET / HTTP/1.1\nHost: a\r\n\r\n",  # request line ended by a bare LF
    ],
)
def test_request_heads_with_control_characters_are_refused(head: bytes) -> None:
    with pytest.raises(HTTPError) as exc:
        parse_request_head(head)
    assert exc.value.status == 400


def test_control_character_errors_name_the_field() -> None:
    with pytest.raises(HTTPError) as exc:
        parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nX-Note: a\nX-Evil: 1\r\n\r\n")
    assert "0x0a in 'X-Note'" in exc.value.message


def test_tabs_and_obs_text_in_field_values_are_kept() -> None:
    head = parse_request_head(b"GET / HTTP/1.1\r\nX-A: a\tb\r\nX-B: caf\xc3\xa9\r\n\r\n")
    assert head.get(b"x-a") == b"a\tb" and head.get(b"x-b") == b"caf\xc3\xa9"


@pytest.mark.parametrize(
    "body",
    [
        b"1_0\r\n0123456789abcdef\r\n0\r\n\r\n",  # '_' (int(.., 16) accepts it)
        b" 5\r\nhello\r\n0\r\n\r\n",  # whitespace before the size
        b"5\x0b\r\nhello\r\n0\r\n\r\n",  # vertical tab after the size
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"\r\nhello\r\n0\r\n\r\n",  # empty size
        b"11111111111111111\r\n",  # more than 16 digits
        b"5\r\nhelloXX0\r\n\r\n",  # no CRLF after the data
        b"5\r\nhello\n0\r\n\r\n",  # LF only after the data
        b"5\nhello\r\n0\r\n\r\n",  # size line ended by a bare LF
        b"5\r\nhello\r\n0\r\n\n",  # last line ended by a bare LF
        b"5\r\nhello\r\n0\r\nX: a\nY: b\r\n\r\n",  # bare LF in the trailer
        b"5\r\nhello\r\n0\r\nnot a field\r\n\r\n",
        b"5;a\x00b\r\nhello\r\n0\r\n\r\n",  # NUL in an extension
    ],
)
def test_chunked_scanner_refuses_lenient_framing(body: bytes) -> None:
    with pytest.raises(HTTPError) as exc:
        ChunkedScanner().feed(body)
    assert exc.value.status == 400
    # byte by byte too: the CRLF after data may be split
    sc = ChunkedScanner()
    with pytest.raises(HTTPError):
        for i in range(len(body)):
            sc.feed(body[i : i + 1])


def test_chunked_scanner_accepts_extensions_and_trailers() -> None:
    body = b"A ; name=value\r\n0123456789\r\nf;x\r\n0123456789abcde\r\n0\r\nX-T: 1\r\n\r\n"
    assert ChunkedScanner().feed(body + b"GET") == len(body)


def test_a_transfer_coding_with_a_control_character_is_not_chunked() -> None:
    with pytest.raises(HTTPError):
        parse_request_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\x0b\r\n\r\n")
    resp = parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\x0b\r\n\r\n")
    with pytest.raises(HTTPError):
        response_framing(resp, "GET")


def test_public_addr_conflicts() -> None:
    from jumpgate.core.app.auth import addr_host, public_addr_conflict

    claimed = {"grafana.example.org": "grafana"}
    assert addr_host("[::1]:443") == "::1" and addr_host("A.Example.COM.:3080") == "a.example.com"
    assert "proxy's own" in public_addr_conflict(
        "a", "proxy.example.com:443", "proxy.example.com", {}
    )
    assert '"victim"' in public_addr_conflict(
        "a", "victim.proxy.example.com", "proxy.example.com", {}
    )
    assert public_addr_conflict("a", "a.proxy.example.com", "proxy.example.com", {}) == ""
    assert '"grafana"' in public_addr_conflict("a", "grafana.example.org", "p.example", claimed)
    assert public_addr_conflict("grafana", "grafana.example.org", "p.example", claimed) == ""
    assert public_addr_conflict("a", "a.example.org:8443", "p.example", claimed) == ""
