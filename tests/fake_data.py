"""Fake MNIST for the tests (a module of its own: `from conftest import ...` reaches whichever conftest pytest
loaded under that name first, tests/robustness' in an xdist worker that ran it)."""
import gzip
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, arr) -> None:
    """One IDX file (magic 0x0000080N, big-endian dims, uint8 data), gzip'd where the name ends in .gz."""
    header = struct.pack(f">4B{arr.ndim}I", 0, 0, 8, arr.ndim, *arr.shape)
    blob = header + np.asarray(arr).astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)


def fake_mnist(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A verified MNIST cache of random digits under root/data (IDX files under root/idx): the data dir to pass."""
    from dnibench.data import fetch_mnist

    rng, idx = np.random.default_rng(seed), root / "idx"
    idx.mkdir(parents=True)
    for name, n in (("train", n_train), ("t10k", n_test)):
        write_idx(idx / f"{name}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(idx / f"{name}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    fetch_mnist(root / "data", idx_dir=idx, log=lambda *_: None)
    return root / "data"
