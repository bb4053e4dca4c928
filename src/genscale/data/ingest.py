"""`genscale data ingest`: read a source, validate every record, store a dataset version, list what was refused.

Sources: the built-in `fashion-mnist` (canonical train/test splits), an image folder (PNG, JPEG, BMP, WebP;
nested; optional class sub-folders), a .npz (`x` uint8, optional `y`), an IDX file (gz or raw, labels with
`labels=`), a text file, a JSONL file (one document per line from `field`), or a folder of text/JSONL files.
Bad records (undecodable, truncated or empty files, decompression bombs, images of another size under the
reject policy, non-UTF-8 or empty text, bad JSONL lines) are not ingested: each is listed with its reason in
the version's `quarantine.jsonl` and counted in the summary. Source files are only read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from genscale.data.builtin import FASHION_MNIST_CLASSES, load_fashion_mnist
from genscale.data.datasets import stratified_order
from genscale.data.idx import read_idx
from genscale.data.sources import (
    IMAGE_SUFFIXES,
    ImagePolicy,
    Rejected,
    count_reasons,
    image_files,
    load_npz,
    read_image_folder,
)
from genscale.data.store import (
    Record,
    Version,
    check_name,
    content_sha256,
    image_record_hashes,
    set_name,
    version_folder,
    write_version,
)
from genscale.data.text import JSONL_SUFFIXES, TEXT_SUFFIXES
from genscale.errors import GenscaleError
from genscale.paths import atomic_write_bytes


@dataclass(frozen=True)
class IngestOptions:
    kind: Literal["auto", "image", "text"] = "auto"  # auto: from the files found
    policy: ImagePolicy = ImagePolicy()  # image conversion and size policy
    labels: str | None = None  # IDX source: the labels file
    field: str = "text"  # JSONL: the string field holding each document
    test: str | None = None  # a second source of the same kind that becomes the test split
    test_fraction: float = 0.1  # without `test`: share of records held out as test (class-balanced)
    split_seed: int = 0


@dataclass
class _Read:
    kind: str
    records: list[Record]
    images: np.ndarray | None = None
    texts: list[str] | None = None
    classes: tuple[str, ...] = ()
    rejected: list[Rejected] | None = None


TEXT_SUFFIXES_ALL = TEXT_SUFFIXES + JSONL_SUFFIXES


def _detect_kind(path: Path) -> str:
    if path.is_dir():
        has_images = any(True for _ in image_files(path))
        has_text = any(p.is_file() and p.suffix.lower() in TEXT_SUFFIXES_ALL for p in path.rglob("*"))
        if has_images and has_text:
            raise GenscaleError(f"{path}: holds both images and text files; choose one with --kind image|text")
        if not (has_images or has_text):
            raise GenscaleError(f"{path}: no image ({'/'.join(IMAGE_SUFFIXES)}) or text "
                                f"({'/'.join(TEXT_SUFFIXES_ALL)}) files found")
        return "image" if has_images else "text"
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix.lower() == ".gz" else path.suffix.lower()
    if suffix in TEXT_SUFFIXES_ALL:
        return "text"
    return "image"  # .npz, IDX (any name), or a single image file: the readers say what is wrong


def _read_images(path: Path, opts: IngestOptions, split: str) -> _Read:
    if path.is_dir():
        folder = read_image_folder(path, opts.policy)
        hashes = image_record_hashes(folder.x)
        labels = folder.y.tolist() if folder.y is not None else [None] * len(folder.x)
        records = [Record(s, h, b, lab, split)
                   for s, h, b, lab in zip(folder.sources, hashes, folder.file_bytes, labels, strict=True)]
        return _Read("image", records, folder.x, classes=folder.class_names, rejected=folder.rejected)
    if not path.exists():
        raise GenscaleError(f"{path}: no such file or folder")
    if path.suffix.lower() == ".npz":
        x, y = load_npz(path)
    else:
        x = read_idx(path)
        if x.dtype != np.uint8 or x.ndim not in (3, 4):
            raise GenscaleError(f"{path}: expected uint8 images (N, H, W), got {x.dtype} {x.shape}")
        x = x[:, None] if x.ndim == 3 else x
        y = None
        if opts.labels and split == "train":
            y = read_idx(opts.labels).astype(np.int64)
            if y.shape != (len(x),):
                raise GenscaleError(f"{opts.labels}: {len(y)} labels for {len(x)} images")
    hashes = image_record_hashes(x)
    labels = y.tolist() if y is not None else [None] * len(x)
    per = int(np.prod(x.shape[1:]))
    records = [Record(f"{path}#{i}", h, per, lab, split) for i, (h, lab) in enumerate(zip(hashes, labels, strict=True))]
    return _Read("image", records, np.ascontiguousarray(x), rejected=[])


def _read_text(path: Path, opts: IngestOptions, split: str) -> _Read:
    from genscale.data.text import read_text_source

    docs, rejected = read_text_source(path, field=opts.field)
    records = [Record(d.source, content_sha256(d.text.encode()), len(d.text.encode()), None, split) for d in docs]
    return _Read("text", records, texts=[d.text for d in docs], rejected=list(rejected))


def _read_builtin() -> _Read:
    a = load_fashion_mnist()
    x = np.concatenate([a["x_train"], a["x_test"]])[:, None]
    y = np.concatenate([a["y_train"], a["y_test"]]).astype(np.int64)
    n_train = len(a["x_train"])
    records = [Record(f"fashion-mnist:{'train' if i < n_train else 'test'}/{i if i < n_train else i - n_train}",
                      h, x.shape[2] * x.shape[3], int(lab), "train" if i < n_train else "test")
               for i, (h, lab) in enumerate(zip(image_record_hashes(x), y.tolist(), strict=True))]
    return _Read("image", records, np.ascontiguousarray(x), classes=FASHION_MNIST_CLASSES, rejected=[])


def _read(source: str, opts: IngestOptions, split: str) -> _Read:
    path = Path(source)
    kind = opts.kind if opts.kind != "auto" else _detect_kind(path) if path.exists() else None
    if kind is None:
        raise GenscaleError(f"{source}: no such file or folder (built-in sources: fashion-mnist)")
    return _read_images(path, opts, split) if kind == "image" else _read_text(path, opts, split)


def _assign_test(read: _Read, opts: IngestOptions) -> None:
    n = len(read.records)
    n_test = round(n * opts.test_fraction)
    if n_test < 1 or n - n_test < 1:
        raise GenscaleError(f"--test-fraction {opts.test_fraction}: {n} records are too few to hold out a test "
                            "split; give --test SOURCE or more records")
    labels = np.array([r.label for r in read.records]) if read.records[0].label is not None else None
    test = set(stratified_order(labels, n, opts.split_seed)[:n_test].tolist())
    read.records = [Record(r.source, r.sha256, r.bytes, r.label, "test" if i in test else "train")
                    for i, r in enumerate(read.records)]


def ingest(source: str, name: str, opts: IngestOptions = IngestOptions()) -> tuple[Version, list[Rejected]]:
    """Read, validate and store `source` as a dataset version named `name`; returns it and the quarantine list."""
    check_name(name)
    if source == "fashion-mnist":
        read = _read_builtin()
    else:
        read = _read(source, opts, "train")
        if opts.test:
            test = _read(opts.test, replace(opts, kind=read.kind), "test")
            if test.kind != read.kind:
                raise GenscaleError(f"--test {opts.test}: holds {test.kind}, the source holds {read.kind}")
            if read.kind == "image" and test.records and read.records \
                    and test.images.shape[1:] != read.images.shape[1:]:
                raise GenscaleError(f"--test {opts.test}: images are {test.images.shape[1:]}, the source's are "
                                    f"{read.images.shape[1:]}; set --image-size")
            read.records += test.records
            read.rejected = (read.rejected or []) + (test.rejected or [])
            if read.images is not None and test.images is not None:
                read.images = np.concatenate([read.images, test.images])
            if read.texts is not None and test.texts is not None:
                read.texts += test.texts
        if not read.records:
            raise GenscaleError(f"{source}: no valid records ({len(read.rejected or [])} rejected; nothing stored)")
        if not opts.test:
            _assign_test(read, opts)
    rejected = read.rejected or []
    counts = count_reasons([r.reason for r in rejected])
    operation: dict[str, Any] = {"ingest": {
        "source": source, "test": opts.test, "kind": read.kind, "policy": asdict(opts.policy),
        "field": opts.field if read.kind == "text" else None, "test_fraction": None if opts.test else
        opts.test_fraction, "split_seed": opts.split_seed, "quarantined": len(rejected),
        "quarantined_by_reason": counts}}
    quarantine = "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in rejected).encode()
    version = write_version(kind=read.kind, records=read.records, images=read.images, texts=read.texts,
                            classes=read.classes, operation=operation)
    # the same content can come from several sources: the report is the latest ingest's (rewritten every time)
    atomic_write_bytes(version_folder(version.id) / "quarantine.jsonl", quarantine)
    set_name(name, version.id)
    return version, rejected
