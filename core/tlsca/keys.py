"""Key and certificate PEM helpers: generate, serialise and load, with clear errors.

Jumpgate keys are ECDSA P-256. Loading functions raise
:class:`~jumpgate.core.errors.BadParameter` on anything that is not what they expect.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from jumpgate.core.errors import BadParameter

#: Public keys a certificate may be issued for.
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_PEM_HINT = "pass the PEM file jumpgate wrote (it starts with '-----BEGIN')"


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """Generate a fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Serialise ``key`` as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """Load an unencrypted PEM ECDSA private key (PKCS#8 or SEC1)."""
    try:
        key = serialization.load_pem_private_key(bytes(pem), password=None)
    except TypeError:
        raise BadParameter(
            "the private key is encrypted with a passphrase",
            hint="jumpgate expects unencrypted keys; decrypt it with "
            "'openssl pkey -in key.pem -out plain.pem'",
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BadParameter(f"the data is not a PEM private key ({exc})", hint=_PEM_HINT) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise BadParameter(
            f"expected an ECDSA private key, got a {type(key).__name__.lstrip('_')}",
            hint="jumpgate uses ECDSA P-256 keys; generate one with "
            "'openssl ecparam -name prime256v1 -genkey'",
        )
    return key


def public_key_to_pem(pub: PublicKey) -> bytes:
    """Serialise a public key as SubjectPublicKeyInfo PEM."""
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(pem: bytes) -> PublicKey:
    """Load a PEM public key (ECDSA or RSA, SubjectPublicKeyInfo)."""
    try:
        pub = serialization.load_pem_public_key(bytes(pem))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BadParameter(f"the data is not a PEM public key ({exc})", hint=_PEM_HINT) from None
    if not isinstance(pub, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise BadParameter(
            f"unsupported public key type {type(pub).__name__.lstrip('_')}",
            hint="use an ECDSA P-256 (preferred) or RSA key",
        )
    return pub


def cert_to_pem(cert: x509.Certificate) -> bytes:
    """Serialise a certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """Load every certificate of a PEM bundle, in file order (at least one)."""
    try:
        return x509.load_pem_x509_certificates(bytes(pem))
    except ValueError as exc:
        raise BadParameter(
            f"the data is not a PEM certificate bundle ({exc})", hint=_PEM_HINT
        ) from None


def load_certificate(pem: bytes) -> x509.Certificate:
    """Load a PEM certificate; of a bundle, the first one (the leaf, by convention)."""
    return load_certificates(pem)[0]
