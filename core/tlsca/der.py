"""Leaf certificates from a precomputed DER template (the fast issuance path).

:class:`x509.CertificateBuilder` re-validates and re-encodes every part of a
certificate on each call, which costs several times the ECDSA signature itself.
A cluster CA issues leaves of one fixed shape, so :class:`LeafTemplate` encodes
what never changes (version, signature algorithm, issuer name, BasicConstraints,
KeyUsage, the ExtendedKeyUsage variants, AuthorityKeyIdentifier) once per CA and
per certificate only fills in the serial number, validity, subject,
SubjectPublicKeyInfo, SubjectKeyIdentifier, the optional SubjectAlternativeName
and identity extension, then signs the TBSCertificate with the CA key.

The encoding is exactly the builder's (same fields, same extension order, same
string types, same UTCTime/GeneralizedTime choice): the unit tests compare the
TBSCertificate bytes of both paths. :func:`p256_spki_from_pem` reads the
common case of a client key (a canonical P-256 ``PUBLIC KEY`` PEM, as
``cryptography`` and ``openssl`` write it) without building a key object, and
checks that the point lies on the curve; everything else goes through
:func:`~jumpgate.core.tlsca.keys.load_public_key`.
"""

from __future__ import annotations

import binascii
import hashlib
import os
import threading
from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID, SignatureAlgorithmOID

__all__ = [
    "LeafTemplate",
    "RandomPool",
    "der_length",
    "der_name",
    "der_time",
    "der_to_pem",
    "p256_spki_from_pem",
    "tlv",
]

# --------------------------------------------------------------------------- primitives

_SEQUENCE = 0x30
_SET = 0x31
_INTEGER = 0x02
_BIT_STRING = 0x03
_OCTET_STRING = 0x04
_OID = 0x06
_UTF8STRING = 0x0C


def der_length(n: int) -> bytes:
    """DER length octets: short form below 128, else the minimal long form."""
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, content: bytes) -> bytes:
    """One DER element: tag, length, content."""
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    if n < 0x100:
        return bytes((tag, 0x81, n)) + content
    if n < 0x10000:
        return bytes((tag, 0x82, n >> 8, n & 0xFF)) + content
    return bytes((tag,)) + der_length(n) + content


def _der_uint(n: int) -> bytes:
    """A non-negative DER INTEGER (a leading zero byte when the top bit is set)."""
    if n < 0:
        raise ValueError("serial numbers must be positive")
    return tlv(_INTEGER, n.to_bytes(n.bit_length() // 8 + 1, "big"))


def _der_oid(oid: x509.ObjectIdentifier) -> bytes:
    arcs = [int(a) for a in oid.dotted_string.split(".")]
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return tlv(_OID, bytes(body))


#: Years the builder writes as UTCTime (RFC 5280 4.1.2.5); later ones as GeneralizedTime.
_UTC_TIME_YEARS = range(1950, 2050)


def der_time(t: datetime) -> bytes:
    """A certificate validity time as ``cryptography`` writes it: whole seconds, UTC,
    UTCTime for 1950 through 2049, GeneralizedTime from 2050 on (RFC 5280 4.1.2.5).

    Naive datetimes are taken as UTC (as the builder does); years before 1950
    raise ValueError (the builder refuses them too).
    """
    if t.tzinfo is not None and t.utcoffset():
        t = t.astimezone(UTC)
    key = (t.year, t.month, t.day, t.hour, t.minute, t.second)
    der = _time_cache.get(key)
    if der is None:
        der = _encode_time(*key)
        if len(_time_cache) >= 64:
            _time_cache.clear()
        _time_cache[key] = der
    return der


#: Recent encodings: consecutive certificates share their validity seconds.
_time_cache: dict[tuple[int, int, int, int, int, int], bytes] = {}


def _encode_time(year: int, month: int, day: int, hour: int, minute: int, second: int) -> bytes:
    if year in _UTC_TIME_YEARS:
        return b"\x17\x0d" + (
            "%02d%02d%02d%02d%02d%02dZ"  # noqa: UP031 - the fastest formatting here
            % (year % 100, month, day, hour, minute, second)
        ).encode("ascii")
    if year < 1950:
        raise ValueError("certificate times before 1950 cannot be encoded")
    return b"\x18\x0f" + (
        "%04d%02d%02d%02d%02d%02dZ"  # noqa: UP031
        % (year, month, day, hour, minute, second)
    ).encode("ascii")


_CN = _der_oid(NameOID.COMMON_NAME)
_O = _der_oid(NameOID.ORGANIZATION_NAME)


def _rdn(oid_der: bytes, value: str) -> bytes:
    return tlv(_SET, tlv(_SEQUENCE, oid_der + tlv(_UTF8STRING, value.encode("utf-8"))))


def der_name(common_name: str, organizations: Sequence[str] = ()) -> bytes:
    """``CN=<common_name>, O=<org>...``: one RDN per attribute, UTF8String values —
    exactly how ``x509.Name`` encodes these attributes."""
    if not organizations:
        return tlv(_SEQUENCE, _rdn(_CN, common_name))
    return tlv(
        _SEQUENCE, _rdn(_CN, common_name) + b"".join([_rdn(_O, org) for org in organizations])
    )


# --------------------------------------------------------------------------- client keys

# SubjectPublicKeyInfo header of an uncompressed P-256 point:
# SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) 04 ... }
_P256_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d03010703420004")
_P256_SPKI_LEN = len(_P256_SPKI_PREFIX) + 64
_PEM_BEGIN = b"-----BEGIN PUBLIC KEY-----\n"
_PEM_END = b"-----END PUBLIC KEY-----"
# the canonical PEM body of a 91-byte SPKI: 124 base64 characters as 64 + 60 per line
_PEM_LEN = len(_PEM_BEGIN) + 64 + 1 + 60 + 1 + len(_PEM_END)

# P-256 (NIST SP 800-186): y^2 = x^3 - 3x + b over GF(p)
_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B


def p256_spki_from_pem(pem: bytes) -> bytes | None:
    """The DER SubjectPublicKeyInfo of a canonical P-256 public key PEM, else None.

    Accepts only the exact bytes ``public_bytes(PEM, SubjectPublicKeyInfo)`` writes
    for a P-256 key (the ``PUBLIC KEY`` label, 64-character lines, an uncompressed
    point, the final newline optional) and only a point on the curve; for
    anything else it returns None and the caller loads the key the general
    (slower, equally strict) way. The returned bytes are what
    ``load_pem_public_key(pem).public_bytes(DER, SubjectPublicKeyInfo)`` gives.
    """
    n = len(pem)
    if n != _PEM_LEN and not (n == _PEM_LEN + 1 and pem[-1] == 0x0A):
        return None
    start = len(_PEM_BEGIN)
    b64 = pem[start : start + 64] + pem[start + 65 : start + 125]
    try:
        der = binascii.a2b_base64(b64, strict_mode=True)
    except binascii.Error:
        return None
    if len(der) != _P256_SPKI_LEN or not der.startswith(_P256_SPKI_PREFIX):
        return None
    # byte-exact: the armour, the line breaks and the base64 (no stray padding bits)
    canonical = binascii.b2a_base64(der, newline=False)
    if (
        canonical != b64
        or not pem.startswith(_PEM_BEGIN)
        or pem[start + 64] != 0x0A
        or pem[start + 125] != 0x0A
        or pem[start + 126 : start + 126 + len(_PEM_END)] != _PEM_END
    ):
        return None
    x = int.from_bytes(der[27:59], "big")
    y = int.from_bytes(der[59:91], "big")
    if x >= _P or y >= _P or (y * y - (x * x * x - 3 * x + _B)) % _P:
        return None
    return der


def spki_bit_string_contents(spki: bytes) -> bytes:
    """The ``subjectPublicKey`` bits of a DER SubjectPublicKeyInfo (what the SKI hashes)."""

    def header(buf: bytes, pos: int) -> tuple[int, int]:
        """(content start, content length) of the element at ``pos``."""
        first = buf[pos + 1]
        if first < 0x80:
            return pos + 2, first
        nb = first & 0x7F
        return pos + 2 + nb, int.from_bytes(buf[pos + 2 : pos + 2 + nb], "big")

    if spki[0] != _SEQUENCE:
        raise ValueError("not a SubjectPublicKeyInfo")
    pos, _ = header(spki, 0)
    alg_start, alg_len = header(spki, pos)
    pos = alg_start + alg_len
    if spki[pos] != _BIT_STRING:
        raise ValueError("not a SubjectPublicKeyInfo")
    start, length = header(spki, pos)
    if spki[start] != 0:
        raise ValueError("the public key bit string has unused bits")
    return spki[start + 1 : start + length]


# --------------------------------------------------------------------------- template

_VERSION_V3 = bytes.fromhex("a003020102")
# AlgorithmIdentifier { ecdsa-with-SHA256 } (no parameters, RFC 5758)
_ECDSA_SHA256 = tlv(_SEQUENCE, _der_oid(SignatureAlgorithmOID.ECDSA_WITH_SHA256))
_CRITICAL = bytes.fromhex("0101ff")
_SKI_OID = _der_oid(ExtensionOID.SUBJECT_KEY_IDENTIFIER)
# ECDSA over SHA-256(tbs); the digest comes from hashlib, a little cheaper than
# letting sign() hash (same signature: ECDSA signs the SHA-256 digest either way)
_ECDSA_PREHASHED_SHA256 = ec.ECDSA(Prehashed(hashes.SHA256()))


def _extension(oid: x509.ObjectIdentifier, value_der: bytes, *, critical: bool) -> bytes:
    """An ``Extension`` (criticality omitted when false: DEFAULT FALSE in DER)."""
    return tlv(
        _SEQUENCE,
        _der_oid(oid) + (_CRITICAL if critical else b"") + tlv(_OCTET_STRING, value_der),
    )


def extension_der(ext: x509.ExtensionType, *, critical: bool) -> bytes:
    """``ext`` encoded as a certificate ``Extension`` (value bytes from ``cryptography``)."""
    return _extension(ext.oid, ext.public_bytes(), critical=critical)


def ski_extension(digest: bytes) -> bytes:
    """The SubjectKeyIdentifier extension for a key identifier."""
    return tlv(_SEQUENCE, _SKI_OID + tlv(_OCTET_STRING, tlv(_OCTET_STRING, digest)))


# the SubjectKeyIdentifier extension of a SHA-1 key identifier, up to the 20 digest bytes
_SKI_SHA1_PREFIX = ski_extension(bytes(20))[:-20]


_OID_DER: dict[x509.ObjectIdentifier, bytes] = {}


def raw_extension(oid: x509.ObjectIdentifier, value_der: bytes) -> bytes:
    """A non-critical extension whose ``extnValue`` content is ``value_der``."""
    oid_der = _OID_DER.get(oid)
    if oid_der is None:
        oid_der = _OID_DER.setdefault(oid, _der_oid(oid))
    return tlv(_SEQUENCE, oid_der + tlv(_OCTET_STRING, value_der))


class LeafTemplate:
    """The fixed parts of one CA's leaf certificates, encoded once; :meth:`sign` fills the rest.

    ``issuer`` is the CA certificate's subject; ``aki`` the authority key
    identifier its leaves carry; ``basic_constraints``/``key_usage`` the two
    critical extensions every leaf has. The extension order is the builder's in
    :meth:`~jumpgate.core.tlsca.ca.CertAuthority.issue`: BasicConstraints,
    KeyUsage, ExtendedKeyUsage, AuthorityKeyIdentifier, SubjectKeyIdentifier,
    then the caller's (SAN, identity).
    """

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        *,
        issuer: x509.Name,
        aki: x509.AuthorityKeyIdentifier,
        basic_constraints: x509.BasicConstraints,
        key_usage: x509.KeyUsage,
    ) -> None:
        self._key = key
        self._sig_alg = _ECDSA_SHA256
        self._head = _VERSION_V3  # serial follows
        self._issuer = _ECDSA_SHA256 + issuer.public_bytes()
        fixed = extension_der(basic_constraints, critical=True) + extension_der(
            key_usage, critical=True
        )
        aki_der = extension_der(aki, critical=False)
        self._ext_prefix: dict[tuple[bool, bool], bytes] = {}
        for server in (False, True):
            for client in (False, True):
                usages = []
                if server:
                    usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
                if client:
                    usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
                if not usages:
                    continue
                eku = extension_der(x509.ExtendedKeyUsage(usages), critical=False)
                self._ext_prefix[(server, client)] = fixed + eku + aki_der

    def tbs(
        self,
        *,
        serial: int,
        not_before: datetime,
        not_after: datetime,
        subject_der: bytes,
        spki_der: bytes,
        ski: bytes,
        extensions: Sequence[bytes] = (),
        server: bool = False,
        client: bool = True,
    ) -> bytes:
        """The DER TBSCertificate."""
        exts = b"".join(
            (
                self._ext_prefix[(server, client)],
                _SKI_SHA1_PREFIX + ski if len(ski) == 20 else ski_extension(ski),
                *extensions,
            )
        )
        return tlv(
            _SEQUENCE,
            b"".join(
                (
                    self._head,
                    _der_uint(serial),
                    self._issuer,
                    tlv(_SEQUENCE, der_time(not_before) + der_time(not_after)),  # validity
                    subject_der,
                    spki_der,
                    tlv(0xA3, tlv(_SEQUENCE, exts)),
                )
            ),
        )

    def sign(self, tbs: bytes) -> bytes:
        """The DER certificate: ``tbs`` signed with the CA key (ECDSA with SHA-256)."""
        sig = self._key.sign(hashlib.sha256(tbs).digest(), _ECDSA_PREHASHED_SHA256)
        return tlv(_SEQUENCE, tbs + self._sig_alg + tlv(_BIT_STRING, b"\x00" + sig))


def der_to_pem(der: bytes, label: str) -> bytes:
    """PEM armour as ``cryptography`` writes it: 64-character lines, final newline."""
    b64 = binascii.b2a_base64
    parts = [f"-----BEGIN {label}-----\n".encode()]
    for i in range(0, len(der), 48):  # 48 bytes -> one 64-character line
        parts.append(b64(der[i : i + 48]))
    parts.append(f"-----END {label}-----\n".encode())
    return b"".join(parts)


class RandomPool:
    """Bytes from :func:`os.urandom`, read 4 KiB at a time and handed out in pieces.

    Saves a system call (and a GIL hand-off) per serial number. Thread-safe; a
    forked child starts with an empty pool, so parent and child never share bytes.
    """

    def __init__(self, chunk: int = 4096) -> None:
        self._chunk = chunk
        self._buf = b""
        self._pos = 0
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._buf = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        """``n`` fresh random bytes (``n`` at most the chunk size)."""
        with self._lock:
            pos = self._pos
            if pos + n > len(self._buf):
                self._buf = os.urandom(max(self._chunk, n))
                pos = 0
            self._pos = pos + n
            return self._buf[pos : pos + n]


def p256_ski(spki_der: bytes) -> bytes:
    """SHA-1 of the subjectPublicKey bits of a P-256 SPKI from :func:`p256_spki_from_pem`."""
    return hashlib.sha1(spki_der[26:], usedforsecurity=False).digest()
