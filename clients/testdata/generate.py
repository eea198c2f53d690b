#!/usr/bin/env python3
"""Generates the KBEF test vectors in clients/testdata/kbef/ (see README.md).

Deterministic: fixed data keys, salts, nonce prefixes and plaintexts, so running it again gives
byte-identical files (the Python tests check that). Needs the `keybroker` package installed
(`target/pyenv/bin/python clients/testdata/generate.py [OUT_DIR]`).
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

from keybroker import format as fmt
from keybroker.stream import EncryptedWriter

SEG = 4096  # the minimum segment size keeps the vectors small
P = SEG - fmt.TAG_LEN
KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))
CONTEXT = {"dataset": "demo", "split": "train"}
# Stand-ins for the broker's envelopes: offline vectors carry the raw data key instead.
WRAPPED_A = b"KB\x01" + b"wrapped-data-key-a".ljust(61, b".")
WRAPPED_B = b"KB\x01" + b"wrapped-data-key-b".ljust(61, b".")


def plaintext(n: int, seed: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d:%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:n])


def header(salt_byte: int, prefix_byte: int, context: dict[str, str], wrapped: bytes) -> fmt.Header:
    return fmt.encode_header(
        segment_size=SEG, salt=bytes([salt_byte]) * fmt.SALT_LEN,
        nonce_prefix=bytes([prefix_byte]) * fmt.NONCE_PREFIX_LEN,
        key_name="datasets/demo", context=context, wrapped_key=wrapped,
    )


def encrypt(h: fmt.Header, key: bytes, data: bytes) -> bytes:
    sink = io.BytesIO()
    w = EncryptedWriter(sink, h, bytearray(key), owns_sink=False)
    w.write(data)
    w.close()
    return sink.getvalue()


def segments(blob: bytes, hlen: int) -> list[bytes]:
    body = blob[hlen:]
    return [body[i : i + SEG] for i in range(0, len(body), SEG)]


def build() -> dict[str, tuple[bytes, dict[str, object]]]:
    files: dict[str, tuple[bytes, dict[str, object]]] = {}

    def ok(name: str, blob: bytes, key: bytes, plain: bytes, note: str) -> None:
        (OUT_PLAIN[name]) = plain
        files[name] = (blob, {"data_key": key.hex(), "expect": "ok", "plaintext": f"{name}.plain", "note": note})

    def bad(name: str, blob: bytes, key: bytes, error: str, note: str) -> None:
        files[name] = (blob, {"data_key": key.hex(), "expect": error, "note": note})

    ha = header(0x11, 0x22, CONTEXT, WRAPPED_A)
    hb = header(0x33, 0x44, CONTEXT, WRAPPED_B)
    ok("empty", encrypt(ha, KEY_A, b""), KEY_A, b"", "empty plaintext: one 16-byte final segment")
    ok("small", encrypt(ha, KEY_A, plaintext(100, 1)), KEY_A, plaintext(100, 1), "one short final segment")
    ok("exact", encrypt(ha, KEY_A, plaintext(2 * P, 2)), KEY_A, plaintext(2 * P, 2),
       "two full segments, the second is final (no empty trailing segment)")
    multi_plain = plaintext(3 * P + 123, 3)
    multi = encrypt(ha, KEY_A, multi_plain)
    ok("multi", multi, KEY_A, multi_plain, "three full segments and a 123-byte final one")
    other = encrypt(hb, KEY_B, plaintext(3 * P + 123, 4))
    ok("other", other, KEY_B, plaintext(3 * P + 123, 4), "another file of the same shape, other key/salt/prefix")
    ha_same_key = header(0x55, 0x66, CONTEXT, WRAPPED_A)
    other_same_key = encrypt(ha_same_key, KEY_A, plaintext(3 * P + 123, 5))
    ok("other-same-key", other_same_key, KEY_A, plaintext(3 * P + 123, 5),
       "same data key as multi, other salt and prefix (a reused data key)")

    hl = ha.length
    segs = segments(multi, hl)
    head = multi[:hl]
    flip_h = bytearray(multi); flip_h[60] ^= 0x01
    bad("tampered-header-byte", bytes(flip_h), KEY_A, "integrity", "one bit of the key name flipped")
    flip_b = bytearray(multi); flip_b[hl + SEG + 100] ^= 0x80
    bad("tampered-body-byte", bytes(flip_b), KEY_A, "integrity", "one bit of segment 1 flipped")
    flip_t = bytearray(multi); flip_t[-1] ^= 0x01
    bad("tampered-tag", bytes(flip_t), KEY_A, "integrity", "one bit of the final tag flipped")
    bad("truncated-at-boundary", head + b"".join(segs[:3]), KEY_A, "integrity",
        "final segment dropped: segment 2 was sealed as non-final")
    bad("truncated-mid-segment", multi[:-70], KEY_A, "integrity", "70 bytes cut from the final segment")
    bad("truncated-in-tag", head + b"".join(segs[:3]) + segs[3][:10], KEY_A, "integrity",
        "final segment shorter than a tag")
    bad("segments-swapped", head + segs[1] + segs[0] + segs[2] + segs[3], KEY_A, "integrity",
        "segments 0 and 1 swapped")
    osegs = segments(other_same_key, hl)
    bad("segment-from-other-file", head + segs[0] + osegs[1] + segs[2] + segs[3], KEY_A, "integrity",
        "segment 1 taken from other-same-key (same data key, other salt/prefix)")
    bad("header-from-other-file", other_same_key[:hl] + multi[hl:], KEY_A, "integrity",
        "header of other-same-key on the body of multi (same data key)")
    bad("appended-bytes", multi + b"\x00" * 20, KEY_A, "integrity", "20 zero bytes appended")
    bad("appended-segment", multi + segs[3], KEY_A, "integrity", "the final segment repeated at the end")
    bad("appended-empty-final", encrypt(ha, KEY_A, plaintext(P, 6))[: hl + SEG] + segs[3][:16], KEY_A,
        "integrity", "a 16-byte segment after a full final one")
    wrong_ctx = header(0x11, 0x22, {"dataset": "demo", "split": "test"}, WRAPPED_A)
    bad("wrong-context", wrong_ctx.raw + multi[hl:], KEY_A, "integrity",
        "context split=train re-encoded as split=test (a well-formed header)")
    bad("wrong-key", multi, KEY_B, "integrity", "the right file opened with another data key")
    bad("bad-magic", b"KBEX" + multi[4:], KEY_A, "format", "magic changed")
    bad("bad-version", multi[:4] + b"\x02" + multi[5:], KEY_A, "format", "version 2")
    bad("header-length-too-large", multi[:5] + (fmt.MAX_HEADER_LEN + 1).to_bytes(4, "big") + multi[9:],
        KEY_A, "format", "header length over the limit")
    bad("segment-size-too-large", multi[:9] + (fmt.MAX_SEGMENT_SIZE + 1).to_bytes(4, "big") + multi[13:],
        KEY_A, "format", "segment size over the limit")
    bad("header-truncated", multi[:40], KEY_A, "format", "file ends inside the header")
    return files


OUT_PLAIN: dict[str, bytes] = {}


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "kbef"
    out.mkdir(parents=True, exist_ok=True)
    files = build()
    manifest = []
    for name, (blob, meta) in files.items():
        (out / f"{name}.kbef").write_bytes(blob)
        if name in OUT_PLAIN:
            (out / f"{name}.plain").write_bytes(OUT_PLAIN[name])
        manifest.append({"name": name, "file": f"{name}.kbef", **meta})
    (out / "vectors.json").write_text(json.dumps({"segment_size": SEG, "vectors": manifest}, indent=1) + "\n")


if __name__ == "__main__":
    main()
