"""`genscale data ingest`: read a source, validate every record, store a dataset version, list what was refused.

Sources: the built-in `fashion-mnist` (canonical train/test splits), an image folder (PNG, JPEG, BMP, WebP;
nested; optional class sub-folders), a .npz (`x` uint8, optional `y`), an IDX file (gz or raw, labels with
`labels=`, and `test_labels=` for an IDX `test=` source), a text file, a JSONL file (one document per line from
`field`), a folder of text/JSONL files, a Parquet file or folder or a `datasets` save_to_disk folder (one image or
text `column`, see tables.py), or nanoGPT's train.bin / val.bin token ids with their `tokenizer` (see nanogpt.py:
stored as they are beside the decoded documents, and trained on as they are; val.bin is the test split).
Without `test=`, a seeded share of the records becomes the test split (class-balanced when labelled; text: at least
one whole document); a text source of a single document is cut instead: its last `test_fraction` of characters,
from a line start, is the test record (`contiguous_cut`). The rule used is recorded as the operation's `split`.
Bad records (undecodable, truncated or empty files, decompression bombs, images of another size under the
reject policy, non-UTF-8 or empty text, bad JSONL lines, table rows without an image or text) are not ingested:
each is listed with its reason in the version's `quarantine.jsonl` and counted in the summary. A token id beyond the
tokenizer's vocabulary is an error instead: the whole file would be misread. Source files are only read.
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
from genscale.data.nanogpt import is_token_source, read_token_file, token_documents, token_file
from genscale.data.sources import (
    IMAGE_SUFFIXES,
    ImagePolicy,
    Rejected,
    count_reasons,
    decode_images,
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
from genscale.data.tables import is_table_source, read_table_rows, table_kind
from genscale.data.text import JSONL_SUFFIXES, TEXT_SUFFIXES
from genscale.data.tokenizer import TextTokenizer
from genscale.errors import GenscaleError
from genscale.paths import atomic_write_bytes


@dataclass(frozen=True)
class IngestOptions:
    kind: Literal["auto", "image", "text"] = "auto"  # auto: from the files found
    policy: ImagePolicy = ImagePolicy()  # image conversion and size policy
    labels: str | None = None  # IDX source: the labels file
    test_labels: str | None = None  # IDX `test` source: its labels file (with `labels`: both splits or neither)
    field: str = "text"  # JSONL: the string field holding each document
    test: str | None = None  # a second source of the same kind that becomes the test split
    test_fraction: float = 0.1  # without `test`: share of records held out as test (class-balanced; text: at
    #                             least one document; a single document: this share of its end, from a line start)
    split_seed: int = 0
    column: str | None = None  # Parquet / `datasets` source: the image or text column (default: the only one)
    table_split: str = "train"  # `datasets` DatasetDict folder: the split read
    tokenizer: str | None = None  # nanoGPT .bin source: the tokenizer.json its token ids belong to


@dataclass
class _Read:
    kind: str
    records: list[Record]
    images: np.ndarray | None = None
    texts: list[str] | None = None
    classes: tuple[str, ...] = ()
    rejected: list[Rejected] | None = None
    tokens: dict[str, np.ndarray] | None = None  # nanoGPT source: the token stream of each split, as stored
    tokenizer: TextTokenizer | None = None  # ... and the tokenizer its ids belong to


TEXT_SUFFIXES_ALL = TEXT_SUFFIXES + JSONL_SUFFIXES


def _detect_kind(path: Path, opts: IngestOptions) -> str:
    if is_token_source(path):
        return "text"
    if is_table_source(path):
        return table_kind(path, column=opts.column, split=opts.table_split)
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
        flag, labels_file = _labels_option(opts, split)
        if labels_file:
            y = read_idx(labels_file).astype(np.int64)
            if y.ndim != 1:
                raise GenscaleError(f"{flag} {labels_file}: holds an array of shape {y.shape}, not one label per "
                                    "image")
            if len(y) != len(x):
                raise GenscaleError(f"{flag} {labels_file}: {len(y)} labels for the {len(x)} images of {path}")
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


def _read_table(path: Path, opts: IngestOptions, split: str, kind: str) -> _Read:
    """A Parquet / `datasets` column: rows that hold no value, or an image that does not decode, are quarantined."""
    rows = read_table_rows(path, column=opts.column, kind=kind, split=opts.table_split)
    rejected = [Rejected(src, p) for src, p in zip(rows.sources, rows.problems, strict=True) if p is not None]
    good = [i for i, p in enumerate(rows.problems) if p is None]
    if rows.kind == "text":
        texts = [str(rows.values[i]) for i in good]
        records = [Record(rows.sources[i], content_sha256(t.encode()), len(t.encode()), None, split)
                   for i, t in zip(good, texts, strict=True)]
        return _Read("text", records, texts=texts, rejected=rejected)
    items = [(rows.sources[i], rows.values[i]) for i in good]
    x, kept, bad = decode_images(items, opts.policy, description=f"decoding {path.name}")  # type: ignore[arg-type]
    records = [Record(items[i][0], h, len(items[i][1]), None, split)  # type: ignore[arg-type]
               for i, h in zip(kept, image_record_hashes(x), strict=True)]
    row = {src: i for i, src in enumerate(rows.sources)}
    return _Read("image", records, x, rejected=sorted(rejected + bad, key=lambda r: row[r.source]))


def _read_tokens(path: Path, opts: IngestOptions, split: str) -> _Read:
    """A nanoGPT token file: its records are the stretches between <|endoftext|> ids, decoded for cleaning and
    showing; the stream itself is stored as it is, for training."""
    if opts.tokenizer is None:
        raise GenscaleError(f"{path}: nanoGPT token ids need the tokenizer they came from: give --tokenizer "
                            "tokenizer.json (meta.pkl is not read: it is a pickle)")
    tokenizer = TextTokenizer.load(Path(opts.tokenizer))
    stream = read_token_file(token_file(path), tokenizer, tokenizer_path=opts.tokenizer)
    return _token_read(stream, tokenizer, str(token_file(path)), split)


def _token_read(stream: np.ndarray, tokenizer: TextTokenizer, source: str, split: str, offset: int = 0) -> _Read:
    records, texts = [], []
    for start, end in token_documents(stream, tokenizer.eot_id):
        part = stream[start:end]
        records.append(Record(f"{source}#tokens {offset + start}-{offset + end - 1}", content_sha256(part),
                              part.nbytes, None, split))
        texts.append(tokenizer.decode(part))
    return _Read("text", records, texts=texts, rejected=[], tokens={split: stream}, tokenizer=tokenizer)


def _read_builtin() -> _Read:
    a = load_fashion_mnist()
    x = np.concatenate([a["x_train"], a["x_test"]])[:, None]
    y = np.concatenate([a["y_train"], a["y_test"]]).astype(np.int64)
    n_train = len(a["x_train"])
    records = [Record(f"fashion-mnist:{'train' if i < n_train else 'test'}/{i if i < n_train else i - n_train}",
                      h, x.shape[2] * x.shape[3], int(lab), "train" if i < n_train else "test")
               for i, (h, lab) in enumerate(zip(image_record_hashes(x), y.tolist(), strict=True))]
    return _Read("image", records, np.ascontiguousarray(x), classes=FASHION_MNIST_CLASSES, rejected=[])


def _labels_option(opts: IngestOptions, split: str) -> tuple[str, str | None]:
    """The labels file of a split's IDX source and the option that names it."""
    return ("--labels", opts.labels) if split == "train" else ("--test-labels", opts.test_labels)


def _read(source: str, opts: IngestOptions, split: str) -> _Read:
    path = Path(source)
    kind = opts.kind if opts.kind != "auto" else _detect_kind(path, opts) if path.exists() else None
    if kind is None:
        raise GenscaleError(f"{source}: no such file or folder (built-in sources: fashion-mnist)")
    flag, labels_file = _labels_option(opts, split)
    if labels_file and (kind != "image" or path.is_dir() or path.suffix.lower() == ".npz"):
        raise GenscaleError(f"{flag} {labels_file}: a labels file goes with an IDX image source, and {source} is "
                            "not one (folders label by class sub-folder, .npz files by their 'y' array)")
    if is_token_source(path):
        read = _read_tokens(path, opts, split)
    elif is_table_source(path):
        read = _read_table(path, opts, split, kind)
    else:
        read = _read_images(path, opts, split) if kind == "image" else _read_text(path, opts, split)
    if not read.records:
        raise GenscaleError(f"{'' if split == 'train' else '--test '}{source}: no valid records"
                            + _rejected_summary(read.rejected or []))
    return read


def _rejected_summary(rejected: list[Rejected], shown: int = 3) -> str:
    """" (N rejected; nothing stored): SOURCE: REASON; ...; and K more (REASON COUNT, ...)", on one line."""
    text = f" ({len(rejected)} rejected; nothing stored)"
    if rejected:
        text += ": " + "; ".join(f"{r.source}: {r.reason}" for r in rejected[:shown])
    if len(rejected) > shown:
        rest = count_reasons([r.reason for r in rejected[shown:]])
        text += f"; and {len(rejected) - shown} more (" + ", ".join(f"{k} {v}" for k, v in rest.items()) + ")"
    return text


def _assign_test(read: _Read, opts: IngestOptions) -> str:
    """Mark the test records (without a `test` source); returns the split rule used, one line."""
    if read.tokens is not None:
        return _cut_token_stream(read, opts)
    n = len(read.records)
    if read.kind == "text" and n == 1:  # no whole document to spare: cut the one there is
        return _cut_single_document(read, opts)
    n_test = round(n * opts.test_fraction)
    if read.kind == "text":  # as the text loader splits documents: at least one is held out
        n_test = max(1, n_test)
    if n_test < 1 or n - n_test < 1:
        raise GenscaleError(f"--test-fraction {opts.test_fraction}: {n} records are too few to hold out a test "
                            "split; give --test SOURCE or more records")
    labels = np.array([r.label for r in read.records]) if read.records[0].label is not None else None
    test = set(stratified_order(labels, n, opts.split_seed)[:n_test].tolist())
    read.records = [Record(r.source, r.sha256, r.bytes, r.label, "test" if i in test else "train")
                    for i, r in enumerate(read.records)]
    return (f"by record: {n_test} of {n} held out as test ({'class-balanced, ' if labels is not None else ''}"
            f"split_seed {opts.split_seed})")


def _cut_single_document(read: _Read, opts: IngestOptions) -> str:
    """One text record -> a train record (its start) and a test record (its contiguous end)."""
    from genscale.data.text import contiguous_cut

    (record,), (text,) = read.records, read.texts or []
    cut = contiguous_cut(text, held_fraction=opts.test_fraction, source=record.source, setting="--test-fraction")
    parts = [text[:cut.at], text[cut.at:]]
    read.records = [Record(src, content_sha256(part.encode()), len(part.encode()), None, split)
                    for src, part, split in zip(cut.sources(record.source), parts, ("train", "test"), strict=True)]
    read.texts = parts
    return cut.describe()


def _cut_token_stream(read: _Read, opts: IngestOptions) -> str:
    """A token stream without a val.bin: its last test_fraction of tokens is the test split, contiguous."""
    stream, (source, _) = read.tokens["train"], read.records[0].source.rsplit("#", 1)  # type: ignore[index]
    n_test = round(len(stream) * opts.test_fraction)
    if n_test < 1 or len(stream) - n_test < 1:
        raise GenscaleError(f"--test-fraction {opts.test_fraction}: {len(stream)} tokens are too few to hold out a "
                            "test split; give --test val.bin")
    cut = len(stream) - n_test
    train = _token_read(stream[:cut], read.tokenizer, source, "train")  # type: ignore[arg-type]
    test = _token_read(stream[cut:], read.tokenizer, source, "test", offset=cut)  # type: ignore[arg-type]
    read.records, read.texts = train.records + test.records, (train.texts or []) + (test.texts or [])
    read.tokens = {"train": stream[:cut], "test": stream[cut:]}
    return f"token stream: the last {n_test:,} of {len(stream):,} tokens held out as test, contiguous"


def _check_labels_agree(source: str, read: _Read, test: _Read, opts: IngestOptions) -> None:
    train_labelled, test_labelled = read.records[0].label is not None, test.records[0].label is not None
    if train_labelled != test_labelled:
        labelled, unlabelled = (source, f"--test {opts.test}") if train_labelled else (f"--test {opts.test}", source)
        raise GenscaleError(f"{labelled} is labelled and {unlabelled} is not: a labelled and an unlabelled split "
                            "are inconsistent (IDX: give --labels and --test-labels together, or neither)")


def ingest(source: str, name: str, opts: IngestOptions = IngestOptions()) -> tuple[Version, list[Rejected]]:
    """Read, validate and store `source` as a dataset version named `name`; returns it and the quarantine list."""
    check_name(name)
    if opts.test_labels and not opts.test:
        raise GenscaleError(f"--test-labels {opts.test_labels}: labels the images of a --test source; give --test")
    if opts.test is None and is_token_source(Path(source)) and (Path(source) / "val.bin").is_file():
        opts = replace(opts, test=str(Path(source) / "val.bin"))  # nanoGPT's folder: val.bin is the held-out split
    if source == "fashion-mnist":
        read = _read_builtin()
        split = "fashion-mnist's canonical train/test split"
    else:
        read = _read(source, opts, "train")
        if opts.test:
            test = _read(opts.test, replace(opts, kind=read.kind), "test")
            if test.kind != read.kind:
                raise GenscaleError(f"--test {opts.test}: holds {test.kind}, the source holds {read.kind}")
            _check_labels_agree(source, read, test, opts)
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
            if (read.tokens is None) != (test.tokens is None):
                raise GenscaleError(f"--test {opts.test}: a token file and a text source do not make one dataset")
            if read.tokens is not None and test.tokens is not None:
                read.tokens = {"train": read.tokens["train"], "test": test.tokens["test"]}
            split = f"test = the --test source ({len(test.records)} records)"
        else:
            split = _assign_test(read, opts)
    rejected = read.rejected or []
    counts = count_reasons([r.reason for r in rejected])
    operation: dict[str, Any] = {"ingest": {
        "source": source, "test": opts.test, "labels": opts.labels, "test_labels": opts.test_labels,
        "kind": read.kind, "policy": asdict(opts.policy), "field": opts.field if read.kind == "text" else None,
        "test_fraction": None if opts.test else opts.test_fraction, "split_seed": opts.split_seed, "split": split,
        "column": opts.column, "table_split": opts.table_split, "tokenizer": opts.tokenizer,
        "quarantined": len(rejected),
        "quarantined_by_reason": counts}}
    quarantine = "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in rejected).encode()
    version = write_version(kind=read.kind, records=read.records, images=read.images, texts=read.texts,
                            classes=read.classes, operation=operation,
                            tokens=(read.tokenizer, read.tokens) if read.tokens is not None else None)
    # the same content can come from several sources: the report is the latest ingest's (rewritten every time)
    atomic_write_bytes(version_folder(version.id) / "quarantine.jsonl", quarantine)
    set_name(name, version.id)
    return version, rejected
