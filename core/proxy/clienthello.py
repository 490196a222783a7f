"""Sans-io parsing of a TLS ClientHello: just enough to route (SNI and ALPN).

The router peeks at the first bytes of a connection without consuming them,
so the TLS handshake that follows (terminated here or passed through) sees the
ClientHello intact.
"""

from __future__ import annotations

from dataclasses import dataclass

#: TLS alert "no_application_protocol" (RFC 7301), fatal, as a plaintext record.
ALERT_NO_APPLICATION_PROTOCOL = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x78])
#: Largest ClientHello we are willing to buffer.
MAX_HELLO = 16 * 1024 + 5


class NotTLS(ValueError):
    """The peer did not start with a TLS handshake record."""


@dataclass(frozen=True)
class ClientHello:
    """What routing needs from a ClientHello."""

    server_name: str
    alpn: tuple[str, ...]


def parse_client_hello(data: bytes) -> ClientHello | None:
    """Parse a ClientHello from the start of ``data``.

    Return ``None`` when more bytes are needed; raise :class:`NotTLS` when the
    bytes cannot be a TLS ClientHello.
    """
    if len(data) < 5:
        if data and data[0] != 0x16:
            raise NotTLS("not a TLS handshake")
        return None
    if data[0] != 0x16 or data[1] != 0x03:
        raise NotTLS("not a TLS handshake")
    # the handshake message may span several records: gather the fragments
    body = bytearray()
    pos = 0
    need: int | None = None
    while True:
        if len(data) < pos + 5:
            return None
        if data[pos] != 0x16:
            raise NotTLS("unexpected record type during ClientHello")
        rec_len = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if rec_len == 0 or rec_len > 16384 + 256:
            raise NotTLS("bad record length")
        if len(data) < pos + 5 + rec_len:
            return None
        body += data[pos + 5 : pos + 5 + rec_len]
        pos += 5 + rec_len
        if need is None and len(body) >= 4:
            if body[0] != 0x01:
                raise NotTLS("first handshake message is not a ClientHello")
            need = 4 + int.from_bytes(body[1:4], "big")
            if need > MAX_HELLO:
                raise NotTLS("ClientHello too large")
        if need is not None and len(body) >= need:
            return _parse_body(bytes(body[4:need]))
        if pos > MAX_HELLO:
            raise NotTLS("ClientHello too large")


def _parse_body(b: bytes) -> ClientHello:
    try:
        p = 2 + 32  # client_version, random
        sid_len = b[p]
        p += 1 + sid_len
        cs_len = int.from_bytes(b[p : p + 2], "big")
        p += 2 + cs_len
        comp_len = b[p]
        p += 1 + comp_len
        sni = ""
        alpn: list[str] = []
        if p + 2 > len(b):
            return ClientHello("", ())
        ext_total = int.from_bytes(b[p : p + 2], "big")
        p += 2
        end = min(len(b), p + ext_total)
        while p + 4 <= end:
            ext_type = int.from_bytes(b[p : p + 2], "big")
            ext_len = int.from_bytes(b[p + 2 : p + 4], "big")
            ext = b[p + 4 : p + 4 + ext_len]
            p += 4 + ext_len
            if ext_type == 0:  # server_name
                q = 2
                while q + 3 <= len(ext):
                    name_type = ext[q]
                    name_len = int.from_bytes(ext[q + 1 : q + 3], "big")
                    if name_type == 0:
                        sni = ext[q + 3 : q + 3 + name_len].decode("ascii", "replace")
                        break
                    q += 3 + name_len
            elif ext_type == 16:  # application_layer_protocol_negotiation
                q = 2
                while q < len(ext):
                    n = ext[q]
                    alpn.append(ext[q + 1 : q + 1 + n].decode("ascii", "replace"))
                    q += 1 + n
        return ClientHello(sni.lower().rstrip("."), tuple(alpn))
    except IndexError:
        raise NotTLS("truncated ClientHello") from None
