"""Signed drill and teardown reports (issue 19): `--sign-with KEY` writes the report as a DSSE
envelope (in-toto statement, the report as predicate) that securesystemslib verifies, and a
receipt whose record, RFC 6962 inclusion proof and Ed25519 signed-note checkpoint are checked
here with an independent implementation (hashlib and pyca/cryptography only)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

from test_interop import cli
from test_signing import make_key, ok


def inclusion_holds(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = hashlib.sha256(b"\x01" + p + r).digest()
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = hashlib.sha256(b"\x01" + r + p).digest()
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def checkpoint_of(note: str, vkey: str) -> tuple[int, bytes]:
    """Verifies a C2SP signed note with a vkey `<name>+<id>+<base64(0x01||key)>`; returns the
    checkpoint's size and root."""
    name, key_id, key_b64 = vkey.strip().split("+", 2)
    raw = base64.b64decode(key_b64)
    assert raw[0] == 1, "an Ed25519 vkey"
    body, _, sigs = note.partition("\n\n")
    body += "\n"
    key = Ed25519PublicKey.from_public_bytes(raw[1:])
    for line in sigs.splitlines():
        dash, signer, sig_b64 = line.split(" ")
        sig = base64.b64decode(sig_b64)
        if dash == "\u2014" and signer == name and sig[:4].hex() == key_id:
            key.verify(sig[4:], body.encode())  # raises InvalidSignature
            origin, size, root = body.splitlines()[:3]
            assert origin == name
            return int(size), base64.b64decode(root)
    raise AssertionError("no signature by the vkey's name and id")


def check_signed_report(path: Path, pem: str, vkey: str, predicate_type: str) -> dict:
    doc = json.loads(path.read_text())
    keyid = doc["signatures"][0]["keyid"]
    key = SSlibKey.from_crypto(load_pem_public_key(pem.encode()), keyid=keyid)
    assert keyid in Envelope.from_dict(json.loads(json.dumps(doc))).verify([key], 1)
    payload = base64.b64decode(doc["payload"])
    statement = json.loads(payload)
    assert statement["predicateType"] == predicate_type
    report_bytes = json.dumps(statement["predicate"], separators=(",", ":")).encode()
    assert statement["subject"][0]["digest"]["sha256"] == hashlib.sha256(report_bytes).hexdigest()

    receipt = json.loads(Path(str(path) + ".receipt.json").read_text())
    record = json.loads(receipt["record"])
    assert record["op"] == "sign_dsse" and record["outcome"]["code"] == "ok"
    assert record["signed"]["digest"] == "sha256:" + hashlib.sha256(payload).hexdigest()
    assert record["signed"]["predicate_type"] == predicate_type
    size, root = checkpoint_of(receipt["checkpoint"], vkey)
    assert size == receipt["tree_size"]
    leaf = hashlib.sha256(b"\x00" + receipt["record"].encode()).digest()
    proof = [bytes.fromhex(h) for h in receipt["inclusion_proof"]]
    assert inclusion_holds(receipt["index"], size, leaf, proof, root)
    changed = hashlib.sha256(b"\x00" + receipt["record"].replace("sign_dsse", "sign").encode()).digest()
    assert not inclusion_holds(receipt["index"], size, changed, proof, root)
    return statement["predicate"]


def test_teardown_and_drill_reports_are_signed_and_logged(broker, tmp_path: Path) -> None:
    pem = make_key(broker, "reports/signer")
    vkey = ok(cli(broker, "audit", "vkey", "--output", "text")).decode()

    ok(cli(broker, "leases", "revoke", "--job", "teardown-job-42", "--report", str(tmp_path / "teardown.json"),
           "--sign-with", "reports/signer"))
    report = check_signed_report(tmp_path / "teardown.json", pem, vkey, "urn:keybroker:teardown-report:v1")
    assert report["job"] == "teardown-job-42" and report["revoked_until"]

    ok(cli(broker, "keys", "create", "drills/py-signed"))
    ok(cli(broker, "drill", "revoke", "drills/py-signed", "--scope", "drills/", "--report", str(tmp_path / "drill.json"),
           "--sign-with", "reports/signer"))
    report = check_signed_report(tmp_path / "drill.json", pem, vkey, "urn:keybroker:drill-report:v1")
    assert report["drill"] == "revoke" and report["passed"] is True

    # Without --sign-with the report stays plain JSON.
    ok(cli(broker, "leases", "revoke", "--job", "teardown-job-43", "--report", str(tmp_path / "plain.json")))
    assert json.loads((tmp_path / "plain.json").read_text())["job"] == "teardown-job-43"
    # --sign-with needs --report.
    assert cli(broker, "leases", "revoke", "--job", "j", "--sign-with", "reports/signer").returncode == 2
