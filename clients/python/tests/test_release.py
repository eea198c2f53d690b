"""Offline: recipient release (keybroker.release) against the Rust client — the pinned `info`
bytes, and keys sealed by either client (clients/testdata/release) open here."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from keybroker import KeyBrokerError, ReleaseError, release
from keybroker.client import _released

from conftest import REPO

VECTORS = REPO / "clients" / "testdata" / "release"
# release::info(GenerateDataKey, "models/confidential", 1, "l-1", 1), pinned by the Rust client's
# tests/release_vectors.rs too.
PINNED_INFO = ("6b657962726f6b65722f68706b652d72656c656173652f7631"
               "c9b96787075517ffd84ab8ea04311dbce9cfc0bba29a116fc5370effbdcc6230")


def test_info_is_pinned_to_the_rust_value() -> None:
    assert release.info("GenerateDataKey", "models/confidential", 1, "l-1", 1).hex() == PINNED_INFO
    with pytest.raises(ValueError):
        release.info("Encrypt", "k", 1, "l")


@pytest.mark.parametrize("name", ["sealed-by-rust.json", "sealed-by-python.json"])
def test_keys_sealed_by_either_client_open_here(name: str) -> None:
    vectors = json.loads((VECTORS / name).read_text())["vectors"]
    assert len(vectors) >= 3
    for v in vectors:
        info = release.info(v["op"], v["key"], v["version"], v["lease_id"], v["suite"])
        assert info.hex() == v["info"]
        sk = X25519PrivateKey.from_private_bytes(bytes.fromhex(v["recipient_secret"]))
        assert release.public_key_bytes(sk).hex() == v["recipient_public"]
        sealed = bytes.fromhex(v["sealed"])
        assert release.open_release(sealed, sk, info).hex() == v["data_key"]
        with pytest.raises(ReleaseError):
            release.open_release(sealed, sk, release.info("Decrypt", "other", v["version"], "l-x"))
        with pytest.raises(ReleaseError):
            release.open_release(sealed, X25519PrivateKey.generate(), info)
        with pytest.raises(ReleaseError):
            release.open_release(sealed[:-1], sk, info)


def _resp(plaintext: bytes = b"", sealed: bytes = b"", suite: int = 1) -> SimpleNamespace:
    return SimpleNamespace(plaintext=plaintext, ciphertext_for_recipient=sealed, recipient_suite=suite,
                           key_version=2, lease=SimpleNamespace(lease_id="l-9"))


def test_a_response_is_checked_against_the_request() -> None:
    sk = X25519PrivateKey.generate()
    dek = bytes(range(32))
    sealed = release.seal(sk.public_key(), release.info("Decrypt", "models/m", 2, "l-9"), dek)
    plain, got = _released(_resp(sealed=sealed), sk, "Decrypt", "models/m")
    assert (bytes(plain), got) == (dek, sealed)
    # The key name is bound: the same response for another key does not open.
    with pytest.raises(ReleaseError):
        _released(_resp(sealed=sealed), sk, "Decrypt", "models/n")
    with pytest.raises(KeyBrokerError, match="in clear despite a recipient"):
        _released(_resp(plaintext=dek, sealed=sealed), sk, "Decrypt", "models/m")
    with pytest.raises(KeyBrokerError, match="another HPKE suite"):
        _released(_resp(sealed=sealed, suite=2), sk, "Decrypt", "models/m")
    with pytest.raises(KeyBrokerError, match="without a recipient"):
        _released(_resp(plaintext=dek, sealed=sealed), None, "Decrypt", "models/m")
    assert _released(_resp(plaintext=dek), None, "Decrypt", "models/m") == (dek, b"")
