"""Against a real dev broker: round trips, numpy/tarfile/torch, lease expiry, token rotation."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from keybroker import BrokerError, ContextMismatchError, KeyBroker
from keybroker import format as fmt

CTX = {"dataset": "demo", "shard": "0"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_round_trip_through_the_broker_and_reopen_uses_the_leased_key(broker, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    with broker.client() as kb:
        with kb.open_encrypted(tmp_path / "f.kbef", "wb", key="datasets/demo", context=CTX) as f:
            f.write(data[:100])
            f.write(data[100:])
        assert kb.calls["GenerateDataKey"] == 1
        raw = (tmp_path / "f.kbef").read_bytes()
        assert data[:64] not in raw
        for _ in range(2):
            with kb.open_encrypted(tmp_path / "f.kbef", "rb", key="datasets/demo", context=CTX) as f:
                assert f.read() == data
        assert kb.calls["Decrypt"] == 1


def test_numpy_save_and_load(broker, tmp_path: Path) -> None:
    arr = np.arange(200_000, dtype=np.float32).reshape(400, 500)
    with broker.client() as kb:
        with kb.open_encrypted(tmp_path / "a.npy.kbef", "wb", key="datasets/demo", context=CTX) as f:
            np.save(f, arr)
        with kb.open_encrypted(tmp_path / "a.npy.kbef", "rb") as f:
            assert np.array_equal(np.load(f), arr)


def test_tarfile_write_and_random_access_read(broker, tmp_path: Path) -> None:
    members = {f"m{i}.bin": os.urandom(50_000 + i) for i in range(5)}
    with broker.client() as kb:
        with kb.open_encrypted(tmp_path / "t.tar.kbef", "wb", key="datasets/demo", context=CTX) as f:
            with tarfile.open(fileobj=f, mode="w") as tar:
                for name, blob in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
        with kb.open_encrypted(tmp_path / "t.tar.kbef", "rb") as f:
            with tarfile.open(fileobj=f, mode="r") as tar:
                m = tar.extractfile("m3.bin")
                assert m is not None and m.read() == members["m3.bin"]


def test_torch_save_and_load_when_torch_is_installed(broker, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    state = {"w": torch.arange(1000.0)}
    with broker.client() as kb:
        with kb.open_encrypted(tmp_path / "ckpt.kbef", "wb", key="datasets/demo", context=CTX) as f:
            torch.save(state, f)
        with kb.open_encrypted(tmp_path / "ckpt.kbef", "rb") as f:
            assert torch.equal(torch.load(f)["w"], state["w"])


def test_expired_lease_wipes_the_key_and_forces_a_new_decrypt(broker, tmp_path: Path) -> None:
    clock = FakeClock()
    data = os.urandom(5 * 4080)
    with broker.client(clock=clock, lease_ttl=60) as kb:
        with kb.open_encrypted(tmp_path / "l.kbef", "wb", key="datasets/demo", context=CTX, segment_size=4096) as f:
            f.write(data)
        r = kb.open_encrypted(tmp_path / "l.kbef", "rb")
        assert kb.calls["Decrypt"] == 1
        assert r.read(4080) == data[:4080]
        cached = next(iter(kb._cache.values()))
        clock.now += 61  # past the 60 s lease
        assert r.read(4080) == data[4080:8160]
        assert kb.calls["Decrypt"] == 2
        assert cached.key == bytearray(32), "the expired key must be overwritten"
        r.close()


def test_refused_renewal_fails_the_read_loudly(broker, tmp_path: Path) -> None:
    clock = FakeClock()
    token = tmp_path / "token"
    token.write_text(Path(broker.env["KEYBROKER_TOKEN_FILE"]).read_text())
    kb = KeyBroker(broker.env["KEYBROKER_ENDPOINT"], token_file=str(token), ca=broker.env["KEYBROKER_CA"],
                   clock=clock, lease_ttl=60)
    with kb:
        with kb.open_encrypted(tmp_path / "r.kbef", "wb", key="datasets/demo", context=CTX, segment_size=4096) as f:
            f.write(os.urandom(3 * 4080))
        r = kb.open_encrypted(tmp_path / "r.kbef", "rb")
        r.read(10)
        # The job's credentials are withdrawn: the next lease renewal is refused and the reader
        # must fail rather than keep the cached key.
        token.write_text("not-a-valid-token\n")
        clock.now += 61
        r.seek(4080)
        with pytest.raises(BrokerError) as e:
            r.read(10)
        assert e.value.code == "UNAUTHENTICATED"
        # Rotated back (as kubelet would to a fresh token): it works again without a restart.
        token.write_text(Path(broker.env["KEYBROKER_TOKEN_FILE"]).read_text())
        assert len(r.read(10)) == 10
        r.close()


def test_expected_context_mismatch_fails_before_asking_the_broker(broker, tmp_path: Path) -> None:
    with broker.client() as kb:
        with kb.open_encrypted(tmp_path / "c.kbef", "wb", key="datasets/demo", context=CTX) as f:
            f.write(b"hello")
        with pytest.raises(ContextMismatchError):
            kb.open_encrypted(tmp_path / "c.kbef", "rb", context={"dataset": "other", "shard": "0"})
        assert kb.calls["Decrypt"] == 0


def test_header_with_edited_context_is_refused_by_the_broker(broker, tmp_path: Path) -> None:
    with broker.client() as kb:
        with kb.open_encrypted(tmp_path / "e.kbef", "wb", key="datasets/demo", context=CTX) as f:
            f.write(b"secret rows")
        blob = (tmp_path / "e.kbef").read_bytes()
        h = fmt.parse_header(blob[: fmt.header_length(blob[:9])])
        forged = fmt.encode_header(segment_size=h.segment_size, salt=h.salt, nonce_prefix=h.nonce_prefix,
                                   key_name=h.key_name, context={**CTX, "shard": "1"}, wrapped_key=h.wrapped_key)
        (tmp_path / "forged.kbef").write_bytes(forged.raw + blob[h.length :])
        with pytest.raises(BrokerError):
            kb.open_encrypted(tmp_path / "forged.kbef", "rb")


def test_unknown_key_is_a_broker_error_and_leaves_no_file_open(broker, tmp_path: Path) -> None:
    with broker.client() as kb:
        with pytest.raises(BrokerError):
            kb.open_encrypted(tmp_path / "u.kbef", "wb", key="datasets/nope", context=CTX)
