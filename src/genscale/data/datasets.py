"""Image datasets as in-memory uint8 tensors, deterministic splits and nested subsets."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from genscale.data.builtin import BUILTIN_IMAGE_DATASETS, array_sha256, load_fashion_mnist
from genscale.data.idx import read_idx
from genscale.data.sources import load_imagefolder, load_npz
from genscale.data.store import Version, image_shards, load_version
from genscale.errors import GenscaleError

if TYPE_CHECKING:
    from genscale.config import DataConfig


class ShardedImages:
    """Images (N, C, H, W) uint8 left in a stored version's memory-mapped shards: rows are read when indexed, so a
    split larger than memory is never gathered. Indexing with a slice or integer indices returns a tensor of those
    rows (what a batch, a feature extraction or a classifier step reads); `take` a lazy subset."""

    def __init__(self, shards: list[np.ndarray], index: np.ndarray):
        self.shards, self.index = shards, np.asarray(index, dtype=np.int64)  # index: rows of the concatenated shards
        self.starts = np.cumsum([0] + [len(s) for s in shards])
        self.dtype, self.device = torch.uint8, torch.device("cpu")

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.shards[0].shape[1:])

    @property
    def nbytes(self) -> int:
        return len(self.index) * int(np.prod(self.shards[0].shape[1:]))

    def take(self, index: np.ndarray | torch.Tensor) -> ShardedImages:
        return ShardedImages(self.shards, self.index[np.asarray(index, dtype=np.int64)])

    def __getitem__(self, key: slice | np.ndarray | torch.Tensor) -> torch.Tensor:
        rows = self.index[key] if isinstance(key, slice) else self.index[np.asarray(key, dtype=np.int64)]
        shard = np.searchsorted(self.starts, rows, side="right") - 1  # (n,) which shard each row is in
        out = np.empty((len(rows), *self.shards[0].shape[1:]), dtype=np.uint8)
        for s in np.unique(shard):
            mine = shard == s
            out[mine] = self.shards[s][rows[mine] - self.starts[s]]  # reads only these rows' pages
        return torch.from_numpy(out)


@dataclass(frozen=True)
class ImageData:
    """Images (N, C, H, W) uint8 (a tensor, or ShardedImages for a split read from the store) and optional labels
    (N,) int64."""

    x: torch.Tensor | ShardedImages
    y: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.x)

    def take(self, index: np.ndarray) -> ImageData:
        idx = torch.as_tensor(index, dtype=torch.long)
        x = self.x.take(index) if isinstance(self.x, ShardedImages) else self.x[idx]
        return ImageData(x, None if self.y is None else self.y[idx])


@dataclass(frozen=True)
class DataSplits:
    """train/val/test of one dataset version; `train` is `full_train` cut to `data.size` examples."""

    train: ImageData
    full_train: ImageData
    val: ImageData
    test: ImageData
    name: str
    version: str  # content id of all splits before subsetting (a store version id for source 'dataset')
    num_classes: int  # 0 when unlabelled
    eval_version: str = ""  # version whose train split trains the domain extractor ("": this one)
    classifier_train: ImageData | None = None  # that train split (None: full_train)

    @property
    def extractor_basis(self) -> tuple[str, ImageData]:
        """(version, train split) the domain feature extractor is trained on: shared by a dataset's corrupted and
        cleaned versions, so their metrics are comparable."""
        return self.eval_version or self.version, self.classifier_train or self.full_train

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]


def stratified_order(labels: np.ndarray | None, n: int, seed: int) -> np.ndarray:
    """A permutation of range(n) whose every prefix is class-balanced (to within one per class).

    Each example gets the key (rank within its class + jitter) / class count, with ranks from a seeded
    shuffle; sorting by key interleaves classes in proportion. Taking prefixes of one order makes
    subsets nested: for n1 < n2, subset(n1) is contained in subset(n2).
    """
    rng = np.random.default_rng(seed)
    if labels is None:
        return rng.permutation(n)
    keys = np.empty(n, dtype=np.float64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(len(members))]
        keys[members] = (np.arange(len(members)) + rng.random(len(members))) / len(members)
    return np.argsort(keys, kind="stable")


def nested_subset(data: ImageData, size: int | None, seed: int) -> ImageData:
    """The first `size` examples of the seeded stratified order (all of them when size is None)."""
    if size is None:
        return data
    if not 0 < size <= len(data):
        raise GenscaleError(f"data.size: {size} is outside 1..{len(data)} (training examples available)")
    labels = None if data.y is None else data.y.numpy()
    return data.take(np.sort(stratified_order(labels, len(data), seed)[:size]))


def _split(x: np.ndarray | ShardedImages, y: np.ndarray | None, n_val: int, n_test: int, seed: int
           ) -> tuple[ImageData, ImageData, ImageData]:
    order = stratified_order(y, len(x), seed)
    parts = np.split(order, [n_test, n_test + n_val])  # test, val, train
    data = ImageData(x if isinstance(x, ShardedImages) else torch.from_numpy(x),
                     None if y is None else torch.from_numpy(y))
    test, val, train = (data.take(np.sort(p)) for p in parts)
    return train, val, _in_memory(test)


def _in_memory(data: ImageData) -> ImageData:
    """A held-out split as a tensor (evaluation reads all of it)."""
    return ImageData(data.x[:], data.y) if isinstance(data.x, ShardedImages) else data


def _version(name: str, *arrays: np.ndarray | None) -> str:
    h = hashlib.sha256(name.encode())
    for a in arrays:
        h.update(b"none" if a is None else array_sha256(a).encode())
    return h.hexdigest()


def _stored_splits(version: Version, cfg: DataConfig) -> tuple[ImageData, ImageData, ImageData]:
    """train, val, test of a stored image version: test as recorded at ingest, val carved from train. A train split
    larger than data.memory_mb stays in the memory-mapped shards (ShardedImages); val and test are loaded."""
    shards, y = image_shards(version), version.labels()
    whole = ShardedImages(shards, np.arange(sum(len(s) for s in shards)))
    parts = []
    for split in ("train", "test"):
        idx = np.flatnonzero(version.split_mask(split))
        parts.append((whole.take(idx), None if y is None else y[idx]))
    (x_train, y_train), (x_test, y_test) = parts
    if len(x_train) < 2 or len(x_test) < 1:
        raise GenscaleError(f"dataset {version.id}: {len(x_train)} train and {len(x_test)} test images are too few")
    if x_train.nbytes <= cfg.memory_mb * 2**20:
        x_train = x_train[:].numpy()
    train, val, _ = _split(x_train, y_train, round(len(x_train) * cfg.val_fraction), 0, cfg.split_seed)
    test = ImageData(x_test[:], None if y_test is None else torch.from_numpy(y_test))
    return train, _in_memory(val), test


def load_image_data(cfg: DataConfig) -> DataSplits:
    """Load the configured source, split it deterministically and cut train to `cfg.size`."""
    if cfg.source == "dataset":
        from genscale.data.clean import clean_version

        version = load_version(cfg.dataset or "")
        if cfg.clean:
            version, _ = clean_version(version)
        train, val, test = _stored_splits(version, cfg)
        basis = version.meta["eval_basis"]
        basis_train = None if basis == version.id else _stored_splits(load_version(basis), cfg)[0]
        subset = nested_subset(train, cfg.size, cfg.split_seed)
        return DataSplits(subset, train, val, test, cfg.dataset or version.id, version.id,
                          len(version.meta["classes"]) if version.labels() is not None else 0,
                          eval_version=basis, classifier_train=basis_train)
    if cfg.source in BUILTIN_IMAGE_DATASETS:
        arrays = load_fashion_mnist()
        x_train, y_train = arrays["x_train"][:, None], arrays["y_train"].astype(np.int64)
        # val is carved from the canonical train split; test stays the canonical test split.
        train, val, _ = _split(x_train, y_train, cfg.val_size, 0, cfg.split_seed)
        test = ImageData(torch.from_numpy(arrays["x_test"][:, None]),
                         torch.from_numpy(arrays["y_test"].astype(np.int64)))
        version = _version(cfg.source, x_train, y_train, arrays["x_test"], arrays["y_test"])
        num_classes = 10
    else:
        if cfg.path is None:
            raise GenscaleError(f"data.path: required for source '{cfg.source}'")
        if cfg.source == "imagefolder":
            x, y, _ = load_imagefolder(cfg.path, channels=cfg.channels, image_size=cfg.image_size)
        elif cfg.source == "npz":
            x, y = load_npz(cfg.path)
        elif cfg.source == "idx":
            x = read_idx(cfg.path)
            if x.dtype != np.uint8 or x.ndim != 3:
                raise GenscaleError(f"{cfg.path}: expected uint8 images (N, H, W), got {x.dtype} {x.shape}")
            x = x[:, None]
            y = None if cfg.labels_path is None else read_idx(cfg.labels_path).astype(np.int64)
            if y is not None and y.shape != (len(x),):
                raise GenscaleError(f"{cfg.labels_path}: {len(y)} labels for {len(x)} images")
        else:  # the config validator already restricts the names; this guards library callers
            raise GenscaleError(f"data.source: unknown source '{cfg.source}'")
        n_val, n_test = round(len(x) * cfg.val_fraction), round(len(x) * cfg.test_fraction)
        if len(x) - n_val - n_test < 1 or n_test < 1:
            raise GenscaleError(f"{cfg.path}: {len(x)} images are too few to split into train/val/test")
        train, val, test = _split(x, y, n_val, n_test, cfg.split_seed)
        version = _version(cfg.source, x, y)
        num_classes = 0 if y is None else int(y.max()) + 1
    subset = nested_subset(train, cfg.size, cfg.split_seed)
    return DataSplits(subset, train, val, test, cfg.source, version, num_classes)
