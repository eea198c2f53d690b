"""Offline: every KBEF vector in clients/testdata opens (or fails) as vectors.json says."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from keybroker import FormatError, IntegrityError
from keybroker import format as fmt
from keybroker.stream import EncryptedReader, StaticKey

from conftest import REPO, TESTDATA

ERRORS = {"integrity": IntegrityError, "format": FormatError}


def _open(name: str, key_hex: str) -> EncryptedReader:
    return EncryptedReader(open(TESTDATA / name, "rb"), lambda _h: StaticKey(bytes.fromhex(key_hex)))


def test_every_vector_opens_or_fails_as_declared(vectors: dict) -> None:
    assert len(vectors["vectors"]) >= 20
    for v in vectors["vectors"]:
        if v["expect"] == "ok":
            with _open(v["file"], v["data_key"]) as r:
                assert r.read() == (TESTDATA / v["plaintext"]).read_bytes(), v["name"]
        else:
            with pytest.raises(ERRORS[v["expect"]]):
                with _open(v["file"], v["data_key"]) as r:
                    r.read()


def test_failed_segment_returns_no_partial_plaintext() -> None:
    # Segment 1 is tampered: segment 0's plaintext is returned, then the read fails, and the
    # caller's buffer holds nothing from segment 1.
    plain = (TESTDATA / "multi.plain").read_bytes()
    p = 4096 - 16
    key = bytes(range(32))
    with EncryptedReader(open(TESTDATA / "tampered-body-byte.kbef", "rb"), lambda _h: StaticKey(key)) as r:
        buf = bytearray(p)
        assert r.readinto(buf) == p and bytes(buf) == plain[:p]
        buf2 = bytearray(b"\xee" * p)
        with pytest.raises(IntegrityError):
            r.readinto(buf2)
        assert buf2 == bytearray(b"\xee" * p)


def test_random_access_reads_match_plaintext() -> None:
    plain = (TESTDATA / "multi.plain").read_bytes()
    with _open("multi.kbef", bytes(range(32)).hex()) as r:
        assert r.seek(0, 2) == len(plain)
        for off, n in [(0, 10), (4075, 10), (8160, 4080), (12300, 200), (5, 0), (len(plain) - 1, 5)]:
            r.seek(off)
            assert r.read(n) == plain[off : off + n]
        r.seek(-3, 2)
        assert r.read() == plain[-3:]


def test_generator_reproduces_the_committed_vectors(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(REPO / "clients/testdata/generate.py"), str(tmp_path)], check=True)
    for f in sorted(TESTDATA.iterdir()):
        assert (tmp_path / f.name).read_bytes() == f.read_bytes(), f.name


@pytest.mark.parametrize("n", [0, 1, 4079, 4080, 4081, 3 * 4080, 3 * 4080 + 1])
def test_round_trip_at_segment_boundaries(n: int) -> None:
    from keybroker.stream import EncryptedWriter

    h = fmt.encode_header(segment_size=4096, salt=b"s" * 32, nonce_prefix=b"p" * 7,
                          key_name="k", context={}, wrapped_key=b"w")
    data = bytes(i % 253 for i in range(n))
    sink = io.BytesIO()
    with EncryptedWriter(sink, h, bytearray(32), owns_sink=False) as w:
        for i in range(0, n, 1000):
            w.write(data[i : i + 1000])
    blob = sink.getvalue()
    segs = max(1, -(-n // 4080))
    assert len(blob) == h.length + n + 16 * segs
    with EncryptedReader(io.BytesIO(blob), lambda _h: StaticKey(bytes(32))) as r:
        assert r.read() == data


def test_writer_aborted_by_exception_leaves_a_file_that_does_not_open() -> None:
    from keybroker.stream import EncryptedWriter

    h = fmt.encode_header(segment_size=4096, salt=b"s" * 32, nonce_prefix=b"p" * 7,
                          key_name="k", context={}, wrapped_key=b"w")
    sink = io.BytesIO()
    sink.close = lambda: None  # type: ignore[method-assign]  # keep the bytes readable
    with pytest.raises(RuntimeError):
        with EncryptedWriter(sink, h, bytearray(32)) as w:
            w.write(b"x" * 10000)
            raise RuntimeError("training step failed")
    with pytest.raises(IntegrityError):
        EncryptedReader(io.BytesIO(sink.getvalue()), lambda _h: StaticKey(bytes(32))).read()


@pytest.mark.parametrize("field,kwargs", [
    ("segment size", {"segment_size": 4095}),
    ("segment size", {"segment_size": 16 * 1024 * 1024 + 1}),
    ("key name", {"key_name": "k" * 129}),
    ("context", {"context": {f"k{i}": "v" for i in range(17)}}),
    ("context key", {"context": {"": "v"}}),
    ("wrapped key", {"wrapped_key": b"w" * 1025}),
])
def test_header_limits_are_enforced_on_write(field: str, kwargs: dict) -> None:
    args = dict(segment_size=4096, salt=b"s" * 32, nonce_prefix=b"p" * 7, key_name="k",
                context={}, wrapped_key=b"w")
    args.update(kwargs)
    with pytest.raises(FormatError):
        fmt.encode_header(**args)  # type: ignore[arg-type]


def test_unsorted_context_in_header_is_rejected() -> None:
    h = fmt.encode_header(segment_size=4096, salt=b"s" * 32, nonce_prefix=b"p" * 7, key_name="k",
                          context={"a": "1", "b": "2"}, wrapped_key=b"w")
    raw = h.raw.replace(b"\x00\x01a\x00\x011\x00\x01b\x00\x012", b"\x00\x01b\x00\x012\x00\x01a\x00\x011")
    assert raw != h.raw
    with pytest.raises(FormatError, match="ascending"):
        fmt.parse_header(raw)
