"""Recipient release (docs/attestation.md): a data key the broker sealed by HPKE (RFC 9180) to a
TEE-held X25519 key, opened here with the private key. The Python port of the Rust client's
`release` module; both are pinned to the same `info` bytes and to each other's sealed keys
(clients/testdata/release).

    info = b"keybroker/hpke-release/v1" || SHA-256( lp16(op) || lp16(key) || u32be(version)
                                                   || lp16(lease_id) || u8(suite) )

`ciphertext_for_recipient` is `enc || ct` (80 bytes for a 32-byte key), exactly what
`cryptography`'s `Suite.encrypt` returns; the AEAD's associated data is empty.
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from .errors import KeyBrokerError

#: HPKE_SUITE_X25519_SHA256_AES256GCM: base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
#: AES-256-GCM.
SUITE_X25519_SHA256_AES256GCM = 1
#: Bytes of a sealed 32-byte data key: enc 32 || ct 32 || tag 16.
SEALED_DATA_KEY_LEN = 80
INFO_LABEL = b"keybroker/hpke-release/v1"
OPS = ("GenerateDataKey", "Decrypt")

_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)


class ReleaseError(KeyBrokerError):
    """A sealed data key does not open (wrong private key, or another call's key)."""


def _lp16(b: bytes) -> bytes:
    return struct.pack(">H", min(len(b), 0xFFFF)) + b


def info(op: str, key: str, version: int, lease_id: str, suite: int = SUITE_X25519_SHA256_AES256GCM) -> bytes:
    """The HPKE `info` of a release: binds the sealed key to its op, key, version and lease."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, not {op!r}")
    h = hashlib.sha256()
    h.update(_lp16(op.encode()))
    h.update(_lp16(key.encode()))
    h.update(struct.pack(">I", version))
    h.update(_lp16(lease_id.encode()))
    h.update(bytes([suite]))
    return INFO_LABEL + h.digest()


def public_key_bytes(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    """The raw 32-byte public key, as the `Recipient` message carries it."""
    pub = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def seal(public_key: X25519PublicKey, info_bytes: bytes, data_key: bytes) -> bytes:
    """Seals `data_key` as the broker does (for tests and test vectors)."""
    return _SUITE.encrypt(data_key, public_key, info=info_bytes)


def open_release(sealed: bytes, private_key: X25519PrivateKey, info_bytes: bytes) -> bytearray:
    """Opens a sealed data key; raises `ReleaseError` when it does not open."""
    if len(sealed) != SEALED_DATA_KEY_LEN:
        raise ReleaseError(f"sealed data key is {len(sealed)} bytes, not {SEALED_DATA_KEY_LEN}")
    try:
        return bytearray(_SUITE.decrypt(sealed, private_key, info=info_bytes))
    except InvalidTag:
        raise ReleaseError("sealed data key does not open (wrong private key, or another call's key)") from None
