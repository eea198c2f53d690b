"""Signing (issue 19), verified with libraries that are not ours, against the real dev broker.

`keybroker sign-blob` writes cosign's format: base64 ASN.1 ECDSA P-256 over SHA-256 of the
file, which pyca/cryptography verifies exactly as `cosign verify-blob --key` does. `keybroker
attest` writes a DSSE envelope over an in-toto Statement v1, which securesystemslib and in-toto
verify with the key's PEM. A changed byte, another key, or a changed or removed log entry is
refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from in_toto.models.metadata import Envelope as InTotoEnvelope
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey

from test_interop import cli


def ok(r) -> bytes:  # type: ignore[no-untyped-def]
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


def make_key(broker, name: str, algorithm: str = "ecdsa-p256") -> str:  # type: ignore[no-untyped-def]
    ok(cli(broker, "keys", "create", name, "--purpose", "sign", "--algorithm", algorithm))
    return ok(cli(broker, "keys", "public-key", name, "--output", "text")).decode()


def test_sign_blob_verifies_with_pyca_cryptography_as_cosign_does(broker, tmp_path: Path) -> None:
    pem = make_key(broker, "models/py-release")
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights " * 4096)
    out = json.loads(ok(cli(broker, "sign-blob", str(model), "--key-name", "models/py-release",
                            "--signature-file", str(tmp_path / "model.sig"),
                            "--bundle", str(tmp_path / "model.bundle.json"))))
    assert out["key_version"] == 1 and out["audit_index"] >= 0
    sig = base64.b64decode((tmp_path / "model.sig").read_text())
    assert sig == base64.b64decode(out["signature"])
    key = load_pem_public_key(pem.encode())
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    key.verify(sig, model.read_bytes(), ec.ECDSA(hashes.SHA256()))

    # A changed byte of the file is refused.
    changed = bytearray(model.read_bytes())
    changed[100] ^= 1
    with pytest.raises(InvalidSignature):
        key.verify(sig, bytes(changed), ec.ECDSA(hashes.SHA256()))
    # Another key is refused.
    other = load_pem_public_key(make_key(broker, "models/py-other").encode())
    with pytest.raises(InvalidSignature):
        other.verify(sig, model.read_bytes(), ec.ECDSA(hashes.SHA256()))

    # The bundle's receipt: the audit record names the digest, version and principal.
    bundle = json.loads((tmp_path / "model.bundle.json").read_text())
    record = json.loads(bundle["receipt"]["record"])
    assert record["op"] == "sign"
    assert record["signed"]["digest"] == "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    assert record["key_version"] == 1
    assert record["principal"]["subject"]


def test_verify_blob_checks_signature_and_log_inclusion_offline(broker, tmp_path: Path) -> None:
    pem = make_key(broker, "models/py-verify")
    (tmp_path / "pub.pem").write_text(pem)
    data = tmp_path / "ckpt.bin"
    data.write_bytes(b"checkpoint 1")
    ok(cli(broker, "sign-blob", str(data), "--key-name", "models/py-verify",
           "--signature-file", str(tmp_path / "sig"), "--bundle", str(tmp_path / "b.json")))
    vkey = tmp_path / "vkey"
    vkey.write_text(ok(cli(broker, "audit", "vkey", "--output", "text")).decode())
    offline = {"KEYBROKER_ENDPOINT": ""}  # --public-key needs no broker
    r = json.loads(ok(cli(broker, "verify-blob", str(data), "--signature", str(tmp_path / "sig"),
                          "--public-key", str(tmp_path / "pub.pem"), "--bundle", str(tmp_path / "b.json"),
                          "--vkey", str(vkey), env=offline)))
    assert r["verified"] and r["log_verified"] and not r["vkey_trusted_on_first_use"]
    ok(cli(broker, "verify-blob", str(data), "--signature", str(tmp_path / "sig"),
           "--key-name", "models/py-verify"))

    # A changed file, a changed log entry, an entry swapped for another, or a cut proof: refused.
    (tmp_path / "changed.bin").write_bytes(b"checkpoint 2")
    assert cli(broker, "verify-blob", str(tmp_path / "changed.bin"), "--signature", str(tmp_path / "sig"),
               "--public-key", str(tmp_path / "pub.pem")).returncode == 1
    bundle = json.loads((tmp_path / "b.json").read_text())
    index = bundle["receipt"]["index"]
    tail = ok(cli(broker, "audit", "tail", "--from", str(max(index - 1, 0)))).decode().splitlines()
    tampered = {
        "changed": bundle["receipt"]["record"].replace('"sign"', '"decrypt"'),
        "swapped": tail[0] if index > 0 else tail[1],
    }
    for what, record in tampered.items():
        bad = json.loads(json.dumps(bundle))
        bad["receipt"]["record"] = record
        (tmp_path / f"{what}.json").write_text(json.dumps(bad))
        r = cli(broker, "verify-blob", str(data), "--public-key", str(tmp_path / "pub.pem"),
                "--bundle", str(tmp_path / f"{what}.json"), "--vkey", str(vkey))
        assert r.returncode == 1, what
        assert b"verification failed" in r.stderr, r.stderr
    bad = json.loads(json.dumps(bundle))
    bad["receipt"]["inclusion_proof"] = bad["receipt"]["inclusion_proof"][:-1]
    (tmp_path / "cut.json").write_text(json.dumps(bad))
    if bundle["receipt"]["inclusion_proof"]:
        assert cli(broker, "verify-blob", str(data), "--public-key", str(tmp_path / "pub.pem"),
                   "--bundle", str(tmp_path / "cut.json")).returncode == 1


@pytest.mark.parametrize("algorithm", ["ecdsa-p256", "ed25519"])
def test_attest_envelope_verifies_with_securesystemslib_and_in_toto(broker, tmp_path: Path, algorithm: str) -> None:
    name = f"attest/py-{algorithm}"
    pem = make_key(broker, name, algorithm)
    (tmp_path / "model.bin").write_bytes(b"model")
    (tmp_path / "snapshot.manifest").write_bytes(b"dataset snapshot 2026-12")
    (tmp_path / "predicate.json").write_text(json.dumps({"buildDefinition": {"buildType": "train"}}))
    meta = json.loads(ok(cli(
        broker, "attest", "--predicate-type", "https://slsa.dev/provenance/v1",
        "--predicate", str(tmp_path / "predicate.json"),
        "--subject", str(tmp_path / "model.bin"), "--subject", str(tmp_path / "snapshot.manifest"),
        "--key-name", name, "--envelope", str(tmp_path / "env.json"),
    )))
    doc = json.loads((tmp_path / "env.json").read_text())
    assert doc["payloadType"] == "application/vnd.in-toto+json"
    key = SSlibKey.from_crypto(load_pem_public_key(pem.encode()), keyid=meta["keyid"])
    for cls in (Envelope, InTotoEnvelope):
        accepted = cls.from_dict(json.loads(json.dumps(doc))).verify([key], 1)
        assert meta["keyid"] in accepted
    statement = json.loads(base64.b64decode(doc["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["subject"][0]["digest"]["sha256"] == hashlib.sha256(b"model").hexdigest()

    # A changed payload or another key is refused.
    # (from_dict rewrites the dict it is given: hand it copies.)
    changed = json.loads(json.dumps(doc))
    changed["payload"] = base64.b64encode(json.dumps(dict(statement, predicateType="x:y")).encode()).decode()
    with pytest.raises(VerificationError):
        Envelope.from_dict(changed).verify([key], 1)
    other_pem = make_key(broker, f"attest/py-other-{algorithm}", algorithm)
    other = SSlibKey.from_crypto(load_pem_public_key(other_pem.encode()), keyid=meta["keyid"])
    with pytest.raises(VerificationError):
        Envelope.from_dict(json.loads(json.dumps(doc))).verify([other], 1)


def test_sign_blob_with_a_data_key_is_refused(broker, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    r = cli(broker, "sign-blob", str(tmp_path / "f"), "--key-name", "datasets/demo")
    assert r.returncode == 1
    assert b"FAILED_PRECONDITION" in r.stderr.upper().replace(b" ", b"_") or b"SIGN" in r.stderr


def test_python_client_signs_a_checkpoint_and_attests_a_dataset(broker, tmp_path: Path) -> None:
    make_key(broker, "models/py-client")
    ckpt = tmp_path / "step-100.ckpt"
    ckpt.write_bytes(b"\x00checkpoint" * 10_000)
    snapshot = tmp_path / "snapshot.manifest"
    snapshot.write_bytes(b"shard-0 sha256:...\nshard-1 sha256:...\n")
    with broker.client() as kb:
        sig = kb.sign_file(ckpt, key="models/py-client", signature_path=tmp_path / "step-100.sig")
        pem = kb.public_key("models/py-client", sig.key_version)
        att = kb.attest([snapshot], predicate_type="https://slsa.dev/provenance/v1",
                        predicate={"buildDefinition": {"buildType": "dataset-snapshot"}}, key="models/py-client")
    assert sig.algorithm == "ecdsa-p256" and sig.digest == "sha256:" + hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert att.audit_index > sig.audit_index
    load_pem_public_key(pem.encode()).verify(sig.signature, ckpt.read_bytes(), ec.ECDSA(hashes.SHA256()))
    (tmp_path / "pub.pem").write_text(pem)
    ok(cli(broker, "verify-blob", str(ckpt), "--signature", str(tmp_path / "step-100.sig"),
           "--public-key", str(tmp_path / "pub.pem")))
    key = SSlibKey.from_crypto(load_pem_public_key(pem.encode()), keyid=att.keyid)
    assert att.keyid in Envelope.from_dict(json.loads(json.dumps(att.envelope))).verify([key], 1)


def test_training_example_signs_every_checkpoint_and_attests_the_model(broker, tmp_path: Path) -> None:
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("training_loop_signing", REPO / "examples" / "training_loop.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    pem = make_key(broker, "models/example-signing")
    (tmp_path / "pub.pem").write_text(pem)
    with broker.client() as kb:
        shards, _ = example.make_shards(kb, tmp_path, key="datasets/demo", dataset="ds", shards=2, rows=64)
        _, _, ckpt = example.train(kb, shards, tmp_path, key="datasets/demo", dataset="ds", run="r",
                                   epochs=2, sign_key="models/example-signing")
        envelope = example.attest_model(kb, ckpt, shards, sign_key="models/example-signing", run="r")
    for step in range(2):
        path = tmp_path / f"ckpt-{step:04d}.kbef"
        ok(cli(broker, "verify-blob", str(path), "--signature", str(path) + ".sig",
               "--public-key", str(tmp_path / "pub.pem")))
    doc = json.loads(envelope.read_text())
    keyid = doc["signatures"][0]["keyid"]
    key = SSlibKey.from_crypto(load_pem_public_key(pem.encode()), keyid=keyid)
    assert keyid in InTotoEnvelope.from_dict(doc).verify([key], 1)
    names = [s["name"] for s in json.loads(base64.b64decode(doc["payload"]))["subject"]]
    assert names == [str(ckpt), *map(str, shards)]
