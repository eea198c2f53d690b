"""File objects over KBEF files: `EncryptedWriter` ("wb") and `EncryptedReader` ("rb").

Both hold one segment of plaintext at a time, so memory stays bounded whatever the file size.
The reader returns a segment's plaintext only after its tag verified, and asks its key source
again when the data key's lease has ended (so a revoked lease fails the next segment read).
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO, Callable, Protocol

from . import format as fmt
from .errors import FormatError, IntegrityError


class LeasedKey(Protocol):
    """A data key under a lease: `key` is wiped by its owner when the lease ends."""

    key: bytearray

    def expired(self) -> bool:
        """True once the lease has ended (or is about to)."""
        ...


KeySource = Callable[[fmt.Header], LeasedKey]


class EncryptedWriter(io.RawIOBase):
    """Write-only, sequential: plaintext goes in, KBEF goes to `sink`.

    `close()` writes the final segment; leaving a `with` block on an exception aborts instead
    (no final segment is written, so the partial file never authenticates).
    """

    def __init__(self, sink: BinaryIO, header: fmt.Header, data_key: bytearray, *, owns_sink: bool = True) -> None:
        super().__init__()
        self._sink = sink
        self._owns_sink = owns_sink
        self._header = header
        self._cipher = fmt.SegmentCipher(fmt.derive_file_key(data_key, header), header)
        self._p = header.plaintext_segment_size
        self._buf = bytearray()
        self._index = 0
        self._written = 0
        self._sink.write(header.raw)

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("write to a closed EncryptedWriter")
        view = memoryview(b).cast("B")
        n = len(view)
        pos = 0
        while pos < n:
            if len(self._buf) == self._p:
                # A full buffer is only sealed once more data arrives: the last segment may be full.
                self._sink.write(self._cipher.seal(self._index, False, self._buf))
                self._index += 1
                self._buf.clear()
            take = min(self._p - len(self._buf), n - pos)
            self._buf += view[pos : pos + take]
            pos += take
        self._written += n
        return n

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._sink.write(self._cipher.seal(self._index, True, self._buf))
            self._sink.flush()
        finally:
            self._finish()

    def abort(self) -> None:
        """Drops the key and closes the sink without the final segment."""
        if not self.closed:
            self._finish()

    def _finish(self) -> None:
        self._cipher.wipe()
        self._buf[:] = bytes(len(self._buf))
        if self._owns_sink:
            self._sink.close()
        super().close()

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        if exc_type is not None:
            self.abort()
        else:
            self.close()


class EncryptedReader(io.RawIOBase):
    """Read-only, seekable: plaintext comes out of the KBEF file `source` (must be seekable).

    The final segment is authenticated on open, so `size` is trusted and truncation is caught
    before the first byte is returned.
    """

    def __init__(self, source: BinaryIO, key_source: KeySource, *, owns_source: bool = True) -> None:
        super().__init__()
        self._src = source
        self._owns = owns_source
        self._cipher: fmt.SegmentCipher | None = None
        self._lease: LeasedKey | None = None
        try:
            if not source.seekable():
                raise FormatError("the encrypted source must be seekable")
            end = source.seek(0, os.SEEK_END)
            source.seek(0)
            prefix = _read_exact(source, fmt.PREFIX_LEN)
            h = fmt.header_length(prefix)
            self.header = fmt.parse_header(prefix + _read_exact(source, h - fmt.PREFIX_LEN))
            self._key_source = key_source
            self._segments, self.size = fmt.body_layout(self.header, end - h)
            self._pos = 0
            self._seg_index = -1
            self._seg = b""
            self._load(self._segments - 1)
        except BaseException:
            self._wipe()
            if owns_source:
                source.close()
            raise

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence}")
        pos = base + offset
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("read from a closed EncryptedReader")
        out = memoryview(b).cast("B")
        done = 0
        p = self.header.plaintext_segment_size
        while done < len(out) and self._pos < self.size:
            i, off = divmod(self._pos, p)
            self._load(i)
            take = min(len(self._seg) - off, len(out) - done)
            out[done : done + take] = self._seg[off : off + take]
            done += take
            self._pos += take
        return done

    def readall(self) -> bytes:
        out = bytearray(max(self.size - self._pos, 0))
        n = self.readinto(out)
        return bytes(out[:n])

    def close(self) -> None:
        if self.closed:
            return
        self._wipe()
        self._seg = b""
        if self._owns:
            self._src.close()
        super().close()

    def _load(self, i: int) -> None:
        if i == self._seg_index:
            return
        cipher = self._current_cipher()
        s = self.header.segment_size
        self._src.seek(self.header.length + i * s)
        last = i == self._segments - 1
        ct = self._src.read(s)
        if len(ct) < (s if not last else fmt.TAG_LEN):
            raise IntegrityError(f"segment {i} truncated (file changed while open?)")
        # Assign only after authentication: a failed segment never becomes readable.
        plain = cipher.open(i, last, ct)
        self._seg_index, self._seg = i, plain

    def _current_cipher(self) -> fmt.SegmentCipher:
        if self._cipher is not None and self._lease is not None and not self._lease.expired():
            return self._cipher
        self._wipe()
        lease = self._key_source(self.header)
        self._lease = lease
        self._cipher = fmt.SegmentCipher(fmt.derive_file_key(lease.key, self.header), self.header)
        return self._cipher

    def _wipe(self) -> None:
        if self._cipher is not None:
            self._cipher.wipe()
        self._cipher = None
        self._lease = None


def _read_exact(src: BinaryIO, n: int) -> bytes:
    data = src.read(n)
    if data is None or len(data) != n:
        raise FormatError("file truncated inside the header")
    return bytes(data)


class StaticKey:
    """A LeasedKey that never expires: for offline use (test vectors) with a raw data key."""

    def __init__(self, key: bytes | bytearray) -> None:
        self.key = bytearray(key)

    def expired(self) -> bool:
        return False

    def wipe(self) -> None:
        for i in range(len(self.key)):
            self.key[i] = 0
