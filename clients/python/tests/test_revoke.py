"""Job teardown (RevokeLeases) against its own dev broker: the client keeps no key past its
lease, and the renewal is refused loudly with PERMISSION_DENIED instead of a cached key."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from keybroker import BrokerError

from test_interop import cli

CTX = {"dataset": "demo", "shard": "9"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_revoked_principal_fails_loudly_at_the_next_renewal_and_the_key_is_wiped(own_broker, tmp_path: Path) -> None:
    clock = FakeClock()
    data = os.urandom(3 * 4080)
    with own_broker.client(clock=clock, lease_ttl=60) as kb:
        with kb.open_encrypted(tmp_path / "s.kbef", "wb", key="datasets/demo", context=CTX, segment_size=4096) as f:
            f.write(data)
        r = kb.open_encrypted(tmp_path / "s.kbef", "rb")
        assert r.read(4080) == data[:4080]
        cached = next(iter(kb._cache.values()))

        subject = json.loads((own_broker.state / "dev-issuer" / "issuer.json").read_text())["subject"]
        out = cli(own_broker, "leases", "revoke", "--principal", subject)
        assert out.returncode == 0, out.stderr

        clock.now += 61  # the lease ends: the next segment needs a renewal, which is refused
        with pytest.raises(BrokerError) as e:
            r.read(4080)
        assert e.value.code == "PERMISSION_DENIED"
        assert cached.key == bytearray(32), "the key must be overwritten, not kept for later"
        assert kb._cache == {}
        r.close()
        with pytest.raises(BrokerError) as e:
            kb.open_encrypted(tmp_path / "t.kbef", "wb", key="datasets/demo", context=CTX)
        assert e.value.code == "PERMISSION_DENIED"
