"""An EHR's signing key pair written to files, for tests of JWT authentication."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def write_key_pair(folder: Path) -> ec.EllipticCurvePrivateKey:
    """A new EC P-384 key: the private key to ``folder/ehr.key`` (PKCS 8) and the
    public key to ``folder/ehr.pem``; returns the private key."""
    key = ec.generate_private_key(ec.SECP384R1())
    (folder / "ehr.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (folder / "ehr.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key
