"""KBEF v1, the encrypted file format (docs/file-format.md): header codec and segment crypto.

Pure: no I/O, no broker. The streaming file objects (`keybroker.stream`) and the test vectors
build on it. Every length read from a file is checked against an explicit limit before use.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import FormatError, IntegrityError

MAGIC = b"KBEF"
VERSION = 1
TAG_LEN = 16
NONCE_PREFIX_LEN = 7
SALT_LEN = 32
DATA_KEY_LEN = 32
MIN_SEGMENT_SIZE = 4096
MAX_SEGMENT_SIZE = 16 * 1024 * 1024
DEFAULT_SEGMENT_SIZE = 1024 * 1024
MAX_HEADER_LEN = 16384
MIN_HEADER_LEN = 58
MAX_KEY_NAME_LEN = 128
MAX_CONTEXT_PAIRS = 16
MAX_CONTEXT_KEY_LEN = 256
MAX_CONTEXT_VALUE_LEN = 256
MAX_WRAPPED_KEY_LEN = 1024
MAX_SEGMENTS = 1 << 32
#: Bytes of the fixed prefix a reader needs before it knows the header length.
PREFIX_LEN = 9


@dataclass(frozen=True)
class Header:
    """A parsed (or to-be-written) KBEF header. `raw` is its exact encoding."""

    segment_size: int
    salt: bytes
    nonce_prefix: bytes
    key_name: str
    context: Mapping[str, str]
    wrapped_key: bytes
    raw: bytes = field(default=b"", repr=False, compare=False)

    @property
    def plaintext_segment_size(self) -> int:
        """Plaintext bytes in every segment but the last."""
        return self.segment_size - TAG_LEN

    @property
    def length(self) -> int:
        """Header length H: the body starts at this offset."""
        return len(self.raw)


def _check_context(context: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    if len(context) > MAX_CONTEXT_PAIRS:
        raise FormatError(f"context has {len(context)} pairs, at most {MAX_CONTEXT_PAIRS}")
    pairs = []
    for k, v in context.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise FormatError("context keys and values must be str")
        kb, vb = k.encode(), v.encode()
        if not 1 <= len(kb) <= MAX_CONTEXT_KEY_LEN:
            raise FormatError(f"context key length {len(kb)} not in 1..={MAX_CONTEXT_KEY_LEN}")
        if len(vb) > MAX_CONTEXT_VALUE_LEN:
            raise FormatError(f"context value length {len(vb)} over {MAX_CONTEXT_VALUE_LEN}")
        pairs.append((kb, vb))
    pairs.sort()
    return pairs


def encode_header(
    *,
    segment_size: int,
    salt: bytes,
    nonce_prefix: bytes,
    key_name: str,
    context: Mapping[str, str],
    wrapped_key: bytes,
) -> Header:
    """Encodes a header (context sorted canonically) and returns it with `raw` filled in.

    Raises FormatError when a field is out of its limits.
    """
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise FormatError(
            f"segment size {segment_size} not in {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE}"
        )
    if len(salt) != SALT_LEN or len(nonce_prefix) != NONCE_PREFIX_LEN:
        raise FormatError("salt must be 32 bytes and nonce prefix 7 bytes")
    name = key_name.encode()
    if not 1 <= len(name) <= MAX_KEY_NAME_LEN:
        raise FormatError(f"key name length {len(name)} not in 1..={MAX_KEY_NAME_LEN}")
    if not 1 <= len(wrapped_key) <= MAX_WRAPPED_KEY_LEN:
        raise FormatError(f"wrapped key length {len(wrapped_key)} not in 1..={MAX_WRAPPED_KEY_LEN}")
    pairs = _check_context(context)
    body = bytearray()
    body += struct.pack(">I", segment_size) + salt + nonce_prefix
    body += struct.pack(">B", len(name)) + name
    body += struct.pack(">B", len(pairs))
    for kb, vb in pairs:
        body += struct.pack(">H", len(kb)) + kb + struct.pack(">H", len(vb)) + vb
    body += struct.pack(">H", len(wrapped_key)) + wrapped_key
    total = PREFIX_LEN + len(body)
    raw = MAGIC + bytes([VERSION]) + struct.pack(">I", total) + bytes(body)
    return Header(
        segment_size=segment_size,
        salt=bytes(salt),
        nonce_prefix=bytes(nonce_prefix),
        key_name=key_name,
        context=dict(context),
        wrapped_key=bytes(wrapped_key),
        raw=raw,
    )


def header_length(prefix: bytes) -> int:
    """From the first PREFIX_LEN bytes: checks magic and version, returns H (bounded)."""
    if len(prefix) < PREFIX_LEN:
        raise FormatError("file too short for a KBEF header")
    if prefix[:4] != MAGIC:
        raise FormatError("not a KBEF file (bad magic)")
    if prefix[4] != VERSION:
        raise FormatError(f"unsupported KBEF version {prefix[4]}")
    (total,) = struct.unpack(">I", prefix[5:9])
    if not MIN_HEADER_LEN <= total <= MAX_HEADER_LEN:
        raise FormatError(f"header length {total} not in {MIN_HEADER_LEN}..={MAX_HEADER_LEN}")
    return int(total)


class _Cursor:
    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise FormatError(f"header truncated in {what}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int(struct.unpack(">H", self.take(2, what))[0])

    def utf8(self, n: int, what: str) -> str:
        try:
            return self.take(n, what).decode()
        except UnicodeDecodeError:
            raise FormatError(f"{what} is not UTF-8") from None


def parse_header(raw: bytes) -> Header:
    """Parses a complete header (exactly H bytes). Raises FormatError on any violation."""
    total = header_length(raw[:PREFIX_LEN])
    if len(raw) != total:
        raise FormatError("header truncated")
    c = _Cursor(raw, PREFIX_LEN)
    (segment_size,) = struct.unpack(">I", c.take(4, "segment size"))
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise FormatError(f"segment size {segment_size} out of bounds")
    salt = c.take(SALT_LEN, "salt")
    prefix = c.take(NONCE_PREFIX_LEN, "nonce prefix")
    n = c.u8("key name length")
    if not 1 <= n <= MAX_KEY_NAME_LEN:
        raise FormatError(f"key name length {n} out of bounds")
    key_name = c.utf8(n, "key name")
    count = c.u8("context count")
    if count > MAX_CONTEXT_PAIRS:
        raise FormatError(f"context has {count} pairs, at most {MAX_CONTEXT_PAIRS}")
    context: dict[str, str] = {}
    last: bytes | None = None
    for _ in range(count):
        klen = c.u16("context key length")
        if not 1 <= klen <= MAX_CONTEXT_KEY_LEN:
            raise FormatError(f"context key length {klen} out of bounds")
        kb = c.take(klen, "context key")
        if last is not None and kb <= last:
            raise FormatError("context keys not strictly ascending")
        last = kb
        vlen = c.u16("context value length")
        if vlen > MAX_CONTEXT_VALUE_LEN:
            raise FormatError(f"context value length {vlen} out of bounds")
        try:
            context[kb.decode()] = c.utf8(vlen, "context value")
        except UnicodeDecodeError:
            raise FormatError("context key is not UTF-8") from None
    w = c.u16("wrapped key length")
    if not 1 <= w <= MAX_WRAPPED_KEY_LEN:
        raise FormatError(f"wrapped key length {w} out of bounds")
    wrapped = c.take(w, "wrapped key")
    if c.pos != total:
        raise FormatError("header has trailing bytes")
    return Header(segment_size, salt, prefix, key_name, context, wrapped, raw=bytes(raw))


def derive_file_key(data_key: bytes | bytearray, header: Header) -> bytearray:
    """K = HKDF-SHA256(ikm = data key, salt, info = header bytes), in a zeroizable buffer."""
    if len(data_key) != DATA_KEY_LEN:
        raise FormatError("data key must be 32 bytes")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=header.salt, info=header.raw)
    return bytearray(hkdf.derive(bytes(data_key)))


def nonce(prefix: bytes, index: int, last: bool) -> bytes:
    """prefix (7) ‖ BE32(index) ‖ last flag (1)."""
    if not 0 <= index < MAX_SEGMENTS:
        raise FormatError("too many segments")
    return prefix + struct.pack(">IB", index, 1 if last else 0)


class SegmentCipher:
    """AES-256-GCM over the segments of one file. `wipe()` drops the key."""

    def __init__(self, file_key: bytearray, header: Header) -> None:
        self._key = file_key
        self._aead: AESGCM | None = AESGCM(bytes(file_key))
        self._header = header

    def seal(self, index: int, last: bool, plaintext: bytes | memoryview) -> bytes:
        """Encrypts one segment's plaintext (at most P bytes)."""
        if len(plaintext) > self._header.plaintext_segment_size:
            raise FormatError("segment plaintext too long")
        return self._require().encrypt(nonce(self._header.nonce_prefix, index, last), bytes(plaintext), None)

    def open(self, index: int, last: bool, ciphertext: bytes | memoryview) -> bytes:
        """Decrypts one segment; IntegrityError (and no plaintext) when its tag fails."""
        if len(ciphertext) < TAG_LEN or len(ciphertext) > self._header.segment_size:
            raise IntegrityError(f"segment {index} has an impossible length")
        try:
            return self._require().decrypt(
                nonce(self._header.nonce_prefix, index, last), bytes(ciphertext), None
            )
        except InvalidTag:
            raise IntegrityError(
                f"segment {index} failed authentication (tampered, truncated, reordered, "
                "from another file, or wrong key/context)"
            ) from None

    def wipe(self) -> None:
        """Overwrites the file key. The AESGCM object's own copy is dropped with it."""
        for i in range(len(self._key)):
            self._key[i] = 0
        self._aead = None

    def _require(self) -> AESGCM:
        if self._aead is None:
            raise IntegrityError("file key was wiped (file closed or lease ended)")
        return self._aead


def body_layout(header: Header, body_len: int) -> tuple[int, int]:
    """(segment count, plaintext length) for a body of `body_len` bytes; FormatError if impossible."""
    s = header.segment_size
    if body_len < TAG_LEN:
        raise IntegrityError("file truncated: no final segment")
    n = -(-body_len // s)
    last_len = body_len - (n - 1) * s
    if last_len < TAG_LEN:
        raise IntegrityError("file truncated inside a segment")
    if n > 1 and last_len == TAG_LEN:
        raise IntegrityError("empty final segment after a non-empty one (appended data)")
    if n > MAX_SEGMENTS:
        raise FormatError("too many segments")
    return n, (n - 1) * header.plaintext_segment_size + last_len - TAG_LEN
