import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import tree_hashes
from genscale.cli import app
from genscale.config import DataConfig
from genscale.data.builtin import FASHION_MNIST_FILES, fetch_fashion_mnist, load_fashion_mnist
from genscale.data.datasets import ImageData, load_image_data, nested_subset, stratified_order
from genscale.data.idx import read_idx
from genscale.data.ingest import IngestOptions, ingest
from genscale.data.sources import load_imagefolder, load_npz
from genscale.data.store import list_names, load_images, load_version
from genscale.errors import GenscaleError


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    code = {np.uint8: 0x08, np.int32: 0x0C}[array.dtype.type]
    raw = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    x = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    write_idx(tmp_path / "x.idx", x, compress)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.idx"), x)
    y = np.array([1, -2, 300], dtype=np.int32)
    write_idx(tmp_path / "y.idx", y)
    np.testing.assert_array_equal(read_idx(tmp_path / "y.idx"), y)


def test_idx_wrong_magic_and_truncation(tmp_path):
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(GenscaleError, match=r"bad\.idx: not an IDX file"):
        read_idx(tmp_path / "bad.idx")
    write_idx(tmp_path / "short.idx", np.zeros((4, 2), dtype=np.uint8))
    (tmp_path / "short.idx").write_bytes((tmp_path / "short.idx").read_bytes()[:-3])
    with pytest.raises(GenscaleError, match=r"short\.idx: IDX body has 5 bytes"):
        read_idx(tmp_path / "short.idx")


def test_idx_dimensions_whose_product_overflows_int64_are_a_clear_error(tmp_path):
    path = tmp_path / "huge.idx"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2**31, 2**31, 2**31))  # 2^93 bytes, no body
    with pytest.raises(GenscaleError) as e:
        read_idx(path)
    assert str(e.value) == (f"{path}: IDX body has 0 bytes, shape (2147483648, 2147483648, 2147483648) needs "
                            f"{2**93}")


def mnist_files(root) -> dict[str, np.ndarray]:
    """MNIST's four IDX files in miniature (gzip-compressed, as distributed): 6 train and 3 test 4x4 images."""
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (6, 4, 4), dtype=np.uint8),
              "train-labels-idx1-ubyte.gz": np.array([0, 1, 2, 0, 1, 2], dtype=np.uint8),
              "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (3, 4, 4), dtype=np.uint8),
              "t10k-labels-idx1-ubyte.gz": np.array([2, 1, 0], dtype=np.uint8)}
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(root / name, array, compress=True)
    return arrays


def test_mnist_four_idx_files_ingest_with_test_labels(tmp_path):
    files = mnist_files(tmp_path / "mnist")
    train_x, train_y, test_x, test_y = (str(tmp_path / "mnist" / name) for name in files)
    result = CliRunner().invoke(app, ["data", "ingest", train_x, "--labels", train_y, "--test", test_x,
                                      "--test-labels", test_y, "--name", "mnist"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    version = load_version("mnist")
    assert f"mnist -> version {version.id}: 9 image records (train 6, test 3), shape (1, 4, 4)" in result.stdout
    assert "split: test = the --test source (3 records)" in result.stdout
    assert [(r.label, r.split) for r in version.records] == [(0, "train"), (1, "train"), (2, "train"), (0, "train"),
                                                             (1, "train"), (2, "train"), (2, "test"), (1, "test"),
                                                             (0, "test")]
    arrays = list(files.values())
    np.testing.assert_array_equal(load_images(version)[:, 0], np.concatenate([arrays[0], arrays[2]]))


def test_idx_labels_must_label_both_splits_or_neither(tmp_path):
    files = mnist_files(tmp_path / "mnist")
    train_x, train_y, test_x, test_y = (str(tmp_path / "mnist" / name) for name in files)
    write_idx(tmp_path / "two-labels.idx", np.array([1, 0], dtype=np.uint8))
    np.savez(tmp_path / "images.npz", x=np.zeros((4, 4, 4), dtype=np.uint8))
    for opts, message in [
        (IngestOptions(labels=train_y, test_labels=test_y),
         f"--test-labels {test_y}: labels the images of a --test source; give --test"),
        (IngestOptions(test=test_x, test_labels=test_y),
         f"--test {test_x} is labelled and {train_x} is not: a labelled and an unlabelled split are inconsistent "
         "(IDX: give --labels and --test-labels together, or neither)"),
        (IngestOptions(labels=train_y, test=test_x),
         f"{train_x} is labelled and --test {test_x} is not: a labelled and an unlabelled split are inconsistent "
         "(IDX: give --labels and --test-labels together, or neither)"),
        (IngestOptions(labels=train_y, test=test_x, test_labels=str(tmp_path / "two-labels.idx")),
         f"--test-labels {tmp_path / 'two-labels.idx'}: 2 labels for the 3 images of {test_x}"),
        (IngestOptions(labels=test_x), f"--labels {test_x}: holds an array of shape (3, 4, 4), not one label per "
                                       "image"),
    ]:
        with pytest.raises(GenscaleError) as e:
            ingest(train_x, "mnist", opts)
        assert str(e.value) == message
    with pytest.raises(GenscaleError) as e:
        ingest(str(tmp_path / "images.npz"), "npz", IngestOptions(labels=train_y))
    assert str(e.value) == (f"--labels {train_y}: a labels file goes with an IDX image source, and "
                            f"{tmp_path / 'images.npz'} is not one (folders label by class sub-folder, .npz files "
                            "by their 'y' array)")
    assert list_names() == {}


def test_stratified_order_prefixes_are_nested_and_balanced():
    labels = np.repeat(np.arange(10), [100, 50, 80, 100, 100, 100, 30, 100, 100, 100])
    order = stratified_order(labels, len(labels), seed=3)
    assert sorted(order) == list(range(len(labels)))
    share = np.bincount(labels) / len(labels)
    for n in (10, 37, 100, 333, 700):
        counts = np.bincount(labels[order[:n]], minlength=10)
        assert np.all(np.abs(counts - share * n) <= 1.0 + 1e-9), (n, counts)
    np.testing.assert_array_equal(order, stratified_order(labels, len(labels), seed=3))
    assert not np.array_equal(order, stratified_order(labels, len(labels), seed=4))


def test_nested_subsets_contain_each_other():
    rng = np.random.default_rng(0)
    data = ImageData(torch.from_numpy(rng.integers(0, 256, (500, 1, 4, 4), dtype=np.uint8)),
                     torch.from_numpy(rng.integers(0, 5, 500)))
    ids = {n: {bytes(x.numpy()) for x in nested_subset(data, n, seed=7).x} for n in (20, 100, 400)}
    assert ids[20] < ids[100] < ids[400]
    with pytest.raises(GenscaleError, match="data.size: 501 is outside 1..500"):
        nested_subset(data, 501, seed=7)


def test_fashion_mnist_from_debian_package_verified(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSCALE_CACHE", str(tmp_path / "cache"))
    path = fetch_fashion_mnist()
    arrays = load_fashion_mnist()
    assert path.exists()
    assert arrays["x_train"].shape == (60000, 28, 28) and arrays["x_test"].shape == (10000, 28, 28)
    assert sorted(np.unique(arrays["y_train"])) == list(range(10))


def test_fashion_mnist_hash_mismatch_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSCALE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "fm"
    folder.mkdir()
    for key, (name, _) in FASHION_MNIST_FILES.items():
        shape = {"x_train": (60, 28, 28), "y_train": (60,), "x_test": (10, 28, 28), "y_test": (10,)}[key]
        write_idx(folder / name, np.zeros(shape, dtype=np.uint8), compress=True)
    with pytest.raises(GenscaleError, match="train-images-idx3-ubyte.gz: content hash does not match"):
        fetch_fashion_mnist(folder)


def test_builtin_splits_and_size():
    splits = load_image_data(DataConfig(size=1000))
    assert (len(splits.train), len(splits.full_train), len(splits.val), len(splits.test)) == (1000, 55000, 5000,
                                                                                              10000)
    assert torch.bincount(splits.train.y).tolist() == [100] * 10
    assert splits.image_shape == (1, 28, 28)
    assert load_image_data(DataConfig(size=1000)).version == splits.version


def make_folder(root, n_per_class=4, size=(8, 8)):
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            value = (30 * i + (c == "dog") * 5) % 256
            Image.fromarray(np.full(size, value, dtype=np.uint8)).save(root / c / f"{i}.png")


def test_imagefolder_reads_classes(tmp_path):
    make_folder(tmp_path / "imgs")
    x, y, names = load_imagefolder(tmp_path / "imgs")
    assert x.shape == (8, 1, 8, 8) and x.dtype == np.uint8
    assert names == ("cat", "dog") and y.tolist() == [0] * 4 + [1] * 4
    x3, _, _ = load_imagefolder(tmp_path / "imgs", channels=3, image_size=16)
    assert x3.shape == (8, 3, 16, 16)


@pytest.mark.parametrize("damage,message", [
    ("truncate", "cannot decode image"),
    ("empty", r"empty file \(0 bytes\)"),
])
def test_imagefolder_bad_files_name_the_file_and_leave_it_alone(tmp_path, damage, message):
    root = tmp_path / "imgs"
    make_folder(root, size=(64, 64))
    victim = root / "dog" / "2.png"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"")
    before = tree_hashes(root)
    with pytest.raises(GenscaleError, match=rf"dog/2\.png: {message}"):
        load_imagefolder(root)
    assert tree_hashes(root) == before


def test_imagefolder_empty_and_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenscaleError, match="empty: no .png/.jpg/.jpeg/.bmp/.webp images found"):
        load_imagefolder(tmp_path / "empty")
    with pytest.raises(GenscaleError, match="nope: not a folder"):
        load_imagefolder(tmp_path / "nope")


def test_imagefolder_source_splits(tmp_path):
    make_folder(tmp_path / "imgs", n_per_class=20)
    splits = load_image_data(DataConfig(source="imagefolder", path=str(tmp_path / "imgs"), val_fraction=0.1,
                                        test_fraction=0.2))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (28, 4, 8)
    assert torch.bincount(splits.test.y).tolist() == [4, 4]


def test_npz_source(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(6))
    xs, ys = load_npz(tmp_path / "d.npz")
    assert xs.shape == (6, 3, 8, 8) and ys.tolist() == list(range(6))
    np.savez(tmp_path / "f.npz", x=x.astype(np.float32))
    with pytest.raises(GenscaleError, match=r"f\.npz: 'x' must be uint8, got float32"):
        load_npz(tmp_path / "f.npz")
