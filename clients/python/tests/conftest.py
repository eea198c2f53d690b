"""Fixtures: the test vectors, and a real dev broker (`keybrokerd dev`) per test session.

A missing broker binary is a failure, never a skip: build it with `cargo build --bins` (the
repository's scripts/test does) or point KEYBROKER_BIN at it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Iterator

import pytest

from keybroker import KeyBroker

REPO = Path(__file__).resolve().parents[3]
TESTDATA = REPO / "clients" / "testdata" / "kbef"


@pytest.fixture(scope="session")
def vectors() -> dict:
    return json.loads((TESTDATA / "vectors.json").read_text())


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("export "):
            k, _, v = line[len("export ") :].partition("=")
            out[k] = v
    return out


class DevBroker:
    def __init__(self, env: dict[str, str], proc: subprocess.Popen[bytes], state: Path) -> None:
        self.env, self.proc, self.state = env, proc, state

    def client(self, **kwargs) -> KeyBroker:  # type: ignore[no-untyped-def]
        return KeyBroker(
            self.env["KEYBROKER_ENDPOINT"], token_file=self.env["KEYBROKER_TOKEN_FILE"],
            ca=self.env["KEYBROKER_CA"], **kwargs,
        )


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevBroker]:
    with _dev_broker(tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevBroker]:
    """A dev broker for one test, for tests that leave it unusable (revoked principal)."""
    with _dev_broker(tmp_path_factory.mktemp("own-broker")) as b:
        yield b


@contextmanager
def _dev_broker(state: Path) -> Iterator[DevBroker]:
    binary = Path(os.environ.get("KEYBROKER_BIN", REPO / "target" / "debug" / "keybrokerd"))
    if not binary.is_file():
        pytest.fail(f"broker binary {binary} missing: run `cargo build --workspace --bins` first")
    log = open(state / "broker.log", "wb")
    proc = subprocess.Popen(
        [str(binary), "dev", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
         "--xks-listen", "127.0.0.1:0",
         "--state-dir", str(state)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    env_path = state / "client.env"
    deadline = time.monotonic() + 60
    try:
        # Poll for the file the broker writes once it listens (a condition, not a fixed sleep).
        while not (env_path.is_file() and "KEYBROKER_TOKEN_FILE" in env_path.read_text()):
            if proc.poll() is not None:
                pytest.fail(f"keybrokerd exited {proc.returncode}: {(state / 'broker.log').read_text()}")
            if time.monotonic() > deadline:
                pytest.fail("keybrokerd did not write client.env within 60 s")
            time.sleep(0.05)
        yield DevBroker(_env_file(env_path), proc, state)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
