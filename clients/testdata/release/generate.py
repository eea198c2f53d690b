#!/usr/bin/env python3
"""Writes sealed-by-python.json: data keys sealed with the Python client's HPKE (PyCA
`cryptography`, OpenSSL), for the Rust client's test to open (see README.md). HPKE is
randomised, so every run gives other bytes; run it only on purpose.

    target/pyenv/bin/python clients/testdata/release/generate.py
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from keybroker import release

CASES = [
    ("GenerateDataKey", "models/confidential", 1, "lease-py-0001"),
    ("Decrypt", "models/confidential", 9, "0b7a6f2c-1d3e-4c59-9a53-2f8e1b7d4c10"),
    ("Decrypt", "datasets/demo", 1, "l-2"),
]


def main() -> None:
    vectors = []
    for n, (op, key, version, lease) in enumerate(CASES):
        secret = bytes((b * 11 + 100 + n) % 256 for b in range(32))
        data_key = bytes(b ^ (0x50 + n) for b in range(32))
        sk = X25519PrivateKey.from_private_bytes(secret)
        info = release.info(op, key, version, lease)
        sealed = release.seal(sk.public_key(), info, data_key)
        vectors.append({
            "op": op, "key": key, "version": version, "lease_id": lease,
            "suite": release.SUITE_X25519_SHA256_AES256GCM,
            "recipient_secret": secret.hex(), "recipient_public": release.public_key_bytes(sk).hex(),
            "info": info.hex(), "data_key": data_key.hex(), "sealed": sealed.hex(),
        })
    doc = {"note": "sealed by the Python client (cryptography HPKE); made by generate.py", "vectors": vectors}
    out = Path(__file__).resolve().parent / "sealed-by-python.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
