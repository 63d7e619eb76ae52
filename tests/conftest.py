"""Shared test fixtures. Data fixtures (``fake_*``) write tiny data sets in the exact on-disk formats
(MNIST IDX, CIFAR-10 python batches), so no test needs the network or the real data."""

import pickle
import threading

import numpy as np
import pytest
import torch
import tqdm

from fake_data import write_idx

# tqdm's default lock is a multiprocessing semaphore shared by every process forked from this one. mutmut forks each
# mutant's tests from one parent: two of the runner's mutants hung there for ten minutes, each waiting on that
# semaphore as it made a bar (gdb: SemLock.acquire under tqdm.__new__; session 19). One process's bars need only a
# thread lock.
tqdm.tqdm.set_lock(threading.RLock())


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Every test works on tiny tensors: on a shared 2-core machine two OpenMP threads spend more time
    handing work over than computing (a 60-step test took 75 s with two threads, 0.6 s with one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def no_user_data_cache(request, tmp_path_factory, monkeypatch):
    """No test, and no mutant of the code a test runs, reads or writes the user's data cache: the default data folder
    ($DNIBENCH_DATA) is a folder of this test's own under pytest's temporary root, not yet created (a test that
    needs a cache builds one: ``fake_mnist_data_dir``). Subprocesses inherit it. A mutant that ignored ``data_dir``
    once left a 12-image fake MNIST in ~/.cache/dnibench, verified by its own sidecar: the next real run would have
    trained on it. The real-data tests (marked integration) give their folder explicitly."""
    import hashlib

    name = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
    monkeypatch.setenv("DNIBENCH_DATA", str(tmp_path_factory.getbasetemp() / "default-data" / name))


@pytest.fixture
def fake_mnist_idx(tmp_path):
    """(folder, arrays): 12 train / 5 test random 28x28 digits; train files gzip'd, test files plain."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8), "y_train": rng.integers(0, 10, 12, dtype=np.uint8),
              "x_test": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), "y_test": rng.integers(0, 10, 5, dtype=np.uint8)}
    arrays["x_train"][0, 0, 0], arrays["x_train"][0, 0, 1] = 0, 255  # both ends of the range
    folder = tmp_path / "idx"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte.gz", arrays["x_train"])
    write_idx(folder / "train-labels-idx1-ubyte.gz", arrays["y_train"])
    write_idx(folder / "t10k-images-idx3-ubyte", arrays["x_test"])
    write_idx(folder / "t10k-labels-idx1-ubyte", arrays["y_test"])
    return folder, arrays


@pytest.fixture
def fake_mnist_data_dir(tmp_path, fake_mnist_idx):
    """A data dir holding a verified MNIST cache built from ``fake_mnist_idx``: load_mnist(it) works offline."""
    from dnibench.data import fetch_mnist

    data_dir = tmp_path / "data"
    fetch_mnist(data_dir, idx_dir=fake_mnist_idx[0], log=lambda *_: None)
    return data_dir


@pytest.fixture
def fake_cifar_dir(tmp_path):
    """(parent, arrays): parent/cifar-10-batches-py with 5 train batches of 3 rows and a test batch of 2."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    arrays = {}
    for name, n in [(f"data_batch_{i}", 3) for i in range(1, 6)] + [("test_batch", 2)]:
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, n)],
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        arrays[name] = batch
    return folder.parent, arrays
