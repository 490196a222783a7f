"""Identity codec: round trip through real certificates, determinism, malformed input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from jumpgate.core.errors import AccessDenied, BadParameter
from jumpgate.core.tlsca import (
    IDENTITY_EXTENSION_OID,
    CAType,
    CertAuthority,
    Identity,
    RouteToApp,
    RouteToDatabase,
    decode_extension,
    encode_extension,
    generate_private_key,
    identity_from_certificate,
    identity_subject,
)


@pytest.fixture(scope="module")
def ca() -> CertAuthority:
    return CertAuthority.generate(CAType.USER, "example.com")


@pytest.fixture(scope="module")
def leaf_key():
    return generate_private_key()


# --------------------------------------------------------------------------- strategies

names = st.text(min_size=1, max_size=16)  # at most 64 UTF-8 bytes
texts = st.text(max_size=12)
str_tuples = st.lists(texts, max_size=4).map(tuple)

identities = st.builds(
    Identity,
    username=names,
    groups=st.lists(names, max_size=5).map(tuple),
    traits=st.dictionaries(texts, str_tuples, max_size=4),
    usage=str_tuples,
    logins=str_tuples,
    cluster_name=texts,
    route_to_cluster=texts,
    route_to_database=st.none() | st.builds(RouteToDatabase, texts, texts, texts, texts),
    route_to_app=st.none() | st.builds(RouteToApp, texts, texts, texts, texts),
    bot_name=texts,
    bot_instance_id=texts,
    generation=st.integers(min_value=0, max_value=2**63),
    renewable=st.booleans(),
    disallow_reissue=st.booleans(),
    impersonator=texts,
    login_ip=texts,
    system_role=texts,
)


def _issue(ca: CertAuthority, key, identity: Identity) -> x509.Certificate:
    return ca.issue(
        key.public_key(), not_after=datetime.now(UTC) + timedelta(hours=1), identity=identity
    )


@settings(max_examples=50, deadline=None)
@given(identity=identities)
def test_round_trip_through_certificate(ca, leaf_key, identity):
    cert = _issue(ca, leaf_key, identity)
    decoded = identity_from_certificate(cert)
    assert decoded == identity
    assert decoded.expires == cert.not_valid_after_utc
    assert identity.expires is None
    # the subject carries exactly CN + one O per role, in order
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == identity.username
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert tuple(a.value for a in orgs) == identity.groups


@settings(max_examples=50, deadline=None)
@given(identity=identities)
def test_encoding_is_deterministic_and_canonical(identity):
    first = encode_extension(identity)
    assert encode_extension(identity) == first
    reordered = identity.with_(traits=dict(reversed(list(identity.traits.items()))))
    assert encode_extension(reordered) == first
    as_lists = identity.with_(
        groups=list(identity.groups), traits={k: list(v) for k, v in identity.traits.items()}
    )
    assert as_lists == identity
    assert encode_extension(as_lists) == first
    obj = decode_extension(first)
    assert obj["v"] == 1
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert first.endswith(text.encode())


def test_only_non_default_fields_are_encoded():
    assert decode_extension(encode_extension(Identity("alice"))) == {"v": 1}
    ident = Identity(
        "bot-app",
        ("bot-app",),
        bot_name="app",
        generation=3,
        renewable=True,
        route_to_database=RouteToDatabase("pg", "postgres"),
    )
    assert decode_extension(encode_extension(ident)) == {
        "v": 1,
        "bn": "app",
        "gen": 3,
        "rn": True,
        "db": {"s": "pg", "p": "postgres"},
    }


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (22, b"\x0c\x16"),
        (127, b"\x0c\x7f"),
        (128, b"\x0c\x81\x80"),
        (255, b"\x0c\x81\xff"),
        (256, b"\x0c\x82\x01\x00"),
        (65536, b"\x0c\x83\x01\x00\x00"),
    ],
)
def test_der_length_forms(ca, leaf_key, size, header):
    # content is '{"t":{"k":["xxx..."]},"v":1}': 22 bytes plus the x's
    ident = Identity("u", traits={"k": ("x" * (size - 22),)})
    der = encode_extension(ident)
    assert der == header + b'{"t":{"k":["' + b"x" * (size - 22) + b'"]},"v":1}'
    assert len(der) == len(header) + size
    assert decode_extension(der) == {"v": 1, "t": {"k": ["x" * (size - 22)]}}
    assert identity_from_certificate(_issue(ca, leaf_key, ident)) == ident


def test_traits_unicode_and_helpers():
    ident = Identity(
        "alice",
        traits={"zz": ["ü", "日本"], "aa": ("x",), "logins": ()},
        bot_name="",
    )
    assert ident.traits == {"aa": ("x",), "logins": (), "zz": ("ü", "日本")}
    assert list(ident.traits_dict()) == ["aa", "logins", "zz"]
    assert ident.traits_dict()["zz"] == ["ü", "日本"]
    assert "日本".encode() in encode_extension(ident)  # ensure_ascii=False
    assert not ident.is_bot
    bot = ident.with_(username="bot-x", bot_name="x")
    assert bot.is_bot and bot.username == "bot-x" and bot.traits == ident.traits
    assert hash(bot) != hash(ident)


def test_identity_validation():
    with pytest.raises(BadParameter, match="non-empty user name"):
        Identity("")
    with pytest.raises(BadParameter, match="longer than 64 bytes"):
        Identity("é" * 33)
    Identity("é" * 32)
    with pytest.raises(BadParameter, match="empty role"):
        Identity("a", ("",))
    with pytest.raises(BadParameter, match="single string"):
        Identity("a", "admin")  # type: ignore[arg-type]
    with pytest.raises(BadParameter, match="non-negative"):
        Identity("a", generation=-1)
    with pytest.raises(BadParameter) as info:
        Identity("a", traits={"k": [1]})  # type: ignore[dict-item]
    assert info.value.hint


def test_subject_order():
    name = identity_subject(Identity("alice", ("b", "a", "b")))
    assert name.rfc4514_string() == "O=b,O=a,O=b,CN=alice"


def _sign_raw(ca: CertAuthority, key, subject: x509.Name, ext_value: bytes | None):
    now = datetime.now(UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
    )
    if ext_value is not None:
        b = b.add_extension(
            x509.UnrecognizedExtension(IDENTITY_EXTENSION_OID, ext_value), critical=False
        )
    assert ca.key is not None
    return b.sign(ca.key, hashes.SHA256())


def test_certificate_without_extension(ca, leaf_key):
    subject = identity_subject(Identity("db.example.com", ("Db",)))
    cert = ca.issue(
        leaf_key.public_key(),
        not_after=datetime.now(UTC) + timedelta(hours=1),
        subject=subject,
        server=True,
    )
    ident = identity_from_certificate(cert)
    assert ident == Identity("db.example.com", ("Db",))
    assert ident.expires == cert.not_valid_after_utc


def test_missing_common_name(ca, leaf_key):
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "admins")])
    cert = _sign_raw(ca, leaf_key, subject, None)
    with pytest.raises(AccessDenied, match="no common name") as info:
        identity_from_certificate(cert)
    assert info.value.hint


def _utf8(content: bytes) -> bytes:
    return b"\x0c" + bytes([len(content)]) + content


@pytest.mark.parametrize(
    ("der", "match"),
    [
        (b"", "shorter than"),
        (b"\x04\x02{}", "tag 0x04"),
        (b"\x0c\x80{}", "indefinite"),
        (b"\x0c\x81\x02{}", "short length"),
        (b"\x0c\x82\x00\x02{}", "leading zero"),
        (b"\x0c\x85\x01\x01\x01\x01\x01", "too long"),
        (b"\x0c\x82\x01", "truncated"),
        (b"\x0c\x05{}", "announces 5"),
        (_utf8(b"\xff\xfe"), "not UTF-8 JSON"),
        (_utf8(b"{nope"), "not UTF-8 JSON"),
        (_utf8(b"[1]"), "JSON object"),
        (_utf8(b'{"v":2}'), "format version 2"),
        (_utf8(b'{"v":true}'), "format version True"),
        (_utf8(b"{}"), "format version None"),
    ],
)
def test_decode_extension_rejects(der, match):
    with pytest.raises(AccessDenied, match=match) as info:
        decode_extension(der)
    assert info.value.hint


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"v": 1, "zz": 1}, "unknown field"),
        ({"v": 1, "gen": -1}, "'gen' has the wrong type"),
        ({"v": 1, "gen": True}, "'gen' has the wrong type"),
        ({"v": 1, "rn": 1}, "'rn' has the wrong type"),
        ({"v": 1, "t": {"a": "b"}}, "'t' has the wrong type"),
        ({"v": 1, "l": [1]}, "'l' has the wrong type"),
        ({"v": 1, "db": "pg"}, "'db' has the wrong type"),
        ({"v": 1, "app": {"x": "1"}}, "unknown field"),
    ],
)
def test_malformed_extension_in_certificate(ca, leaf_key, obj, match):
    content = json.dumps(obj).encode()
    cert = _sign_raw(ca, leaf_key, identity_subject(Identity("alice")), _utf8(content))
    with pytest.raises(AccessDenied, match=match):
        identity_from_certificate(cert)


def test_unknown_version_in_certificate(ca, leaf_key):
    cert = _sign_raw(ca, leaf_key, identity_subject(Identity("alice")), _utf8(b'{"v":9}'))
    with pytest.raises(AccessDenied, match="version 9"):
        identity_from_certificate(cert)
