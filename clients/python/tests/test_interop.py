"""Rust CLI <-> Python, against the real dev broker: each reads what the other wrote."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

CTX = {"dataset": "demo", "shard": "7"}


def cli(broker, *args: str, stdin: bytes | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    binary = Path(os.environ.get("KEYBROKER_CLI", REPO / "target" / "debug" / "keybroker"))
    if not binary.is_file():
        pytest.fail(f"CLI binary {binary} missing: run `cargo build --workspace --bins` first")
    env = {**os.environ, **broker.env, **(env or {})}
    return subprocess.run([str(binary), *args], env=env, input=stdin, capture_output=True, timeout=120)


def test_file_written_by_the_rust_cli_is_read_by_python(broker, tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 5)
    (tmp_path / "in.bin").write_bytes(data)
    r = cli(broker, "encrypt", str(tmp_path / "in.bin"), str(tmp_path / "out.kbef"),
            "--key-name", "datasets/demo", "--context", "dataset=demo", "--context", "shard=7")
    assert r.returncode == 0, r.stderr
    with broker.client() as kb:
        with kb.open_encrypted(tmp_path / "out.kbef", "rb", key="datasets/demo", context=CTX) as f:
            assert f.read() == data


def test_file_written_by_python_is_read_by_the_rust_cli_via_stdin_and_stdout(broker, tmp_path: Path) -> None:
    data = os.urandom(1024 * 1024 + 3)
    with broker.client() as kb:
        with kb.open_encrypted(tmp_path / "p.kbef", "wb", key="datasets/demo", context=CTX) as f:
            f.write(data)
    r = cli(broker, "decrypt", "-", "-", "--context", "dataset=demo", "--context", "shard=7",
            stdin=(tmp_path / "p.kbef").read_bytes())
    assert r.returncode == 0, r.stderr
    assert r.stdout == data


def test_rust_cli_refuses_a_tampered_file_and_leaves_no_output(broker, tmp_path: Path) -> None:
    with broker.client() as kb:
        with kb.open_encrypted(tmp_path / "t.kbef", "wb", key="datasets/demo", context=CTX,
                               segment_size=4096) as f:
            f.write(os.urandom(3 * 4080 + 1))
    blob = bytearray((tmp_path / "t.kbef").read_bytes())
    blob[-4096 - 50] ^= 1  # inside segment 2 of 4
    (tmp_path / "t.kbef").write_bytes(bytes(blob))
    r = cli(broker, "decrypt", str(tmp_path / "t.kbef"), str(tmp_path / "plain.bin"))
    assert r.returncode == 1
    assert b"failed authentication" in r.stderr
    assert not (tmp_path / "plain.bin").exists()
    assert not (tmp_path / "plain.bin.partial").exists()


def test_rust_cli_refuses_an_unexpected_context_before_asking_the_broker(broker, tmp_path: Path) -> None:
    with broker.client() as kb:
        with kb.open_encrypted(tmp_path / "c.kbef", "wb", key="datasets/demo", context=CTX) as f:
            f.write(b"x")
    r = cli(broker, "decrypt", str(tmp_path / "c.kbef"), "-", "--context", "dataset=other")
    assert r.returncode == 1 and b"context differs" in r.stderr
