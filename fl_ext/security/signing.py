"""Ed25519 signatures for files the server writes and must later trust (checkpoints).

The signing key is a PEM (PKCS#8) Ed25519 private key; it is created on first use with mode
0600. Verification needs only the public key, derived from the private key file or read from
a PEM public key file, so a reviewer can verify a checkpoint without the means to forge one.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class SignatureError(ValueError):
    """A signature is missing, malformed or does not match the signed bytes."""


def load_or_create_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """The Ed25519 private key at ``path``; a new one is written there if the file is absent."""
    path = Path(path)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def load_verify_key(path: str | Path) -> Ed25519PublicKey:
    """Public key from a PEM Ed25519 public key file or derived from a private key file."""
    data = Path(path).read_bytes()
    if b"PRIVATE KEY" in data:
        private = serialization.load_pem_private_key(data, password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError(f"{path} holds a {type(private).__name__}, not an Ed25519 key")
        return private.public_key()
    public = serialization.load_pem_public_key(data)
    if not isinstance(public, Ed25519PublicKey):
        raise ValueError(f"{path} holds a {type(public).__name__}, not an Ed25519 public key")
    return public


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """PEM of the public half, to hand to whoever verifies."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign_bytes(key: Ed25519PrivateKey, data: bytes) -> bytes:
    """64-byte Ed25519 signature of ``data``."""
    return key.sign(data)


def verify_bytes(key: Ed25519PublicKey, data: bytes, signature: bytes) -> None:
    """Raise SignatureError unless ``signature`` is ``key``'s signature of ``data``."""
    if len(signature) != 64:  # Ed25519 signatures are 64 bytes
        raise SignatureError(f"signature must be 64 bytes, got {len(signature)}")
    try:
        key.verify(signature, data)
    except InvalidSignature as err:
        raise SignatureError(
            "signature does not match: the file was changed or signed by another key"
        ) from err
