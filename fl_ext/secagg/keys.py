"""X25519 key agreement and ChaCha20-Poly1305 sealing for the SecAgg share exchange.

Raw 32-byte keys travel on the wire. Every failure a peer or the relaying server can cause
(bad public key, tampered or misrouted ciphertext) surfaces as :class:`SecAggError`, so the
protocol can treat it as a dropout or an abort instead of a crash.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16


class SecAggError(ValueError):
    """A protocol-level cryptographic failure (bad key, failed authentication)."""


@dataclass(frozen=True)
class KeyPair:
    """A raw X25519 key pair (32 bytes each)."""

    private: bytes
    public: bytes

    def __repr__(self) -> str:
        # Never print the private key in logs or tracebacks.
        return f"KeyPair(public={self.public.hex()})"


def generate_keypair() -> KeyPair:
    """A fresh X25519 key pair from the OS CSPRNG."""
    key = X25519PrivateKey.generate()
    return KeyPair(private=key.private_bytes_raw(), public=key.public_key().public_bytes_raw())


def _private_key(private: bytes | X25519PrivateKey) -> X25519PrivateKey:
    if isinstance(private, X25519PrivateKey):
        return private
    if not isinstance(private, bytes | bytearray) or len(private) != KEY_BYTES:
        size = len(private) if isinstance(private, bytes | bytearray) else type(private).__name__
        raise SecAggError(f"invalid private key: expected {KEY_BYTES} raw bytes, got {size}")
    return X25519PrivateKey.from_private_bytes(bytes(private))


def public_from_private(private: bytes) -> bytes:
    """The raw public key of a raw private key (checks a reconstructed secret key)."""
    return _private_key(private).public_key().public_bytes_raw()


def private_key(private: bytes) -> X25519PrivateKey:
    """The parsed key, for callers that agree with many peers (parsing costs ~60 us)."""
    return _private_key(private)


def agree(private: bytes | X25519PrivateKey, peer_public: bytes, *, info: bytes) -> bytes:
    """X25519 then HKDF-SHA256 (salt None, ``info`` binds the key to its purpose): 32 bytes."""
    key = _private_key(private)
    if not isinstance(peer_public, bytes | bytearray) or len(peer_public) != KEY_BYTES:
        size = (
            len(peer_public)
            if isinstance(peer_public, bytes | bytearray)
            else type(peer_public).__name__
        )
        raise SecAggError(f"invalid peer public key: expected {KEY_BYTES} raw bytes, got {size}")
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(bytes(peer_public)))
    except ValueError as exc:  # low-order point: all-zero shared secret
        raise SecAggError(f"invalid peer public key: {exc}") from exc
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def _aead(key: bytes) -> ChaCha20Poly1305:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        size = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
        raise SecAggError(f"invalid symmetric key: expected {KEY_BYTES} bytes, got {size}")
    return ChaCha20Poly1305(bytes(key))


def seal(key: bytes, plaintext: bytes, *, aad: bytes) -> bytes:
    """ChaCha20-Poly1305 with a fresh random nonce, returned as ``nonce || ciphertext``.

    A random 96-bit nonce is safe here: each key seals only a handful of messages per round.
    """
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _aead(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, *, aad: bytes) -> bytes:
    """Inverse of :func:`seal`; SecAggError if the ciphertext does not authenticate."""
    aead = _aead(key)
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise SecAggError(
            f"sealed message failed authentication (tampered, replayed or misrouted): "
            f"{len(sealed)} bytes, shorter than nonce + tag ({NONCE_BYTES + TAG_BYTES})"
        )
    try:
        return aead.decrypt(bytes(sealed[:NONCE_BYTES]), bytes(sealed[NONCE_BYTES:]), aad)
    except InvalidTag as exc:
        raise SecAggError(
            "sealed message failed authentication (tampered, replayed or misrouted)"
        ) from exc
