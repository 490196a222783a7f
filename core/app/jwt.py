"""JSON Web Tokens for applications (``Teleport-Jwt-Assertion``), signed by the ``jwt`` CA.

The CA key is ECDSA P-256, so tokens are ES256 (RFC 7518 §3.4: the signature
is ``r || s``, 32 bytes each). Applications verify them with the keys published
at ``https://<proxy>/.well-known/jwks.json``; ``kid`` is the base64url SHA-256
of the public key's DER, the same value the JWKS carries.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

#: ``rewrite.jwt_claims`` values (Teleport's) and what each includes.
JWT_CLAIMS = ("roles-and-traits", "roles", "traits", "none")
#: ``nbf`` is this many seconds before the signing time (clock skew between hosts).
NOT_BEFORE_SKEW = 10


def b64url(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The ``kid`` of a key: base64url SHA-256 of its SubjectPublicKeyInfo DER."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b64url(hashlib.sha256(der).digest())


def public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The JWK (RFC 7517/7518) of a P-256 verification key, as the proxy's JWKS lists it.

    ``x`` and ``y`` are always the full 32 bytes (RFC 7518 §6.2.1.2): a coordinate
    with leading zero bytes keeps them, or verifiers reject the key as off the curve.
    """
    nums = public_key.public_numbers()
    size = (public_key.curve.key_size + 7) // 8
    return {
        "kty": "EC",
        "crv": "P-256",
        "alg": "ES256",
        "use": "sig",
        "kid": key_id(public_key),
        "x": b64url(nums.x.to_bytes(size, "big")),
        "y": b64url(nums.y.to_bytes(size, "big")),
    }


def app_claims(
    *,
    username: str,
    roles: Sequence[str],
    traits: Mapping[str, Sequence[str]],
    issuer: str,
    audience: str,
    now: datetime,
    expires: datetime,
    jwt_claims: str = "roles-and-traits",
) -> dict[str, Any]:
    """The claims of an app token (Teleport's ``jwt.Claims``)."""
    iat = int(now.timestamp())
    claims: dict[str, Any] = {
        "aud": [audience],
        "exp": int(expires.timestamp()),
        "iat": iat,
        "iss": issuer,
        "nbf": iat - NOT_BEFORE_SKEW,
        "sub": username,
        "username": username,
    }
    mode = jwt_claims or "roles-and-traits"
    if mode in ("roles-and-traits", "roles"):
        claims["roles"] = list(roles)
    if mode in ("roles-and-traits", "traits"):
        claims["traits"] = {k: list(v) for k, v in sorted(traits.items())}
    return claims


def sign_es256(claims: Mapping[str, Any], key: ec.EllipticCurvePrivateKey) -> str:
    """``header.payload.signature`` for ``claims`` with ``key`` (P-256)."""
    header = {"alg": "ES256", "kid": key_id(key.public_key()), "typ": "JWT"}
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(dict(claims), separators=(",", ":")).encode())
    )
    der = key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
