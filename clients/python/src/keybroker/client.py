"""`KeyBroker`: the gRPC client (TLS, bearer token re-read on rotation) and the lease cache.

Data keys live in `bytearray`s owned by `DataKey`; the cache wipes them when their lease ends
(checked on every use, with a refresh margin) and on `close()`. Python cannot promise that no
other copy exists (the gRPC message and the AES object hold their own), so the wipe is a
best effort that bounds how long *our* copies live.
"""

from __future__ import annotations

import os
import random
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Mapping

import grpc
from google.protobuf import duration_pb2

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import format as fmt
from . import release
from .errors import BrokerError, ContextMismatchError, KeyBrokerError
from .signing import SigningMixin
from .stream import EncryptedReader, EncryptedWriter
from .v1 import datakeys_pb2, datakeys_pb2_grpc

#: Codes worth a retry for any call: the broker was unreachable or draining, or a limit refused
#: the request before any work. DEADLINE_EXCEEDED is retried only for idempotent calls
#: (Decrypt): the broker may have done the work, and a second GenerateDataKey would mint (and
#: count) another key. Everything else (PERMISSION_DENIED for a revoked job, ...) is final.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
RETRYABLE_IF_IDEMPOTENT = RETRYABLE | {grpc.StatusCode.DEADLINE_EXCEEDED}
#: Metadata key of the attestation result sent with a key call.
ATTESTATION_HEADER = "x-keybroker-attestation"
#: Metadata key of the request id, sent on every call (the same on each retry of it) and named
#: by the broker's audit record of the call.
REQUEST_ID_HEADER = "x-request-id"


@dataclass(eq=False)
class DataKey:
    """A plaintext data key under a lease. `key` is overwritten by `wipe()`."""

    key: bytearray = field(repr=False)
    ciphertext: bytes
    key_name: str
    key_version: int
    lease_id: str
    expires_at: float  # on the client's monotonic clock
    _clock: Callable[[], float] = field(repr=False, default=time.monotonic)
    _margin: float = field(repr=False, default=0.0)
    _wiped: bool = field(repr=False, default=False)
    #: With a recipient: the sealed key as the broker sent it (what `key` was opened from).
    ciphertext_for_recipient: bytes = field(repr=False, default=b"")
    #: The `x-request-id` of the call that released it (its audit record's `request_id`).
    request_id: str = ""

    def expired(self) -> bool:
        """True once the lease (less the refresh margin) has ended; wipes the key then."""
        if self._clock() >= self.expires_at - self._margin:
            self.wipe()
            return True
        return self._wiped

    def wipe(self) -> None:
        """Overwrites the key bytes."""
        self._wiped = True
        for i in range(len(self.key)):
            self.key[i] = 0


class _TokenFile:
    """Re-reads the token when the file changes (kubelet swaps projected tokens by symlink)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._stamp: tuple[int, int, int] | None = None
        self._token = ""

    def get(self) -> str:
        st = os.stat(self._path)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            with open(self._path, encoding="utf-8") as f:
                token = f.read().strip()
            if not token:
                raise KeyBrokerError(f"token file {self._path} is empty")
            self._token, self._stamp = token, stamp
        return self._token


class KeyBroker(SigningMixin):
    """Client of a keybroker's DataKeys service.

    `endpoint` is `https://host:port` (TLS; `ca` is the CA bundle to trust, `cert`/`key` a
    client certificate for mTLS) or `http://host:port` (plain, for tests only). The bearer token
    comes from `token_file` (re-read when it changes) or `token`.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        token_file: str | None = None,
        token: str | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        timeout: float = 30.0,
        lease_ttl: float | None = None,
        refresh_margin: float = 0.1,
        retries: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if endpoint.startswith("https://"):
            target = endpoint[len("https://") :]
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(ca) if ca else None,
                private_key=_read(key) if key else None,
                certificate_chain=_read(cert) if cert else None,
            )
            self._channel = grpc.secure_channel(target, creds)
        elif endpoint.startswith("http://"):
            self._channel = grpc.insecure_channel(endpoint[len("http://") :])
        else:
            raise KeyBrokerError(f"endpoint must start with https:// or http://: {endpoint}")
        self._stub = datakeys_pb2_grpc.DataKeysStub(self._channel)
        self._token_file = _TokenFile(token_file) if token_file else None
        self._token = token
        self._timeout = timeout
        self._ttl = lease_ttl
        self._margin = refresh_margin
        self._retries = max(1, retries)
        self._clock = clock
        self._cache: dict[tuple[bytes, tuple[tuple[str, str], ...]], DataKey] = {}
        self._lock = threading.Lock()
        #: Number of RPCs sent, for tests and metrics.
        self.calls = {"GenerateDataKey": 0, "Decrypt": 0}

    @classmethod
    def from_env(cls, **kwargs: Any) -> "KeyBroker":
        """Builds a client from KEYBROKER_ENDPOINT / KEYBROKER_CA / KEYBROKER_TOKEN_FILE."""
        env = os.environ
        return cls(
            env["KEYBROKER_ENDPOINT"],
            token_file=env.get("KEYBROKER_TOKEN_FILE"),
            ca=env.get("KEYBROKER_CA"),
            cert=env.get("KEYBROKER_CERT"),
            key=env.get("KEYBROKER_KEY"),
            **kwargs,
        )

    # ---- RPCs -------------------------------------------------------------------------------

    def get_attestation_nonce(self) -> str:
        """A fresh one-shot nonce bound to this client's identity: put it in the TEE's runtime
        data (`nonce`), then send the verifier's result as `attestation=` with one key call."""
        resp = self._call("GetAttestationNonce", self._stub.GetAttestationNonce,
                          datakeys_pb2.GetAttestationNonceRequest(), idempotent=True)
        return str(resp.nonce)

    def generate_data_key(
        self, key: str, context: Mapping[str, str], *, ttl: float | None = None,
        attestation: str | None = None, recipient_private_key: X25519PrivateKey | None = None,
    ) -> DataKey:
        """A fresh data key for `key` bound to `context`; the caller owns (and should wipe) it.

        `attestation` is an attestation result (sent as metadata `x-keybroker-attestation`; its
        nonce from `get_attestation_nonce()`, good for one call, so the call is not retried).
        With `recipient_private_key` (an X25519 key the result binds) the broker seals the key
        to it by HPKE and it is opened here; the response then carries no plaintext."""
        req = datakeys_pb2.GenerateDataKeyRequest(
            key=key, context=dict(context), ttl=self._duration(ttl),
            recipient=_recipient(recipient_private_key),
        )
        start = self._clock()
        resp, rid = self._call_with_id("GenerateDataKey", self._stub.GenerateDataKey, req, attestation=attestation)
        plaintext, sealed = _released(resp, recipient_private_key, "GenerateDataKey", key)
        dk = self._leased(plaintext, resp.ciphertext, key, resp.key_version, resp.lease, start)
        dk.ciphertext_for_recipient = sealed
        dk.request_id = rid
        _wipe(plaintext)
        return dk

    def decrypt(
        self, ciphertext: bytes, context: Mapping[str, str], *, ttl: float | None = None,
        attestation: str | None = None, recipient_private_key: X25519PrivateKey | None = None,
    ) -> DataKey:
        """Opens a wrapped data key, using the lease cache: the broker is asked only when no
        unexpired key for (ciphertext, context) is held. An attested call (`attestation`,
        `recipient_private_key` as for `generate_data_key`) always asks the broker and is not
        cached."""
        attested = attestation is not None or recipient_private_key is not None
        ck = (bytes(ciphertext), tuple(sorted(context.items())))
        if not attested:
            with self._lock:
                self._sweep()
                hit = self._cache.get(ck)
                if hit is not None and not hit.expired():
                    return hit
        req = datakeys_pb2.DecryptRequest(
            ciphertext=ciphertext, context=dict(context), ttl=self._duration(ttl),
            recipient=_recipient(recipient_private_key),
        )
        start = self._clock()
        resp, rid = self._call_with_id("Decrypt", self._stub.Decrypt, req, idempotent=True, attestation=attestation)
        plaintext, sealed = _released(resp, recipient_private_key, "Decrypt", resp.key)
        dk = self._leased(plaintext, ciphertext, resp.key, resp.key_version, resp.lease, start)
        dk.ciphertext_for_recipient = sealed
        dk.request_id = rid
        _wipe(plaintext)
        if attested:
            return dk
        with self._lock:
            old = self._cache.pop(ck, None)
            if old is not None and old is not dk:
                old.wipe()
            self._cache[ck] = dk
        return dk

    # ---- files ------------------------------------------------------------------------------

    def open_encrypted(
        self,
        path: str | os.PathLike[str],
        mode: str = "rb",
        *,
        key: str | None = None,
        context: Mapping[str, str] | None = None,
        segment_size: int = fmt.DEFAULT_SEGMENT_SIZE,
    ) -> EncryptedReader | EncryptedWriter:
        """Opens a KBEF file. "wb" needs `key` and `context` (one data key per file); "rb"
        checks `context` and `key`, when given, against the file's header before asking the
        broker."""
        if mode == "wb":
            if key is None or context is None:
                raise KeyBrokerError('open_encrypted(..., "wb") needs key= and context=')
            return self.writer(open(path, "wb"), key=key, context=context, segment_size=segment_size)
        if mode == "rb":
            return self.reader(open(path, "rb"), key=key, context=context)
        raise KeyBrokerError(f'mode must be "rb" or "wb", not {mode!r}')

    def writer(
        self, sink: BinaryIO, *, key: str, context: Mapping[str, str],
        segment_size: int = fmt.DEFAULT_SEGMENT_SIZE, owns_sink: bool = True,
    ) -> EncryptedWriter:
        """An EncryptedWriter on an open binary sink."""
        try:
            dk = self.generate_data_key(key, context)
            try:
                header = fmt.encode_header(
                    segment_size=segment_size, salt=secrets.token_bytes(fmt.SALT_LEN),
                    nonce_prefix=secrets.token_bytes(fmt.NONCE_PREFIX_LEN), key_name=key,
                    context=context, wrapped_key=dk.ciphertext,
                )
                return EncryptedWriter(sink, header, dk.key, owns_sink=owns_sink)
            finally:
                dk.wipe()  # the file key is derived; the data key is not needed any more
        except BaseException:
            if owns_sink:
                sink.close()
            raise

    def reader(
        self, source: BinaryIO, *, key: str | None = None, context: Mapping[str, str] | None = None,
        owns_source: bool = True,
    ) -> EncryptedReader:
        """An EncryptedReader on an open, seekable binary source."""

        def key_source(header: fmt.Header) -> DataKey:
            if key is not None and header.key_name != key:
                raise ContextMismatchError(f"file is encrypted under key {header.key_name!r}, expected {key!r}")
            if context is not None and dict(header.context) != dict(context):
                raise ContextMismatchError("file's encryption context differs from the expected one")
            dk = self.decrypt(header.wrapped_key, header.context)
            if dk.key_name != header.key_name:
                raise ContextMismatchError("broker opened the data key under another key than the header names")
            return dk

        return EncryptedReader(source, key_source, owns_source=owns_source)

    def close(self) -> None:
        """Wipes every cached data key and closes the channel."""
        with self._lock:
            for dk in self._cache.values():
                dk.wipe()
            self._cache.clear()
        self._channel.close()

    def __enter__(self) -> "KeyBroker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals --------------------------------------------------------------------------

    def _sweep(self) -> None:
        for ck in [ck for ck, dk in self._cache.items() if dk.expired()]:
            self._cache.pop(ck).wipe()

    def _duration(self, ttl: float | None) -> duration_pb2.Duration | None:
        ttl = ttl if ttl is not None else self._ttl
        if ttl is None:
            return None
        d = duration_pb2.Duration()
        d.FromNanoseconds(int(ttl * 1e9))
        return d

    def _leased(self, plaintext: bytes | bytearray, ciphertext: bytes, name: str, version: int, lease: Any, start: float) -> DataKey:
        if len(plaintext) != fmt.DATA_KEY_LEN:
            raise KeyBrokerError("broker returned a data key of the wrong length")
        ttl = float(lease.ttl_seconds)
        return DataKey(
            key=bytearray(plaintext), ciphertext=bytes(ciphertext), key_name=name, key_version=version,
            lease_id=lease.lease_id, expires_at=start + ttl, _clock=self._clock,
            _margin=min(self._margin * ttl, 30.0),
        )

    def _call(self, name: str, method: Any, req: Any, *, idempotent: bool = False) -> Any:
        return self._call_with_id(name, method, req, idempotent=idempotent)[0]

    def _call_with_id(self, name: str, method: Any, req: Any, *, idempotent: bool = False,
                      attestation: str | None = None) -> tuple[Any, str]:
        """Sends `req` (retrying what may be retried) and returns (response, request id)."""
        retryable = RETRYABLE_IF_IDEMPOTENT if idempotent else RETRYABLE
        # An attestation result's nonce is accepted once: a repeat could only be refused.
        retries = 1 if attestation is not None else self._retries
        ceiling = 0.1
        rid = str(uuid.uuid4())
        for attempt in range(retries):
            metadata = [(REQUEST_ID_HEADER, rid)]
            tok = self._token_file.get() if self._token_file else self._token
            if tok:
                metadata.append(("authorization", f"Bearer {tok}"))
            if attestation is not None:
                if not attestation.strip():
                    raise KeyBrokerError("attestation token is empty")
                metadata.append((ATTESTATION_HEADER, attestation.strip()))
            self.calls[name] = self.calls.get(name, 0) + 1
            try:
                return method(req, metadata=metadata, timeout=self._timeout), rid
            except grpc.RpcError as e:
                code = e.code()  # type: ignore[attr-defined]
                if code in retryable and attempt + 1 < retries:
                    # Exponential backoff with full jitter (not synchronisation: a pause before
                    # the retry, so clients that failed together do not retry together).
                    time.sleep(random.uniform(0, ceiling))
                    ceiling = min(ceiling * 2, 2.0)
                    continue
                raise BrokerError(code.name if code else "UNKNOWN", e.details() or "", rid) from None  # type: ignore[attr-defined]
        raise BrokerError("UNAVAILABLE", "retries exhausted", rid)


def _recipient(key: X25519PrivateKey | None) -> datakeys_pb2.Recipient | None:
    if key is None:
        return None
    return datakeys_pb2.Recipient(
        suite=release.SUITE_X25519_SHA256_AES256GCM, public_key=release.public_key_bytes(key),
    )


def _released(resp: Any, recipient: X25519PrivateKey | None, op: str, key_name: str) -> tuple[bytes | bytearray, bytes]:
    """(plaintext, sealed key) of a response, checked against the request: with a recipient
    the key must come sealed (and is opened here), never in clear."""
    sealed = bytes(resp.ciphertext_for_recipient)
    if recipient is None:
        if sealed:
            raise KeyBrokerError("broker sent a sealed key without a recipient")
        return resp.plaintext, b""
    if resp.plaintext:
        raise KeyBrokerError("broker sent the key in clear despite a recipient")
    if resp.recipient_suite != release.SUITE_X25519_SHA256_AES256GCM:
        raise KeyBrokerError("broker sealed the key with another HPKE suite")
    info = release.info(op, key_name, resp.key_version, resp.lease.lease_id)
    return release.open_release(sealed, recipient, info), sealed


def _wipe(buf: bytes | bytearray) -> None:
    """Overwrites our copy of an opened key (bytes from the broker cannot be overwritten)."""
    if isinstance(buf, bytearray):
        for i in range(len(buf)):
            buf[i] = 0


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
