"""Built-in datasets, fetched once into the cache and verified by content hash.

Fashion-MNIST (Xiao et al. 2017) is looked up in this order: a folder the user names, the Debian
package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist), then the canonical download.
The decoded arrays are hashed, so the gzip framing of a mirror does not matter.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from genscale.data.idx import read_idx
from genscale.errors import GenscaleError
from genscale.paths import atomic_write_bytes, cache_dir

FASHION_MNIST_FILES = {  # array -> (file name, sha256 of the decoded array's bytes)
    "x_train": ("train-images-idx3-ubyte.gz", "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012"),
    "y_train": ("train-labels-idx1-ubyte.gz", "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7"),
    "x_test": ("t10k-images-idx3-ubyte.gz", "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a"),
    "y_test": ("t10k-labels-idx1-ubyte.gz", "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CANONICAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

BUILTIN_IMAGE_DATASETS = ("fashion-mnist",)


def array_sha256(a: np.ndarray) -> str:
    """Content hash of an array's bytes (C order)."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _verified(arrays: dict[str, np.ndarray], origin: str) -> dict[str, np.ndarray]:
    for key, (fname, digest) in FASHION_MNIST_FILES.items():
        if array_sha256(arrays[key]) != digest:
            raise GenscaleError(f"{origin}/{fname}: content hash does not match Fashion-MNIST's recorded hash")
    return arrays


def _from_folder(folder: Path) -> dict[str, np.ndarray]:
    missing = [f for f, _ in FASHION_MNIST_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise GenscaleError(f"{folder}: missing Fashion-MNIST file(s) {', '.join(missing)}")
    return _verified({k: read_idx(folder / f) for k, (f, _) in FASHION_MNIST_FILES.items()}, str(folder))


def _download(dest: Path) -> None:
    for fname, _ in FASHION_MNIST_FILES.values():
        try:
            with urllib.request.urlopen(CANONICAL_URL + fname, timeout=30) as r, open(dest / fname, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as e:
            raise GenscaleError(
                f"fashion-mnist: not found locally and download of {CANONICAL_URL + fname} failed ({e}); "
                "install the Debian package dataset-fashion-mnist or pass --path FOLDER") from None


def fashion_mnist_cache_path() -> Path:
    return cache_dir() / "datasets" / "fashion-mnist.npz"


def fetch_fashion_mnist(path: str | Path | None = None) -> Path:
    """Make sure the verified .npz cache exists; return its path. Source files are only read."""
    target = fashion_mnist_cache_path()
    if target.exists() and path is None:
        return target
    if path is not None:
        arrays = _from_folder(Path(path))
    elif DEBIAN_DIR.is_dir():
        arrays = _from_folder(DEBIAN_DIR)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            _download(Path(tmp))
            arrays = _from_folder(Path(tmp))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(target, buf.getvalue())
    return target


def load_fashion_mnist() -> dict[str, np.ndarray]:
    """x_train (60000, 28, 28) uint8, y_train (60000,), x_test (10000, 28, 28), y_test (10000,)."""
    target = fetch_fashion_mnist()
    try:
        with np.load(target, allow_pickle=False) as z:
            arrays = {k: z[k] for k in FASHION_MNIST_FILES}
        return _verified(arrays, str(target.parent))
    except (OSError, ValueError, KeyError, GenscaleError):
        target.unlink(missing_ok=True)  # a damaged cache is rebuilt from the sources, once
        with np.load(fetch_fashion_mnist(), allow_pickle=False) as z:
            return _verified({k: z[k] for k in FASHION_MNIST_FILES}, str(target.parent))
