"""Signing with the broker's SIGN keys (issue 19): `KeyBroker.sign_file` and `KeyBroker.attest`.

Only a file's SHA-256 leaves the machine. `sign_file` returns cosign's format (ASN.1 DER ECDSA
P-256 over SHA-256 of the file, for ECDSA keys; Ed25519 keys sign the 32 digest bytes), and the
index of the audit record that logs the signature: that record's inclusion proof under a signed
checkpoint is the signature's transparency receipt (`keybroker sign-blob --bundle` fetches it).
`attest` signs an in-toto Statement v1 about files as a DSSE envelope.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .errors import KeyBrokerError
from .v1 import signing_pb2, signing_pb2_grpc

#: in-toto Statement v1 `_type` and its DSSE payload type.
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"

_ALGORITHMS = {
    signing_pb2.SIGNATURE_ALGORITHM_ECDSA_P256: "ecdsa-p256",
    signing_pb2.SIGNATURE_ALGORITHM_ED25519: "ed25519",
}


@dataclass(frozen=True)
class Signature:
    """A signature over a file's SHA-256 and where it is logged."""

    signature: bytes
    key: str
    key_version: int
    algorithm: str
    digest: str  # "sha256:<hex>"
    audit_index: int

    def b64(self) -> str:
        """The signature as cosign's `--signature` file holds it."""
        return base64.b64encode(self.signature).decode()


@dataclass(frozen=True)
class Attestation:
    """A DSSE envelope over an in-toto statement and where it is logged."""

    envelope: dict[str, Any]
    key: str
    key_version: int
    keyid: str
    audit_index: int


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> bytes:
    """SHA-256 of a file, read in chunks (checkpoints and models are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.digest()


def _algorithm(value: int) -> str:
    try:
        return _ALGORITHMS[value]
    except KeyError:
        raise KeyBrokerError("broker answered with an unknown signature algorithm") from None


class SigningMixin:
    """The Signing calls of `KeyBroker` (it provides `_channel`, `_call` and `calls`)."""

    _channel: Any
    calls: dict[str, int]

    def _signing(self) -> signing_pb2_grpc.SigningStub:
        stub = getattr(self, "_signing_stub", None)
        if stub is None:
            stub = signing_pb2_grpc.SigningStub(self._channel)
            self._signing_stub = stub
        return stub

    def _signing_call(self, name: str, method: Any, req: Any) -> Any:
        self.calls.setdefault(name, 0)
        return self._call(name, method, req)  # type: ignore[attr-defined]

    def sign_file(self, path: str | os.PathLike[str], *, key: str, artifact_name: str | None = None,
                  media_type: str = "", signature_path: str | os.PathLike[str] | None = None) -> Signature:
        """Signs the SHA-256 of `path` with SIGN key `key`; with `signature_path`, also writes
        the base64 signature there (the file `cosign verify-blob --signature` reads)."""
        digest = file_sha256(path)
        req = signing_pb2.SignRequest(
            key=key, digest_algorithm=signing_pb2.DIGEST_ALGORITHM_SHA256, digest=digest,
            artifact_name=artifact_name if artifact_name is not None else os.fspath(path),
            media_type=media_type,
        )
        resp = self._signing_call("Sign", self._signing().Sign, req)
        sig = Signature(
            signature=bytes(resp.signature), key=resp.key, key_version=resp.key_version,
            algorithm=_algorithm(resp.algorithm), digest="sha256:" + digest.hex(),
            audit_index=resp.audit_index,
        )
        if signature_path is not None:
            with open(signature_path, "w", encoding="ascii") as f:
                f.write(sig.b64())
        return sig

    def attest(self, subjects: Iterable[str | os.PathLike[str]], *, predicate_type: str,
               predicate: Mapping[str, Any], key: str) -> Attestation:
        """Signs an in-toto Statement v1 about `subjects` (files: name = path as given, digest
        = SHA-256) with `predicate_type` and `predicate`, as a DSSE envelope."""
        statement = {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": os.fspath(p), "digest": {"sha256": file_sha256(p).hex()}} for p in subjects],
            "predicateType": predicate_type,
            "predicate": dict(predicate),
        }
        req = signing_pb2.SignDsseRequest(key=key, statement=json.dumps(statement).encode())
        resp = self._signing_call("SignDsse", self._signing().SignDsse, req)
        return Attestation(
            envelope=json.loads(resp.envelope), key=resp.key, key_version=resp.key_version,
            keyid=resp.keyid, audit_index=resp.audit_index,
        )

    def public_key(self, key: str, version: int = 0) -> str:
        """PEM public key of `version` of SIGN key `key` (0: the newest enabled version)."""
        req = signing_pb2.GetPublicKeyRequest(key=key, version=version)
        return str(self._signing_call("GetPublicKey", self._signing().GetPublicKey, req).pem)
