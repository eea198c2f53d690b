"""examples/training_loop.py against the real dev broker: it trains, its shards and
checkpoints are encrypted, a checkpoint resumes training, and a shard under the wrong context
is refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from keybroker import ContextMismatchError

from conftest import REPO

spec = importlib.util.spec_from_file_location("training_loop", REPO / "examples" / "training_loop.py")
assert spec is not None and spec.loader is not None
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)

KEY = "datasets/demo"


def test_training_loop_reads_encrypted_shards_and_resumes_from_an_encrypted_checkpoint(broker, tmp_path: Path) -> None:
    with broker.client() as kb:
        shards, true_w = example.make_shards(kb, tmp_path, key=KEY, dataset="ds", shards=3, rows=128)
        w, losses, ckpt = example.train(kb, shards, tmp_path, key=KEY, dataset="ds", run="r1", epochs=4)
        assert losses[-1] < losses[0] / 4, losses
        for path in [*shards, ckpt]:
            assert path.read_bytes()[:4] == b"KBEF"
        resumed = example.load_checkpoint(kb, ckpt, run="r1", step=3)
        np.testing.assert_allclose(resumed, w, rtol=1e-6)
        w2, more, _ = example.train(kb, shards, tmp_path, key=KEY, dataset="ds", run="r1", epochs=2, start=resumed)
        assert more[0] < losses[0]
        assert np.linalg.norm(w2 - true_w) < np.linalg.norm(w - true_w) + 1e-6
        # Shard 0 presented as shard 1: the context check refuses it before any plaintext.
        with pytest.raises(ContextMismatchError):
            example.load_shard(kb, shards[0], dataset="ds", index=1)
