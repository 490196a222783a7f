"""The sans-io PostgreSQL protocol: start-up packets, builders and scanners, without sockets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jumpgate.core.db.engines.postgres.protocol import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    PROTOCOL_3_0,
    SSL_REQUEST_CODE,
    BackendStartupScanner,
    CancelRequest,
    FrontendScanner,
    GSSENCRequest,
    ProtocolError,
    SSLRequest,
    StartupMessage,
    authentication_ok,
    backend_key_data,
    cancel_request,
    error_response,
    parameter_status,
    parse_error_fields,
    parse_startup_packet,
    parse_statement,
    query_text,
    ready_for_query,
    ssl_request,
    startup_message,
)


def msg(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


# --------------------------------------------------------------------------- start-up packets


def test_constants() -> None:
    assert (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE, CANCEL_REQUEST_CODE) == (
        80877103,
        80877104,
        80877102,
    )
    assert PROTOCOL_3_0 == 3 << 16


def test_ssl_request() -> None:
    assert ssl_request() == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
    assert parse_startup_packet(ssl_request()) == (SSLRequest(), 8)


def test_gssenc_request() -> None:
    data = struct.pack("!II", 8, GSSENC_REQUEST_CODE)
    assert parse_startup_packet(data) == (GSSENCRequest(), 8)


def test_cancel_request_round_trip() -> None:
    data = cancel_request(4242, 0xDEADBEEF)
    assert len(data) == 16
    assert parse_startup_packet(data) == (CancelRequest(4242, 0xDEADBEEF), 16)


def test_cancel_request_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        cancel_request(-1, 1)
    with pytest.raises(ValueError):
        cancel_request(1, 1 << 32)


def test_startup_message_round_trip() -> None:
    params = {"user": "alice", "database": "example-db", "application_name": "psql"}
    data = startup_message(params)
    packet, used = parse_startup_packet(data + b"trailing")
    assert used == len(data)
    assert isinstance(packet, StartupMessage)
    assert packet.params == params
    assert packet.raw == data
    assert (packet.user, packet.database) == ("alice", "example-db")


def test_startup_message_database_defaults_to_user() -> None:
    packet, _ = parse_startup_packet(startup_message({"user": "bob"}))
    assert isinstance(packet, StartupMessage)
    assert packet.database == "bob"


def test_startup_message_without_params() -> None:
    packet, used = parse_startup_packet(startup_message({}))
    assert isinstance(packet, StartupMessage)
    assert (packet.params, used) == ({}, 9)


def test_startup_message_utf8() -> None:
    packet, _ = parse_startup_packet(startup_message({"user": "zoë", "options": "-c x=ü"}))
    assert isinstance(packet, StartupMessage)
    assert packet.params == {"user": "zoë", "options": "-c x=ü"}


def test_startup_packet_split_byte_by_byte() -> None:
    data = startup_message({"user": "alice", "database": "example"})
    for cut in range(len(data)):
        assert parse_startup_packet(data[:cut]) == (None, 0)
    packet, used = parse_startup_packet(data)
    assert isinstance(packet, StartupMessage) and used == len(data)


def test_several_packets_in_one_buffer() -> None:
    data = ssl_request() + startup_message({"user": "alice"})
    first, used = parse_startup_packet(data)
    assert first == SSLRequest()
    second, used2 = parse_startup_packet(data[used:])
    assert isinstance(second, StartupMessage)
    assert used + used2 == len(data)


@pytest.mark.parametrize("length", [0, 4, 7, 10001, 0xFFFFFFFF])
def test_startup_length_limits(length: int) -> None:
    with pytest.raises(ProtocolError, match="invalid startup packet length"):
        parse_startup_packet(struct.pack("!II", length, PROTOCOL_3_0))


def test_startup_length_limit_checked_before_the_bytes_arrive() -> None:
    # a hostile length is refused at once, not after buffering 10 kB
    with pytest.raises(ProtocolError):
        parse_startup_packet(struct.pack("!I", 1 << 20))


def test_max_length_is_accepted() -> None:
    value = "v" * (10000 - 8 - len(b"user\0") - 2)
    data = startup_message({"user": value})
    assert len(data) == 10000
    packet, _ = parse_startup_packet(data)
    assert isinstance(packet, StartupMessage)


@pytest.mark.parametrize(
    ("major", "minor"),
    [(2, 0), (3, 1), (3, 2), (4, 0), (1234, 1)],
)
def test_other_protocol_versions_refused(major: int, minor: int) -> None:
    body = b"user\0alice\0\0"
    data = struct.pack("!II", 8 + len(body), (major << 16) | minor) + body
    with pytest.raises(ProtocolError, match=f"unsupported frontend protocol {major}.{minor}"):
        parse_startup_packet(data)


@pytest.mark.parametrize(
    ("code", "length"),
    [(SSL_REQUEST_CODE, 12), (GSSENC_REQUEST_CODE, 16), (CANCEL_REQUEST_CODE, 12)],
)
def test_fixed_size_requests_check_length(code: int, length: int) -> None:
    data = struct.pack("!II", length, code) + b"\0" * (length - 8)
    with pytest.raises(ProtocolError):
        parse_startup_packet(data)


@pytest.mark.parametrize(
    "body",
    [
        b"user\0alice\0",  # no final terminator
        b"user\0alice",  # value not terminated
        b"user\0\0",  # name without value
        b"\0alice\0\0",  # empty name
        b"user\0\xff\xfe\0\0",  # not UTF-8
    ],
)
def test_malformed_startup_parameters(body: bytes) -> None:
    data = struct.pack("!II", 8 + len(body), PROTOCOL_3_0) + body
    with pytest.raises(ProtocolError, match="malformed startup message"):
        parse_startup_packet(data)


def test_protocol_error_is_a_connection_problem() -> None:
    from jumpgate.core.errors import ConnectionProblem

    assert issubclass(ProtocolError, ConnectionProblem)


# --------------------------------------------------------------------------- builders


def test_error_response_parses_back() -> None:
    data = error_response(
        "access to db denied", code="28000", detail="no role allows it", hint="ask an admin"
    )
    assert data[:1] == b"E"
    (length,) = struct.unpack("!I", data[1:5])
    assert length == len(data) - 1
    assert data.endswith(b"\0\0")
    assert parse_error_fields(data[5:]) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "28000",
        "M": "access to db denied",
        "D": "no role allows it",
        "H": "ask an admin",
    }


def test_error_response_defaults_and_nul_safety() -> None:
    data = error_response("bad\0message")
    fields = parse_error_fields(data[5:])
    assert fields == {"S": "FATAL", "V": "FATAL", "C": "28000", "M": "badmessage"}


def test_small_backend_messages() -> None:
    assert authentication_ok() == b"R\0\0\0\x08\0\0\0\0"
    assert ready_for_query() == b"Z\0\0\0\x05I"
    assert ready_for_query(b"T") == b"Z\0\0\0\x05T"
    assert backend_key_data(1, 2) == b"K\0\0\0\x0c\0\0\0\x01\0\0\0\x02"
    assert parameter_status("a", "b") == b"S\0\0\0\x08a\0b\0"
    with pytest.raises(ValueError):
        ready_for_query(b"")


def test_message_text_helpers() -> None:
    assert query_text(b"select 1\0") == "select 1"
    assert query_text(b"select 1") == "select 1"  # truncated by the scanner
    assert parse_statement(b"s1\0select $1\0\0\0") == ("s1", "select $1")
    assert parse_statement(b"\0select 2\0\0\0") == ("", "select 2")
    assert parse_statement(b"s1") == ("s1", "")


# --------------------------------------------------------------------------- FrontendScanner


def sample_stream() -> tuple[bytes, list[tuple[bytes, bytes]]]:
    messages = [
        (b"Q", b"select 1\0"),
        (b"P", b"s1\0select $1\0\0\0"),
        (b"B", b"\0s1\0\0\0\0\x01\0\0\0\x011\0\0"),
        (b"E", b"\0\0\0\0\0"),
        (b"S", b""),
        (b"d", b"x" * 1000),
        (b"Q", b""),
        (b"X", b""),
    ]
    stream = b"".join(msg(k, p) for k, p in messages)
    return stream, [(k, p) for k, p in messages if k in (b"Q", b"P", b"X")]


def test_scanner_whole_stream() -> None:
    stream, expected = sample_stream()
    assert FrontendScanner().feed(stream) == expected


def test_scanner_byte_by_byte() -> None:
    stream, expected = sample_stream()
    scanner = FrontendScanner()
    got = []
    for i in range(len(stream)):
        got += scanner.feed(stream[i : i + 1])
    assert got == expected
    assert scanner.buffered == 0


def test_scanner_accepts_memoryview() -> None:
    stream, expected = sample_stream()
    scanner = FrontendScanner()
    view = memoryview(stream)
    assert scanner.feed(view[:7]) + scanner.feed(view[7:]) == expected


def test_scanner_custom_types() -> None:
    stream, _ = sample_stream()
    got = FrontendScanner(b"BE").feed(stream)
    assert [k for k, _ in got] == [b"B", b"E"]


def test_scanner_truncates_huge_interesting_payloads() -> None:
    big = b"select '" + b"a" * 5000 + b"'\0"
    stream = msg(b"Q", big) + msg(b"Q", b"select 2\0")
    scanner = FrontendScanner(max_payload=100)
    got = []
    for i in range(0, len(stream), 37):
        got += scanner.feed(stream[i : i + 37])
    assert got == [(b"Q", big[:100]), (b"Q", b"select 2\0")]
    assert scanner.buffered == 0


def test_scanner_rejects_bad_length() -> None:
    with pytest.raises(ProtocolError, match="invalid message length"):
        FrontendScanner().feed(b"d\0\0\0\x02")
    scanner = FrontendScanner()
    scanner.feed(b"Q\0\0")
    with pytest.raises(ProtocolError):
        scanner.feed(b"\0\x03")


def test_scanner_skips_copy_stream_without_growing() -> None:
    """A 64 MB COPY (64 kB CopyData messages, as psql sends them) in 64 kB chunks."""
    row = b"r" * (64 * 1024 - 5)
    one = msg(b"d", row)
    total = 64 * 1024 * 1024
    stream = bytearray()
    stream += msg(b"Q", b"copy t from stdin\0")
    stream += one * (total // len(one))
    stream += msg(b"c", b"") + msg(b"Q", b"select 3\0")
    scanner = FrontendScanner()
    view = memoryview(bytes(stream))
    got = []
    biggest = 0
    for i in range(0, len(view), 64 * 1024 + 3):  # misaligned with the messages
        got += scanner.feed(view[i : i + 64 * 1024 + 3])
        biggest = max(biggest, scanner.buffered)
    assert got == [(b"Q", b"copy t from stdin\0"), (b"Q", b"select 3\0")]
    assert biggest < 5


def test_scanner_skips_one_huge_message_without_buffering() -> None:
    """A single 100 MB CopyData message is skipped by length."""
    size = 100 * 1024 * 1024
    scanner = FrontendScanner()
    chunk = b"\0" * (64 * 1024)
    assert scanner.feed(b"d" + struct.pack("!I", size + 4)) == []
    remaining = size
    while remaining:
        n = min(remaining, len(chunk))
        assert scanner.feed(chunk[:n]) == []
        assert scanner.buffered == 0
        remaining -= n
    assert scanner.feed(msg(b"X", b"")) == [(b"X", b"")]


_kinds = st.sampled_from(list(b"QPXBEDSHdcfCF"))
_messages = st.lists(
    st.tuples(_kinds.map(lambda k: bytes([k])), st.binary(max_size=300)), max_size=30
)


@given(messages=_messages, data=st.data())
def test_scanner_random_splits(messages: list[tuple[bytes, bytes]], data: st.DataObject) -> None:
    stream = b"".join(msg(k, p) for k, p in messages)
    cuts = sorted(
        data.draw(st.lists(st.integers(0, len(stream)), max_size=20, unique=True), label="cuts")
    )
    scanner = FrontendScanner(max_payload=data.draw(st.integers(1, 400), label="max_payload"))
    got = []
    start = 0
    for cut in [*cuts, len(stream)]:
        got += scanner.feed(stream[start:cut])
        start = cut
    limit = scanner._max
    assert got == [(k, p[:limit]) for k, p in messages if k in (b"Q", b"P", b"X")]
    assert scanner.buffered == 0


# --------------------------------------------------------------------------- BackendStartupScanner


def server_startup() -> bytes:
    return (
        authentication_ok()
        + parameter_status("server_version", "15.6")
        + parameter_status("client_encoding", "UTF8")
        + backend_key_data(1234, 0xCAFEBABE)
        + ready_for_query()
    )


def test_backend_scanner_whole() -> None:
    scanner = BackendStartupScanner()
    assert scanner.feed(server_startup() + msg(b"T", b"after start-up")) is True
    assert scanner.done and scanner.authenticated
    assert scanner.backend_key == (1234, 0xCAFEBABE)
    assert scanner.parameters == {"server_version": "15.6", "client_encoding": "UTF8"}
    assert scanner.error is None
    assert scanner.status == b"I"


def test_backend_scanner_byte_by_byte() -> None:
    data = server_startup()
    scanner = BackendStartupScanner()
    for i in range(len(data)):
        done = scanner.feed(data[i : i + 1])
        assert done is (i == len(data) - 1)
    assert scanner.backend_key == (1234, 0xCAFEBABE)
    # bytes after done are ignored
    assert scanner.feed(b"garbage") is True


def test_backend_scanner_error() -> None:
    data = error_response('certificate authentication failed for user "bob"')
    scanner = BackendStartupScanner()
    assert scanner.feed(data[:10]) is False
    assert scanner.feed(data[10:]) is True
    assert scanner.error is not None
    assert scanner.error["M"] == 'certificate authentication failed for user "bob"'
    assert scanner.error["C"] == "28000"
    assert scanner.backend_key is None
    assert not scanner.authenticated


def test_backend_scanner_password_request() -> None:
    scanner = BackendStartupScanner()
    scanner.feed(msg(b"R", struct.pack("!I", 3)))
    assert scanner.auth_requests == [3]
    assert not scanner.done


def test_backend_scanner_rejects_huge_message() -> None:
    with pytest.raises(ProtocolError):
        BackendStartupScanner().feed(b"S" + struct.pack("!I", 50_000_000))
