"""Attested key release against a real `keybrokerd dev` (its dev attestation verifier), driven by
the Python client and the Rust CLI: nonces, dev attestation results (`keybroker
dev-attestation`), data keys released in clear or sealed by HPKE to a TEE-held key, and every
refusal with the reason its audit record gives.

One broker for the module (started once; the tests run in file order and the policy reload
comes last)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from keybroker import BrokerError, KeyBroker, release

from conftest import DevBroker, _dev_broker
from test_interop import cli

KEY = "models/confidential"
CTX = {"model": "llm-7b", "stage": "train"}
# Two measurements of broker/policy/attested-models.cedar's allow-list, and one outside it.
GOOD = "04a170f39a3f702472ed0c7ecbda9babfc530e3caac475fdd607ff499177d14c278c5a15ad07ceacd5230ae63d507e9d"
GOOD_TDX = "5be56d418d33661a6c21da77c9503a07e430b35eb92a0bd042a6b3c4e79b3c82bb1c594e770d0d129a0724669f1e953f"
UNLISTED = "ab" * 48
DEV_RULE = "policy:dev-models-confidential-needs-fresh-tee"


@pytest.fixture(scope="module")
def att(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevBroker]:
    with _dev_broker(tmp_path_factory.mktemp("attestation")) as b:
        yield b


# ---- helpers ----------------------------------------------------------------------------------


def run(b: DevBroker, *args: str, env: dict[str, str] | None = None) -> str:
    out = cli(b, *args, env=env)
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode().strip()


def nonce(b: DevBroker, token_file: str | None = None) -> str:
    """A nonce from `keybroker attestation nonce` (as the caller of `token_file`)."""
    n = run(b, "attestation", "nonce", env={"KEYBROKER_TOKEN_FILE": token_file} if token_file else None)
    assert len(n) == 55 and "\n" not in n, n
    return n


def mint(b: DevBroker, n: str | None, *extra: str, tee: str = "sev-snp", measurement: str = GOOD,
         state: Path | None = None) -> str:
    """A dev attestation result from `keybroker dev-attestation`."""
    args = ["dev-attestation", "--state-dir", str(state or b.state), "--tee", tee, "--measurement", measurement]
    if n is not None:
        args += ["--nonce", n]
    return run(b, *args, *extra)


def x25519_pem(path: Path, key: X25519PrivateKey | None = None, *, public: bool = False) -> X25519PrivateKey:
    """Writes an X25519 key PEM (PKCS#8 private, mode 0600; or SPKI public) and returns the key."""
    key = key or X25519PrivateKey.generate()
    if public:
        data = key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    path.write_bytes(data)
    path.chmod(0o600)
    return key


def audit(b: DevBroker) -> list[dict[str, Any]]:
    out = run(b, "audit", "tail", "--from", "0")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def record(b: DevBroker, **match: str) -> dict[str, Any]:
    """The one audit record whose fields equal `match` (request_id or lease_id): Audit.Watch
    serves a record a moment after it is durable, so poll for it."""
    deadline = time.monotonic() + 15
    while True:
        found = [r for r in audit(b) if all(r.get(k) == v for k, v in match.items())]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(found) == 1, f"expected one record with {match}, got {found}"
    return found[0]


def refused(b: DevBroker, call: Callable[[], Any], reason: str) -> dict[str, Any]:
    """`call` fails with PERMISSION_DENIED and its audit record is a deny giving `reason`;
    attestation refusals say only "attestation refused" to the caller."""
    with pytest.raises(BrokerError) as e:
        call()
    assert e.value.code == "PERMISSION_DENIED", e.value
    if reason.startswith("attestation: "):
        assert e.value.message == "attestation refused"
    else:
        assert e.value.message != "attestation refused"
    r = record(b, request_id=e.value.request_id)
    assert r["decision"] == "deny" and reason in r["reasons"], r
    return r


def capture(kb: KeyBroker, method: str) -> list[Any]:
    """Records the raw responses of `kb`'s stub method (what the host relaying them sees)."""
    seen: list[Any] = []
    inner = getattr(kb._stub, method)

    def wrapped(req: Any, **kw: Any) -> Any:
        resp = inner(req, **kw)
        seen.append(resp)
        return resp

    setattr(kb._stub, method, wrapped)
    return seen


def assert_sealed_only(resp: Any, dek: bytes) -> None:
    assert resp.plaintext == b""
    assert len(resp.ciphertext_for_recipient) == release.SEALED_DATA_KEY_LEN
    assert resp.recipient_suite == release.SUITE_X25519_SHA256_AES256GCM
    wire = resp.SerializeToString()
    assert len(dek) == 32 and dek not in wire, "the data key must not cross the host in clear"


# ---- releases ---------------------------------------------------------------------------------


def test_valid_sev_snp_result_releases_the_key_and_the_facts_are_audited(att: DevBroker) -> None:
    with att.client() as kb:
        token = mint(att, kb.get_attestation_nonce())
        dk = kb.generate_data_key(KEY, CTX, attestation=token)
        assert len(dk.key) == 32 and dk.ciphertext_for_recipient == b""
        r = record(att, request_id=dk.request_id)
        assert (r["decision"], r["op"], r["key_name"]) == ("allow", "generate_data_key", KEY), r
        a = r["attestation"]
        assert {k: a[k] for k in ("verifier", "profile", "tee", "measurement", "debug", "nonce_binding")} == {
            "verifier": "dev", "profile": "ear", "tee": "sev-snp", "measurement": GOOD, "debug": False,
            "nonce_binding": "evidence"}, a
        assert 0 <= a["age_seconds"] <= 60 and "recipient_sha256" not in a
        assert token not in json.dumps(r), "the audit record never holds the token"

        # Decrypt under a fresh result (a TDX one this time) opens the same key.
        token = mint(att, kb.get_attestation_nonce(), tee="tdx", measurement=GOOD_TDX)
        opened = kb.decrypt(dk.ciphertext, CTX, attestation=token)
        assert opened.key == dk.key
        a = record(att, request_id=opened.request_id)["attestation"]
        assert (a["tee"], a["tcb_status"], a["measurement"]) == ("tdx", "UpToDate", GOOD_TDX)


def test_recipient_release_is_opened_by_python_and_the_host_sees_no_plaintext(att: DevBroker, tmp_path: Path) -> None:
    sk = x25519_pem(tmp_path / "enclave.pem")
    pub = release.public_key_bytes(sk)
    with att.client() as kb:
        generated = capture(kb, "GenerateDataKey")
        token = mint(att, kb.get_attestation_nonce(), "--recipient-key", str(tmp_path / "enclave.pem"))
        dk = kb.generate_data_key(KEY, CTX, attestation=token, recipient_private_key=sk)
        assert_sealed_only(generated[-1], bytes(dk.key))
        assert dk.ciphertext_for_recipient == generated[-1].ciphertext_for_recipient
        a = record(att, request_id=dk.request_id)["attestation"]
        assert a["recipient_sha256"] == hashlib.sha256(pub).hexdigest()

        # Decrypt with a recipient: sealed again (to the same TEE key), the same data key.
        decrypted = capture(kb, "Decrypt")
        token = mint(att, kb.get_attestation_nonce(), "--recipient-key", str(tmp_path / "enclave.pem"))
        opened = kb.decrypt(dk.ciphertext, CTX, attestation=token, recipient_private_key=sk)
        assert opened.key == dk.key
        assert_sealed_only(decrypted[-1], bytes(dk.key))
        assert record(att, request_id=opened.request_id)["attestation"]["recipient_sha256"] == hashlib.sha256(pub).hexdigest()


def test_rust_cli_round_trip_with_recipient_key(att: DevBroker, tmp_path: Path) -> None:
    pem = tmp_path / "enclave.pem"
    if shutil.which("openssl"):
        # The PEM a TEE image would typically make (docs/attestation.md's walkthrough): OpenSSL
        # writes private keys owner-only, so the CLI's mode check accepts it as is.
        subprocess.run(["openssl", "genpkey", "-algorithm", "X25519", "-out", str(pem)], check=True)
    else:
        run(att, "attestation", "recipient-key", "--out", str(pem))
    sk = serialization.load_pem_private_key(pem.read_bytes(), password=None)
    assert isinstance(sk, X25519PrivateKey)
    att_file = tmp_path / "att.jwt"

    att_file.write_text(mint(att, nonce(att), "--recipient-key", str(pem)) + "\n")
    gen = json.loads(run(att, "datakey", "generate", KEY, "--context", "model=llm-7b", "--context", "stage=train",
                         "--attestation-file", str(att_file), "--recipient-key", str(pem)))
    dek = base64.b64decode(gen["plaintext"])
    assert len(dek) == 32 and "ciphertext_for_recipient" not in gen
    a = record(att, lease_id=gen["lease_id"])["attestation"]
    assert a["recipient_sha256"] == hashlib.sha256(release.public_key_bytes(sk)).hexdigest()

    # Decrypt with the CLI, then with the public key alone: the CLI prints the sealed key,
    # which only the private key (here: Python) opens.
    att_file.write_text(mint(att, nonce(att), "--recipient-key", str(pem)))
    dec = json.loads(run(att, "datakey", "decrypt", gen["ciphertext"], "--context", "model=llm-7b",
                         "--context", "stage=train", "--attestation-file", str(att_file), "--recipient-key", str(pem)))
    assert base64.b64decode(dec["plaintext"]) == dek and dec["key"] == KEY
    public = tmp_path / "enclave.pub.pem"
    x25519_pem(public, sk, public=True)
    # The CLI's own key generator writes keys the CLI and OpenSSL-backed Python both read.
    run(att, "attestation", "recipient-key", "--out", str(tmp_path / "k2.pem"), "--public-out", str(tmp_path / "k2.pub.pem"))
    k2 = serialization.load_pem_private_key((tmp_path / "k2.pem").read_bytes(), password=None)
    assert isinstance(k2, X25519PrivateKey) and (tmp_path / "k2.pem").stat().st_mode & 0o077 == 0
    assert serialization.load_pem_public_key((tmp_path / "k2.pub.pem").read_bytes()).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw) == release.public_key_bytes(k2)
    att_file.write_text(mint(att, nonce(att), "--recipient-key", str(public)))
    dec = json.loads(run(att, "datakey", "decrypt", gen["ciphertext"], "--context", "model=llm-7b",
                         "--context", "stage=train", "--attestation-file", str(att_file), "--recipient-key", str(public)))
    assert "plaintext" not in dec
    sealed = base64.b64decode(dec["ciphertext_for_recipient"])
    info = release.info("Decrypt", dec["key"], dec["key_version"], dec["lease_id"])
    assert bytes(release.open_release(sealed, sk, info)) == dek

    # A private key others may read is refused before any call.
    pem.chmod(0o644)
    out = cli(att, "datakey", "generate", KEY, "--attestation-file", str(att_file), "--recipient-key", str(pem))
    assert out.returncode != 0 and b"chmod 600" in out.stderr


def test_a_key_without_attestation_rules_still_works_without_attestation(att: DevBroker) -> None:
    with att.client() as kb:
        dk = kb.generate_data_key("datasets/demo", {"dataset": "demo"})
        r = record(att, request_id=dk.request_id)
        assert r["decision"] == "allow" and "attestation" not in r


# ---- refusals ---------------------------------------------------------------------------------


def test_debug_tee_and_no_attestation_are_refused_by_the_dev_policy(att: DevBroker) -> None:
    with att.client() as kb:
        token = mint(att, kb.get_attestation_nonce(), "--debug")
        r = refused(att, lambda: kb.generate_data_key(KEY, CTX, attestation=token), DEV_RULE)
        assert r["attestation"]["debug"] is True
        refused(att, lambda: kb.generate_data_key(KEY, CTX), DEV_RULE)


def test_stale_result_is_refused(att: DevBroker) -> None:
    with att.client() as kb:
        token = mint(att, kb.get_attestation_nonce(), "--iat-offset", "-600")
        refused(att, lambda: kb.generate_data_key(KEY, CTX, attestation=token), "attestation: result too old")


def test_replayed_result_is_refused_the_second_time(att: DevBroker) -> None:
    with att.client() as kb:
        token = mint(att, kb.get_attestation_nonce())
        kb.generate_data_key(KEY, CTX, attestation=token)
        refused(att, lambda: kb.generate_data_key(KEY, CTX, attestation=token), "attestation: nonce replayed")


def test_result_signed_by_another_verifier_key_is_refused(att: DevBroker, tmp_path: Path) -> None:
    # Same issuer and kid as the dev verifier, another Ed25519 key.
    forged = tmp_path / "dev-attestation"
    forged.mkdir()
    shutil.copy(att.state / "dev-attestation" / "verifier.json", forged / "verifier.json")
    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (forged / "signing-key.pem").write_bytes(key)
    with att.client() as kb:
        token = mint(att, kb.get_attestation_nonce(), state=tmp_path)
        r = refused(att, lambda: kb.generate_data_key(KEY, CTX, attestation=token), "attestation: bad signature")
        assert r["attestation"].get("verifier") == "dev"


def test_result_for_another_workload_is_refused(att: DevBroker, tmp_path: Path) -> None:
    other = tmp_path / "evaluator.token"
    run(att, "dev-token", "--state-dir", str(att.state), "--service-account", "evaluator", "--out", str(other))
    token = mint(att, nonce(att))  # the nonce was issued to the dev trainer...
    with att.client() as trainer:
        with KeyBroker(att.env["KEYBROKER_ENDPOINT"], token_file=str(other), ca=att.env["KEYBROKER_CA"]) as kb:
            # ...and is refused to the evaluator, which may otherwise use the key's namespace.
            refused(att, lambda: kb.generate_data_key(KEY, CTX, attestation=token),
                    "attestation: nonce not issued to this caller")
            token = mint(att, kb.get_attestation_nonce())
            refused(att, lambda: trainer.generate_data_key(KEY, CTX, attestation=token),
                    "attestation: nonce not issued to this caller")
            assert len(kb.generate_data_key(KEY, CTX, attestation=token).key) == 32


def test_result_without_tee_or_nonce_is_refused(att: DevBroker) -> None:
    with att.client() as kb:
        token = mint(att, kb.get_attestation_nonce(), "--no-tee")
        refused(att, lambda: kb.generate_data_key(KEY, CTX, attestation=token), "attestation: missing tee")
        token = mint(att, None, "--no-nonce")
        refused(att, lambda: kb.generate_data_key(KEY, CTX, attestation=token), "attestation: nonce missing")


def test_recipient_must_be_bound_and_needs_attestation(att: DevBroker, tmp_path: Path) -> None:
    x25519_pem(tmp_path / "x.pem")
    y = X25519PrivateKey.generate()
    with att.client() as kb:
        token = mint(att, kb.get_attestation_nonce(), "--recipient-key", str(tmp_path / "x.pem"))
        r = refused(att, lambda: kb.generate_data_key(KEY, CTX, attestation=token, recipient_private_key=y),
                    "attestation: recipient not bound")
        assert r["attestation"]["recipient_sha256"] == hashlib.sha256(release.public_key_bytes(y)).hexdigest()
        # A result without a bound key cannot take a recipient either.
        token = mint(att, kb.get_attestation_nonce())
        refused(att, lambda: kb.generate_data_key(KEY, CTX, attestation=token, recipient_private_key=y),
                "attestation: recipient not bound")
        refused(att, lambda: kb.generate_data_key("datasets/demo", {}, recipient_private_key=y),
                "attestation: recipient requires attestation")


def test_example_policy_refuses_an_unlisted_measurement_and_clear_release_of_sealed_only_keys(
    att: DevBroker, tmp_path: Path,
) -> None:
    run(att, "keys", "create", "models/sealed-only", "--label", "release=recipient-only")
    policy = att.state / "dev-policy.cedar"
    example = Path(__file__).resolve().parents[3] / "broker" / "policy" / "attested-models.cedar"
    policy.write_text(policy.read_text() + "\n" + example.read_text())
    att.proc.send_signal(signal.SIGHUP)
    with att.client() as kb:
        deadline = time.monotonic() + 30
        while True:  # the reload is asynchronous: poll for its effect, not a fixed sleep
            token = mint(att, kb.get_attestation_nonce(), measurement=UNLISTED)
            try:
                kb.generate_data_key(KEY, CTX, attestation=token)
            except BrokerError as e:
                assert e.code == "PERMISSION_DENIED", e
                break
            assert time.monotonic() < deadline, "policy reload not seen within 30 s"
            time.sleep(0.2)
        token = mint(att, kb.get_attestation_nonce(), measurement=UNLISTED)
        r = refused(att, lambda: kb.generate_data_key(KEY, CTX, attestation=token),
                    "policy:models-only-in-approved-tee")
        assert r["attestation"]["measurement"] == UNLISTED
        token = mint(att, kb.get_attestation_nonce())
        assert len(kb.generate_data_key(KEY, CTX, attestation=token).key) == 32

        sk = x25519_pem(tmp_path / "enclave.pem")
        token = mint(att, kb.get_attestation_nonce(), "--recipient-key", str(tmp_path / "enclave.pem"))
        refused(att, lambda: kb.generate_data_key("models/sealed-only", CTX, attestation=token),
                "policy:recipient-only-keys-leave-sealed")
        token = mint(att, kb.get_attestation_nonce(), "--recipient-key", str(tmp_path / "enclave.pem"))
        assert len(kb.generate_data_key("models/sealed-only", CTX, attestation=token, recipient_private_key=sk).key) == 32


def test_dev_mode_keys_are_created_with_an_audit_record(att: DevBroker) -> None:
    """Every key operation has its record, also the keys dev mode made for itself at start."""
    made = {r["key_name"]: r for r in audit(att) if r["op"] == "create_key"}
    for name in ["datasets/demo", "models/confidential", "xks-demo"]:
        r = made[name]
        assert r["decision"] == "allow" and r["principal"] is None, r
        assert r["reasons"] == ["dev mode: created at first start"], r
        assert r["key_version"] == 1 and r["hsm_id"] == "softhsm-dev", r
