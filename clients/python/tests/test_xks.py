"""The AWS KMS External Key Store (XKS) proxy API of `keybrokerd dev`, driven by an independent
SigV4 signer (botocore's, as AWS SDKs sign) over plain HTTPS: every request is built and signed
here, the broker's only knowledge of the client is the bytes on the wire.

Each test asserts the HTTP status, the spec's errorName, and — for key operations — the audit
record the broker wrote (surface "xks", the request's kmsRequestId as request id)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import signal
import ssl
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSPreparedRequest, AWSRequest
from botocore.credentials import Credentials

import botocore.auth

from conftest import _dev_broker, _env_file
from test_interop import cli

PRINCIPAL = "arn:aws:iam::123456789012:user/Alice"
KEY_ARN = "arn:aws:kms:eu-central-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
B64 = lambda b: base64.b64encode(b).decode()  # noqa: E731


class Xks:
    """A SigV4 client of one key store, from the dev broker's xks.env."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.env = _env_file(broker.state / "xks.env")
        self.akid = self.env["SIGV4_ACCESS_KEY_ID"]
        self.secret = self.env["SIGV4_SECRET_ACCESS_KEY"]
        self.region = self.env["REGION"]
        self.base = f"https://{self.env['XKS_PROXY_HOST']}"
        self.prefix = self.env["URI_PREFIX"]
        self.ctx = self.context(with_client_cert=True)

    def context(self, with_client_cert: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.env["CURL_CA_BUNDLE"])
        if with_client_cert:
            # The dev store requires mTLS, as AWS KMS presents its client certificate.
            ctx.load_cert_chain(self.env["XKS_CLIENT_CERT"], self.env["XKS_CLIENT_KEY"])
        return ctx

    def prepare(self, tail: str, body: Any, *, akid: str | None = None, secret: str | None = None,
                region: str | None = None, service: str = "kms-xks-proxy", prefix: str | None = None,
                headers: dict[str, str] | None = None) -> AWSPreparedRequest:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        url = f"{self.base}/{self.prefix if prefix is None else prefix}/kms/xks/v1/{tail}"
        req = AWSRequest(method="POST", url=url, data=data,
                         headers={"Content-Type": "application/json", **(headers or {})})
        SigV4Auth(Credentials(akid or self.akid, secret or self.secret), service, region or self.region).add_auth(req)
        return req.prepare()

    def send(self, p: AWSPreparedRequest, method: str = "POST",
             ctx: ssl.SSLContext | None = None) -> tuple[int, dict[str, Any]]:
        r = urllib.request.Request(p.url, data=p.body, headers=dict(p.headers), method=method)
        try:
            with urllib.request.urlopen(r, context=ctx or self.ctx, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, (json.loads(raw) if raw else {})

    def call(self, tail: str, body: Any, **kw: Any) -> tuple[int, dict[str, Any]]:
        return self.send(self.prepare(tail, body, **kw))


def md(op: str = "Encrypt", rid: str | None = None, **extra: str) -> dict[str, str]:
    return {"awsPrincipalArn": PRINCIPAL, "kmsOperation": op, "kmsRequestId": rid or str(uuid.uuid4()),
            "kmsKeyArn": KEY_ARN, "kmsViaService": "s3", **extra}


def encrypt_body(plaintext: bytes = b"Hello World!", aad: bytes | None = b"project=nile", cdiv: bool = True,
                 rid: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"requestMetadata": md("Encrypt", rid), "plaintext": B64(plaintext),
                            "encryptionAlgorithm": "AES_GCM"}
    if aad is not None:
        body["additionalAuthenticatedData"] = B64(aad)
    if cdiv:
        body["ciphertextDataIntegrityValueAlgorithm"] = "SHA_256"
    return body


def decrypt_body(enc: dict[str, Any], aad: bytes | None = b"project=nile", rid: str | None = None,
                 **override: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"requestMetadata": md("Decrypt", rid), "encryptionAlgorithm": "AES_GCM",
                            "ciphertext": enc["ciphertext"], "initializationVector": enc["initializationVector"],
                            "authenticationTag": enc["authenticationTag"],
                            "ciphertextMetadata": enc["ciphertextMetadata"]}
    if aad is not None:
        body["additionalAuthenticatedData"] = B64(aad)
    body.update(override)
    return {k: v for k, v in body.items() if v is not None}


def audit(broker: Any) -> list[dict[str, Any]]:
    out = cli(broker, "audit", "tail", "--from", "0")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.decode().splitlines() if line.strip()]


def records(broker: Any, rid: str, count: int = 1) -> list[dict[str, Any]]:
    """The records of `rid`, once `count` of them are readable: Audit.Watch serves a record a
    moment after it is durable (its tile is written in the background), so poll for it."""
    deadline = time.monotonic() + 15
    while True:
        found = [r for r in audit(broker) if r.get("request_id") == rid]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def record(broker: Any, rid: str) -> dict[str, Any]:
    found = records(broker, rid)
    assert len(found) == 1, f"expected one record with request id {rid}, got {found}"
    r = found[0]
    assert r["surface"] == "xks"
    assert r["xks"]["kms_request_id"] == rid
    return r


def assert_error(got: tuple[int, dict[str, Any]], status: int, name: str) -> None:
    code, body = got
    assert (code, body.get("errorName")) == (status, name), got
    msg = body.get("errorMessage", "")
    assert len(msg) < 512 and all(0x20 <= ord(c) < 0x7F for c in msg), msg


@pytest.fixture(scope="module")
def xks(broker: Any) -> Xks:
    return Xks(broker)


def new_key(broker: Any, name: str, usage: str | None = None) -> None:
    args = ["keys", "create", name, "--purpose", "xks"]
    if usage:
        args += ["--label", f"xks-usage={usage}"]
    out = cli(broker, *args)
    assert out.returncode == 0, out.stderr


def test_metadata_encrypt_decrypt_disable_refused_enable_each_audited(own_broker: Any) -> None:
    x = Xks(own_broker)
    rid = str(uuid.uuid4())
    status, meta = x.call("keys/xks-demo/metadata", {"requestMetadata": md("DescribeKey", rid)})
    assert (status, meta) == (200, {"keySpec": "AES_256", "keyUsage": ["ENCRYPT", "DECRYPT"], "keyStatus": "ENABLED"})
    r = record(own_broker, rid)
    assert (r["op"], r["decision"], r["key_name"]) == ("xks_get_key_metadata", "allow", "xks-demo")
    assert r["xks"]["aws_principal_arn"] == PRINCIPAL and r["xks"]["kms_via_service"] == "s3"
    assert r["principal"]["subject"] == "xks:dev/xks" and r["xks"]["access_key_id"] == x.akid

    rid = str(uuid.uuid4())
    status, enc = x.call("keys/xks-demo/encrypt", encrypt_body(b"Hello World!", rid=rid))
    assert status == 200, enc
    ct, iv, tag, cm = (base64.b64decode(enc[k]) for k in
                       ("ciphertext", "initializationVector", "authenticationTag", "ciphertextMetadata"))
    assert (len(ct), len(iv), len(tag)) == (12, 12, 16) and len(cm) <= 20
    # The CDIV as the spec defines it, computed here independently (Appendix C).
    assert base64.b64decode(enc["ciphertextDataIntegrityValue"]) == hashlib.sha256(b"project=nile" + cm + iv + ct + tag).digest()
    r = record(own_broker, rid)
    assert (r["op"], r["decision"], r["key_version"]) == ("xks_encrypt", "allow", 1)
    assert r["xks"]["aad_len"] == len(b"project=nile")
    assert r["xks"]["aad_sha256"] == hashlib.sha256(b"project=nile").hexdigest()
    assert "Hello" not in json.dumps(r) and enc["ciphertext"] not in json.dumps(r)

    rid = str(uuid.uuid4())
    status, dec = x.call("keys/xks-demo/decrypt", decrypt_body(enc, rid=rid))
    assert (status, dec) == (200, {"plaintext": B64(b"Hello World!")})
    assert record(own_broker, rid)["op"] == "xks_decrypt"

    assert cli(own_broker, "keys", "disable", "xks-demo").returncode == 0
    status, meta = x.call("keys/xks-demo/metadata", {"requestMetadata": md("DescribeKey")})
    assert (status, meta["keyStatus"]) == (200, "DISABLED")
    rid = str(uuid.uuid4())
    assert_error(x.call("keys/xks-demo/encrypt", encrypt_body(rid=rid)), 400, "InvalidStateException")
    r = record(own_broker, rid)
    assert (r["decision"], r["outcome"]["code"]) == ("deny", "failed_precondition")
    assert_error(x.call("keys/xks-demo/decrypt", decrypt_body(enc)), 400, "InvalidStateException")

    assert cli(own_broker, "keys", "enable", "xks-demo").returncode == 0
    status, dec = x.call("keys/xks-demo/decrypt", decrypt_body(enc))
    assert (status, dec) == (200, {"plaintext": B64(b"Hello World!")})


def test_rotation_encrypts_with_the_newest_version_and_decrypts_both(broker: Any, xks: Xks) -> None:
    new_key(broker, "xks-rotated")
    _, v1 = xks.call("keys/xks-rotated/encrypt", encrypt_body(b"one"))
    assert cli(broker, "keys", "rotate", "xks-rotated").returncode == 0
    rid = str(uuid.uuid4())
    status, v2 = xks.call("keys/xks-rotated/encrypt", encrypt_body(b"two", rid=rid))
    assert status == 200 and record(broker, rid)["key_version"] == 2
    assert v1["ciphertextMetadata"] != v2["ciphertextMetadata"]
    for enc, pt in ((v1, b"one"), (v2, b"two")):
        assert xks.call("keys/xks-rotated/decrypt", decrypt_body(enc)) == (200, {"plaintext": B64(pt)})


def test_every_sigv4_failure_is_401_and_audited(broker: Any, xks: Xks) -> None:
    good = encrypt_body  # a fresh kmsRequestId per case
    real = botocore.auth.get_current_datetime

    def skewed(minutes: int) -> Callable[..., datetime.datetime]:
        return lambda *a, **k: real(*a, **k) + datetime.timedelta(minutes=minutes)

    cases: list[tuple[str, Callable[[], AWSPreparedRequest]]] = [
        ("wrong secret", lambda: xks.prepare("keys/xks-demo/encrypt", good(), secret="A" * 44)),
        ("unknown access key id", lambda: xks.prepare("keys/xks-demo/encrypt", good(), akid="ABCDEFGHIJKLMNOPQRSTUVWX")),
        ("service kms", lambda: xks.prepare("keys/xks-demo/encrypt", good(), service="kms")),
        ("service kms-xks", lambda: xks.prepare("keys/xks-demo/encrypt", good(), service="kms-xks")),
        ("another region", lambda: xks.prepare("keys/xks-demo/encrypt", good(), region="us-east-1")),
    ]
    for minutes in (6, -6):
        def prep(m: int = minutes) -> AWSPreparedRequest:
            with mock.patch("botocore.auth.get_current_datetime", skewed(m)):
                return xks.prepare("keys/xks-demo/encrypt", good())
        cases.append((f"skew {minutes} min", prep))

    def body_changed() -> AWSPreparedRequest:
        p = xks.prepare("keys/xks-demo/encrypt", good())
        p.body = p.body.replace(B64(b"Hello World!").encode(), B64(b"Hello World?").encode())
        return p

    def path_changed() -> AWSPreparedRequest:
        p = xks.prepare("keys/xks-demo/encrypt", good())
        p.url = p.url.replace("xks-demo", "xks-rotated")
        return p

    def no_authorization() -> AWSPreparedRequest:
        p = xks.prepare("keys/xks-demo/encrypt", good())
        del p.headers["Authorization"]
        return p

    def date_instead_of_x_amz_date() -> AWSPreparedRequest:
        p = xks.prepare("keys/xks-demo/encrypt", good())
        date = p.headers["X-Amz-Date"]
        del p.headers["X-Amz-Date"]
        p.headers["Date"] = date
        return p

    def malformed_authorization() -> AWSPreparedRequest:
        p = xks.prepare("keys/xks-demo/encrypt", good())
        auth = p.headers["Authorization"]
        del p.headers["Authorization"]
        p.headers["Authorization"] = auth.replace("Signature=", "Sig=")
        return p

    cases += [("body changed after signing", body_changed), ("path changed after signing", path_changed),
              ("no Authorization", no_authorization), ("Date, not X-Amz-Date", date_instead_of_x_amz_date),
              ("malformed Authorization", malformed_authorization)]
    for why, prep in cases:
        p = prep()
        rid = json.loads(p.body)["requestMetadata"]["kmsRequestId"]
        got = xks.send(p)
        assert got[1].get("errorName") == "AuthenticationFailedException", (why, got)
        assert_error(got, 401, "AuthenticationFailedException")
        r = record(broker, rid)
        assert (r["decision"], r["outcome"]["code"], r["principal"]) == ("deny", "unauthenticated", None), why
        assert r["xks"].get("access_key_id") is None, why

    # Within the window: accepted.
    for minutes in (4, -4):
        with mock.patch("botocore.auth.get_current_datetime", skewed(minutes)):
            p = xks.prepare("keys/xks-demo/encrypt", encrypt_body())
        assert xks.send(p)[0] == 200, minutes


def test_a_replayed_request_is_refused_and_audited(broker: Any, xks: Xks) -> None:
    p = xks.prepare("keys/xks-demo/encrypt", encrypt_body())
    assert xks.send(p)[0] == 200
    assert_error(xks.send(p), 401, "AuthenticationFailedException")
    rid = json.loads(p.body)["requestMetadata"]["kmsRequestId"]
    both = records(broker, rid, 2)
    assert [r["decision"] for r in both] == ["allow", "deny"]
    assert any("replayed" in reason for reason in both[1]["reasons"]), both[1]


def test_request_validation_follows_the_spec(broker: Any, xks: Xks) -> None:
    _, enc = xks.call("keys/xks-demo/encrypt", encrypt_body())
    ok = decrypt_body(enc)
    tag = base64.b64decode(enc["authenticationTag"])
    iv = bytearray(base64.b64decode(enc["initializationVector"]))
    iv[0] ^= 1
    cm = base64.b64decode(enc["ciphertextMetadata"])
    # The largest AAD the spec requires (8192 bytes) works; one more is beyond our maximum.
    assert xks.call("keys/xks-demo/encrypt", encrypt_body(aad=b"a" * 8192))[0] == 200
    assert_error(xks.call("keys/xks-demo/encrypt", encrypt_body(aad=b"a" * 8193)), 501, "UnsupportedOperationException")
    assert xks.call("keys/xks-demo/encrypt", encrypt_body(plaintext=os.urandom(4300)))[0] == 200
    assert_error(xks.call("keys/xks-demo/encrypt", encrypt_body(plaintext=b"p" * 8193)), 501, "UnsupportedOperationException")
    bad_b64 = dict(encrypt_body(), plaintext="not base64!")
    assert_error(xks.call("keys/xks-demo/encrypt", bad_b64), 400, "ValidationException")
    assert_error(xks.call("keys/xks-demo/encrypt", dict(encrypt_body(), encryptionAlgorithm="AES_CBC")), 400, "ValidationException")
    missing = encrypt_body()
    del missing["plaintext"]
    assert_error(xks.call("keys/xks-demo/encrypt", missing), 400, "ValidationException")
    assert_error(xks.call("keys/xks-demo/encrypt", {"plaintext": B64(b"x")}), 400, "ValidationException")
    assert_error(xks.call("keys/xks-demo/encrypt", b"{not json"), 400, "ValidationException")
    for why, body in [
        ("metadata of 21 bytes", dict(ok, ciphertextMetadata=B64(b"m" * 21))),
        ("tampered metadata", dict(ok, ciphertextMetadata=B64(cm[:-1] + bytes([cm[-1] ^ 1])))),
        ("no metadata", {k: v for k, v in ok.items() if k != "ciphertextMetadata"}),
        ("tag of 15 bytes", dict(ok, authenticationTag=B64(tag[:15]))),
        ("IV of 16 bytes", dict(ok, initializationVector=B64(bytes(16)))),
        ("IV flipped", dict(ok, initializationVector=B64(bytes(iv)))),
        ("other AAD", decrypt_body(enc, aad=b"project=nilE")),
        # The spec's own example: bytes moved from the AAD into the metadata.
        ("AAD moved into the metadata", dict(decrypt_body(enc, aad=b"project=nil"),
                                             ciphertextMetadata=B64(b"e" + cm))),
    ]:
        got = xks.call("keys/xks-demo/decrypt", body)
        assert got[1].get("errorName") == "InvalidCiphertextException", (why, got)
        assert_error(got, 400, "InvalidCiphertextException")
    # Unknown metadata fields and kmsOperation values are accepted (KMS may add them).
    body = encrypt_body()
    body["requestMetadata"].update(kmsOperation="SomethingNew", futureField="x")
    body["futureTopLevel"] = 1
    assert xks.call("keys/xks-demo/encrypt", body)[0] == 200


def test_keys_paths_and_methods(broker: Any, xks: Xks) -> None:
    meta = {"requestMetadata": md("DescribeKey")}
    assert_error(xks.call("keys/no-such-key/metadata", meta), 404, "KeyNotFoundException")
    assert_error(xks.call("keys/non_existing_key/metadata", meta), 404, "KeyNotFoundException")
    assert cli(broker, "keys", "create", "xks-seal-purpose", "--purpose", "seal").returncode == 0
    assert_error(xks.call("keys/xks-seal-purpose/metadata", meta), 404, "KeyNotFoundException")
    # An XKS key outside the store's `keys` patterns is not this store's.
    assert cli(broker, "keys", "create", "other-store-key", "--purpose", "xks").returncode == 0
    assert_error(xks.call("keys/other-store-key/metadata", meta), 404, "KeyNotFoundException")
    # XKS key names are keyIds: no '/'.
    out = cli(broker, "keys", "create", "xks/with-slash", "--purpose", "xks")
    assert out.returncode != 0 and b"keyId" in out.stderr, out.stderr
    assert_error(xks.call("health", meta, prefix="dev/xks/invalid"), 404, "InvalidUriPathException")
    assert_error(xks.call("keys/xks-demo/rotate", meta), 404, "InvalidUriPathException")
    p = xks.prepare("keys/xks-demo/metadata", meta)
    p.url += "?x=1"
    assert_error(xks.send(p), 404, "InvalidUriPathException")
    p = xks.prepare("keys/xks-demo/metadata", {"requestMetadata": md("DescribeKey")})
    assert_error(xks.send(p, method="GET"), 405, "ValidationException")
    # Refused at this edge, still a key operation: recorded.
    r = record(broker, json.loads(p.body)["requestMetadata"]["kmsRequestId"])
    assert (r["op"], r["decision"], r["outcome"]["code"], r["key_name"]) == (
        "xks_get_key_metadata", "deny", "invalid_argument", "xks-demo")
    # The conformance client's usage keys: metadata answers, the usage is enforced.
    usage = {"requestMetadata": md()}
    for key in ("xks-encrypt-only", "xks-decrypt-only", "xks-impotent"):
        assert xks.call(f"keys/{key}/metadata", usage)[0] == 200
    assert_error(xks.call("keys/xks-decrypt-only/encrypt", encrypt_body()), 400, "InvalidKeyUsageException")
    assert_error(xks.call("keys/xks-encrypt-only/encrypt", encrypt_body(cdiv=True)), 400, "InvalidKeyUsageException")
    assert xks.call("keys/xks-encrypt-only/encrypt", encrypt_body(cdiv=False))[0] == 200


def test_policy_deny_is_403_audited_and_health_is_not_policy_checked(own_broker: Any) -> None:
    x = Xks(own_broker)
    policy = own_broker.state / "dev-policy.cedar"
    policy.write_text(policy.read_text() + """
@id("xks-only-account-123456789012-via-s3")
forbid (principal, action in [Keybroker::Action::"XksEncrypt", Keybroker::Action::"XksDecrypt",
                              Keybroker::Action::"XksGetKeyMetadata"], resource)
when { context has xks && !(context.xks.aws_account == "123456789012" && context.xks.kms_via_service == "s3") };
""")
    own_broker.proc.send_signal(signal.SIGHUP)
    other = md(awsPrincipalArn="arn:aws:iam::999999999999:role/Mallory")
    deadline = time.monotonic() + 30
    while True:  # the reload is asynchronous: poll for its effect, not a fixed sleep
        rid = str(uuid.uuid4())
        got = x.call("keys/xks-demo/metadata", {"requestMetadata": {**other, "kmsRequestId": rid}})
        if got[0] == 403 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert_error(got, 403, "AccessDeniedException")
    r = record(own_broker, rid)
    assert r["decision"] == "deny" and "policy:xks-only-account-123456789012-via-s3" in r["reasons"], r
    assert x.call("keys/xks-demo/metadata", {"requestMetadata": md("DescribeKey")})[0] == 200
    via_ebs = md("Encrypt", kmsViaService="ebs")
    assert_error(x.call("keys/xks-demo/encrypt", dict(encrypt_body(), requestMetadata=via_ebs)), 403, "AccessDeniedException")
    # Health is authenticated but never policy-checked.
    status, health = x.call("health", {"requestMetadata": {"kmsRequestId": str(uuid.uuid4()), "kmsOperation": "KmsHealthCheck"}})
    assert status == 200 and health["ekmFleetDetails"][0]["healthStatus"] == "ACTIVE", health
    assert health["xksProxyFleetSize"] >= 1
    assert_error(x.call("health", {"requestMetadata": {}}), 400, "ValidationException")
    assert_error(x.call("health", {"requestMetadata": {"kmsRequestId": "r", "kmsOperation": "KmsHealthCheck"}},
                        secret="B" * 44), 401, "AuthenticationFailedException")


def restart(state: Path) -> None:
    """The harness waits for the env files a starting broker writes: remove the old ones."""
    for name in ("client.env", "xks.env"):
        (state / name).unlink()


def test_a_second_credential_set_works_and_a_removed_one_is_refused(tmp_path_factory: pytest.TempPathFactory) -> None:
    state = tmp_path_factory.mktemp("xks-rotation")
    with _dev_broker(state) as b:
        first = Xks(b)
        assert first.call("keys/xks-demo/metadata", {"requestMetadata": md()})[0] == 200
    # Add a second credential set, as an operator rotating KMS's credential does.
    config = state / "broker.toml"
    secret_file = state / "xks" / "second.secret"
    secret_file.write_text(B64(os.urandom(32)))
    secret_file.chmod(0o600)
    second_id = "SECONDCREDENTIAL2345ABCD"
    text = config.read_text()
    text = text.replace('secret_file = "xks/secret" }]',
                        f'secret_file = "xks/secret" }}, {{ access_key_id = "{second_id}", secret_file = "xks/second.secret" }}]')
    config.write_text(text)
    restart(state)
    with _dev_broker(state) as b:
        x = Xks(b)
        assert x.call("keys/xks-demo/metadata", {"requestMetadata": md()})[0] == 200
        rid = str(uuid.uuid4())
        got = x.call("keys/xks-demo/metadata", {"requestMetadata": md(rid=rid)}, akid=second_id,
                     secret=secret_file.read_text())
        assert got[0] == 200, got
        assert record(b, rid)["xks"]["access_key_id"] == second_id
    # Remove the first: its signatures are refused.
    config.write_text(text.replace(f'{{ access_key_id = "{first.akid}", secret_file = "xks/secret" }}, ', ""))
    restart(state)
    with _dev_broker(state) as b:
        x = Xks(b)
        assert_error(x.call("keys/xks-demo/metadata", {"requestMetadata": md()}, akid=first.akid, secret=first.secret),
                     401, "AuthenticationFailedException")


def test_mtls_a_call_without_the_kms_client_certificate_is_refused_and_audited(broker: Any, xks: Xks,
                                                                               tmp_path: Path) -> None:
    p = xks.prepare("keys/xks-demo/metadata", {"requestMetadata": md("DescribeKey")})
    rid = json.loads(p.body)["requestMetadata"]["kmsRequestId"]
    # Correctly signed, but no client certificate: the store requires one.
    assert_error(xks.send(p, ctx=xks.context(with_client_cert=False)), 401, "AuthenticationFailedException")
    r = record(broker, rid)
    assert r["decision"] == "deny" and any("client certificate" in x for x in r["reasons"]), r
    # A certificate from another CA ends the TLS handshake (no HTTP answer at all).
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cks.kms.eu-central-1.amazonaws.com")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("cks.kms.eu-central-1.amazonaws.com")]), False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    ctx = xks.context(with_client_cert=False)
    ctx.load_cert_chain(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        xks.send(xks.prepare("keys/xks-demo/metadata", {"requestMetadata": md("DescribeKey")}), ctx=ctx)
