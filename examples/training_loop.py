"""Training-loop sketch for a job that keeps its data encrypted at rest.

The job reads encrypted dataset shards and writes encrypted checkpoints through the keybroker
Python client: the data keys come from the broker with the pod's token, live in memory only
for their lease, and never touch the disk. Each shard and checkpoint is one KBEF file
(docs/file-format.md), readable by `keybroker decrypt` as well.

The model is a linear regression so that the sketch runs anywhere: with PyTorch when it is
installed (`torch.save`/`torch.load` straight into/out of the encrypted files), else with
NumPy (`numpy.save`/`numpy.load`).

With `--sign-key`, every checkpoint is also signed as it is written (`<ckpt>.sig`, cosign's
format: only the file's SHA-256 leaves the pod) and the final model gets an in-toto provenance
statement over it and its shards (`final.intoto.json`, a DSSE envelope). Each signature is an
audit record, so the broker's log doubles as the transparency log (docs/signing.md).

Run against a dev broker (`keybrokerd dev --state-dir DIR`, then `source DIR/client.env`):

    keybroker keys create models/demo-signing --purpose sign
    python examples/training_loop.py --workdir /tmp/train --key datasets/demo \
        --sign-key models/demo-signing
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from keybroker import KeyBroker

try:  # PyTorch is optional: the same loop runs on NumPy without it.
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

FEATURES = 8


def shard_context(dataset: str, index: int) -> dict[str, str]:
    """The encryption context of one shard: binds the file to its dataset and position."""
    return {"dataset": dataset, "shard": str(index)}


def checkpoint_context(run: str, step: int) -> dict[str, str]:
    """The encryption context of one checkpoint (no secrets: contexts are audited in clear)."""
    return {"run": run, "kind": "checkpoint", "step": str(step)}


def make_shards(kb: KeyBroker, workdir: Path, *, key: str, dataset: str, shards: int,
                rows: int, seed: int = 0) -> tuple[list[Path], np.ndarray]:
    """Writes `shards` encrypted shards of a synthetic regression problem; returns their paths
    and the true weights (a real job gets its shards from a data pipeline)."""
    rng = np.random.default_rng(seed)
    true_w = rng.normal(size=FEATURES).astype(np.float32)
    paths = []
    for i in range(shards):
        x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
        y = x @ true_w + 0.01 * rng.normal(size=rows).astype(np.float32)
        path = workdir / f"shard-{i:03d}.kbef"
        with kb.open_encrypted(path, "wb", key=key, context=shard_context(dataset, i)) as f:
            np.save(f, np.concatenate([x, y[:, None]], axis=1))
        paths.append(path)
    return paths, true_w


def load_shard(kb: KeyBroker, path: Path, *, dataset: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Reads one shard; the context check refuses a shard moved or renamed from elsewhere."""
    with kb.open_encrypted(path, "rb", context=shard_context(dataset, index)) as f:
        data = np.load(f)
    return data[:, :FEATURES], data[:, FEATURES]


def save_checkpoint(kb: KeyBroker, path: Path, *, key: str, run: str, step: int, weights: Any) -> None:
    """Writes the model state as an encrypted checkpoint (written to a temporary name first)."""
    tmp = path.with_suffix(".partial")
    with kb.open_encrypted(tmp, "wb", key=key, context=checkpoint_context(run, step)) as f:
        if torch is not None:
            torch.save({"step": step, "weights": weights}, f)
        else:
            np.save(f, np.concatenate([[step], weights]).astype(np.float64))
    os.replace(tmp, path)


def sign_checkpoint(kb: KeyBroker, path: Path, *, sign_key: str) -> Any:
    """Signs a checkpoint file as written and puts the signature next to it (`<ckpt>.sig`,
    verifiable with `keybroker verify-blob` or `cosign verify-blob --key`)."""
    return kb.sign_file(path, key=sign_key, artifact_name=path.name, media_type="application/vnd.keybroker.kbef",
                        signature_path=path.with_name(path.name + ".sig"))


def attest_model(kb: KeyBroker, model: Path, shards: list[Path], *, sign_key: str, run: str) -> Path:
    """Signs an in-toto provenance statement naming the final model and the shards it was
    trained on; writes the DSSE envelope to `final.intoto.json` next to the model."""
    att = kb.attest([model, *shards], predicate_type="https://slsa.dev/provenance/v1",
                    predicate={"buildDefinition": {"buildType": "https://example.invalid/train@v1",
                                                   "externalParameters": {"run": run}}},
                    key=sign_key)
    out = model.with_name("final.intoto.json")
    out.write_text(json.dumps(att.envelope))
    return out


def load_checkpoint(kb: KeyBroker, path: Path, *, run: str, step: int) -> np.ndarray:
    """Reads a checkpoint back as a NumPy vector of weights."""
    with kb.open_encrypted(path, "rb", context=checkpoint_context(run, step)) as f:
        if torch is not None:
            state = torch.load(f, weights_only=True)
            return state["weights"].detach().numpy().astype(np.float32)
        data = np.load(f)
    return data[1:].astype(np.float32)


def train(kb: KeyBroker, shards: list[Path], workdir: Path, *, key: str, dataset: str, run: str,
          epochs: int, lr: float = 0.1, start: np.ndarray | None = None,
          sign_key: str | None = None) -> tuple[np.ndarray, list[float], Path]:
    """Gradient descent over the shards, one checkpoint per epoch (signed with `sign_key`, when
    given). Returns the weights, the loss per epoch and the last checkpoint's path."""
    w = np.zeros(FEATURES, dtype=np.float32) if start is None else start.copy()
    losses = []
    ckpt = workdir / "none"
    for epoch in range(epochs):
        total = 0.0
        for i, path in enumerate(shards):
            x, y = load_shard(kb, path, dataset=dataset, index=i)
            if torch is not None:
                wt = torch.tensor(w, requires_grad=True)
                loss = torch.mean((torch.from_numpy(x) @ wt - torch.from_numpy(y)) ** 2)
                loss.backward()
                w = (wt - lr * wt.grad).detach().numpy()
                total += float(loss)
            else:
                err = x @ w - y
                w = w - lr * (2.0 / len(y)) * (x.T @ err)
                total += float(np.mean(err**2))
        losses.append(total / len(shards))
        ckpt = workdir / f"ckpt-{epoch:04d}.kbef"
        state = torch.from_numpy(w.copy()) if torch is not None else w
        save_checkpoint(kb, ckpt, key=key, run=run, step=epoch, weights=state)
        if sign_key is not None:
            sign_checkpoint(kb, ckpt, sign_key=sign_key)
    return w, losses, ckpt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--key", default="datasets/demo")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--sign-key", help="SIGN key: sign every checkpoint and attest the final model")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    with KeyBroker.from_env() as kb:
        shards, _ = make_shards(kb, args.workdir, key=args.key, dataset="synthetic", shards=args.shards, rows=256)
        _, losses, ckpt = train(kb, shards, args.workdir, key=args.key, dataset="synthetic",
                                run="example", epochs=args.epochs, sign_key=args.sign_key)
        if args.sign_key:
            print(f"provenance: {attest_model(kb, ckpt, shards, sign_key=args.sign_key, run='example')}")
    print(f"backend={'torch' if torch is not None else 'numpy'} losses={[round(x, 4) for x in losses]} "
          f"last checkpoint={ckpt}")


if __name__ == "__main__":
    main()
