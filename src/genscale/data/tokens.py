"""Text documents -> train/held-out split -> tokenizer -> flat token shards, cached.

Like nanoGPT's `prepare.py`, each split becomes one flat binary file of token ids (train.bin, val.bin), every
document followed by <|endoftext|>. With at least 2 documents they are split whole, never mid-text, so no held-out
passage was seen in training. A source of one document (one input.txt) is cut instead: its last data.val_fraction
of characters, moved to a line start, is held out as one contiguous stretch (`contiguous_cut`). `TextData.split`
states which rule was used. The tokenizer is trained on the train documents only. The train documents are in a
seeded order, so `train_full[:size]` is a nested subset: a smaller size is a prefix of a larger one with the same
split_seed.

Cache layout: cache_dir()/tokens/<key>/{train.bin, val.bin, tokenizer.json, meta.json}; meta.json is written last
and marks the folder complete. The key covers the documents' content id, the split settings and the split's
statement (which rule, where it cut), and the tokenizer (its sha256 when given, else the settings it is trained
with), but not `data.size`, so all sizes share one folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from genscale.data.corpora import BUILTIN_TEXT_CORPORA, load_corpus
from genscale.data.tokenizer import TextTokenizer, train_tokenizer
from genscale.errors import GenscaleError
from genscale.paths import atomic_write_bytes, cache_dir
from genscale.ui import console, progress

if TYPE_CHECKING:
    from genscale.config import DataConfig
    from genscale.data.store import Version

CACHE_FORMAT = 1  # bump when the files' layout changes, so old folders are not read with new assumptions
_BATCH_CHARACTERS = 1 << 20  # documents are encoded in batches of about this many characters
_PROGRESS_MIN_CHARACTERS = 4 << 20  # below this, tokenizing takes a second or two: no bar


@dataclass(frozen=True)
class TextData:
    """The token streams of one text dataset, its tokenizer and its held-out documents."""

    name: str  # "shakespeare", "sotu", the stored dataset name, or the text path
    version: str  # content id of the documents (a store version id for source 'dataset')
    tokenizer: TextTokenizer
    tokenizer_path: Path  # its tokenizer.json in the cache folder
    train_full: np.ndarray  # (N,) uint16/uint32 memmap: every train document in seeded order, each followed by EOT
    train: np.ndarray  # train_full[:data.size], a view: the nested subset trained on (all when size is None)
    val: np.ndarray  # (M,) held-out documents in document order, each followed by EOT (same dtype)
    val_documents: list[str]  # the held-out texts (BLEU takes prompts and references from them)
    split: str  # the split rule used, one line: "by document: 40 train, 2 held out (...)", "one document: ..."
    folder: Path  # cache folder holding train.bin, val.bin, tokenizer.json, meta.json

    def decode(self, ids: Sequence[int]) -> str:
        """The tokenizer's decode: text of `ids`, special tokens skipped."""
        return self.tokenizer.decode(ids)


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id below vocab_size: uint16 up to 65536 tokens, else uint32.

    Little-endian explicitly, so a cache folder reads the same on any machine."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def documents_version(named_texts: Sequence[tuple[str, str]]) -> str:
    """sha256 over (name, text) of every document in order: the content id of a corpus or text source."""
    h = hashlib.sha256()
    for name, text in named_texts:
        h.update(json.dumps([name, text], ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def split_documents(n: int, *, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices in seeded order, held-out indices in document order) of n documents.

    max(1, round(n * val_fraction)) documents are held out, chosen by a seeded permutation."""
    order = np.random.default_rng(seed).permutation(n)
    n_held = max(1, round(n * val_fraction))
    return order[n_held:], np.sort(order[:n_held])


class Documents(NamedTuple):
    """A text source's documents, split."""

    name: str  # the corpus name, the text path, or the stored dataset name
    version: str  # content id of the documents (a store version id for source 'dataset')
    train: list[str]  # in seeded order
    held: list[str]  # in document order
    split: str  # the rule used, one line (TextData.split)
    tokens: tuple[TextTokenizer, np.ndarray, np.ndarray] | None = None  # a stored token version: (tokenizer,
    #                                                                     train ids, held-out ids) as ingested


def _split_named(source: str, docs: list[tuple[str, str]], cfg: DataConfig) -> Documents:
    """By document when there are at least 2; one document is cut into a train part and a contiguous held-out
    stretch (`contiguous_cut`)."""
    from genscale.data.text import contiguous_cut

    if len(docs) == 1:
        text = docs[0][1]
        cut = contiguous_cut(text, held_fraction=cfg.val_fraction, source=source, setting="data.val_fraction")
        return Documents(source, documents_version(docs), [text[:cut.at]], [text[cut.at:]], cut.describe())
    train_idx, held_idx = split_documents(len(docs), val_fraction=cfg.val_fraction, seed=cfg.split_seed)
    if len(train_idx) == 0:
        raise GenscaleError(f"data.val_fraction: {cfg.val_fraction} of {len(docs)} documents leaves none to train on")
    return Documents(source, documents_version(docs), [docs[i][1] for i in train_idx],
                     [docs[i][1] for i in held_idx],
                     f"by document: {len(train_idx)} train, {len(held_idx)} held out (whole documents, "
                     f"split_seed {cfg.split_seed})")


def _relative_source(source: str, root: Path) -> str:
    """A record's source with the root's location removed, so moving the folder keeps the content id."""
    prefix = str(root)
    if not source.startswith(prefix):
        return source
    rest = source[len(prefix):]
    return rest.lstrip("/\\") if root.is_dir() else root.name + rest  # a file: "name.jsonl:LINE" or "name.txt"


def load_documents(cfg: DataConfig) -> Documents:
    """The source's documents, split into train and held-out, and the rule used.

    - shakespeare / sotu: the corpus's documents; a seeded (split_seed) choice of max(1, round(n * val_fraction))
      of them is held out, the rest train in seeded order.
    - text: read_text_source(path, field=field), strict: the first bad file or line is an error (`genscale data
      ingest` quarantines them instead); the same seeded document split, or, for a single document, its
      contiguous cut: the last val_fraction of its characters, from a line start, is held out.
    - dataset: a stored text version (its cleaned version with data.clean); held-out = its "test" split, as fixed at
      ingest; train = its "train" split in seeded order. A version ingested from nanoGPT .bin files also brings its
      token streams and tokenizer (`Documents.tokens`), which load_text_data trains on as they are.
    Documents are not deduplicated here: that is what `genscale data clean` is for.
    """
    if cfg.source in BUILTIN_TEXT_CORPORA:
        return _split_named(cfg.source, load_corpus(cfg.source), cfg)
    if cfg.source == "text":
        from genscale.data.text import read_text_source

        if cfg.path is None:
            raise GenscaleError("data.path: required for source 'text'")
        records, rejected = read_text_source(cfg.path, field=cfg.field)
        if rejected:
            bad, more = rejected[0], len(rejected) - 1
            raise GenscaleError(f"{bad.source}: {bad.reason}" + (f" ({more} more bad)" if more else "")
                                + "; `genscale data ingest` quarantines bad files and keeps the rest")
        root = Path(cfg.path)
        docs = [(_relative_source(r.source, root), r.text) for r in records]
        return _split_named(cfg.path, docs, cfg)
    if cfg.source == "dataset":
        from genscale.data.store import load_texts, load_tokens, load_version

        stored = load_version(cfg.dataset or "")
        if stored.kind != "text":
            raise GenscaleError(f"dataset {cfg.dataset}: holds {stored.kind} records, not text (the gpt family "
                                "trains on text)")
        if cfg.clean:
            from genscale.data.clean import clean_version

            stored, _ = clean_version(stored)
        texts = load_texts(stored)
        train_idx = np.flatnonzero(stored.split_mask("train"))
        held_idx = np.flatnonzero(stored.split_mask("test"))
        if len(train_idx) == 0 or len(held_idx) == 0:
            raise GenscaleError(f"dataset {cfg.dataset}: {len(train_idx)} train and {len(held_idx)} test documents; "
                                "both splits need at least one")
        train_idx = train_idx[np.random.default_rng(cfg.split_seed).permutation(len(train_idx))]
        ingested = _ingest_split(stored)
        split = (f"stored splits: {len(train_idx)} train, {len(held_idx)} test documents (fixed at ingest"
                 + (f": {ingested})" if ingested else ")"))
        return Documents(cfg.dataset or stored.id, stored.id, [texts[i] for i in train_idx],
                         [texts[i] for i in held_idx], split, load_tokens(stored))
    raise GenscaleError(f"data.source: '{cfg.source}' is not a text source (choose {', '.join(BUILTIN_TEXT_CORPORA)}, "
                        "text, or dataset with a stored text dataset)")


def _ingest_split(stored: Version) -> str | None:
    """The split statement of the ingest a stored version descends from (None for versions ingested before
    ingest recorded one)."""
    from genscale.data.store import load_version

    while "ingest" not in stored.meta["operation"] and stored.meta.get("parent"):
        stored = load_version(stored.meta["parent"])
    return stored.meta["operation"].get("ingest", {}).get("split")


def _cache_key(version: str, split: str, cfg: DataConfig, tokenizer: TextTokenizer | None) -> str:
    settings: dict[str, Any] = {
        "format": CACHE_FORMAT, "version": version, "split": split, "split_seed": cfg.split_seed,
        "val_fraction": cfg.val_fraction,
        "tokenizer": tokenizer.sha256 if tokenizer is not None else {"kind": cfg.tokenizer,
                                                                      "vocab_size": cfg.vocab_size}}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def encode_documents(tokenizer: TextTokenizer, documents: Sequence[str], *, description: str = "tokenizing"
                     ) -> np.ndarray:
    """Every document's tokens followed by EOT, concatenated: (sum of lengths + len(documents),) in token_dtype."""
    dtype = token_dtype(tokenizer.vocab_size)
    batches: list[list[str]] = [[]]
    size = 0
    for doc in documents:  # batches of about _BATCH_CHARACTERS bound the memory HF's Encoding objects take
        if size >= _BATCH_CHARACTERS:
            batches.append([])
            size = 0
        batches[-1].append(doc)
        size += len(doc)
    parts: list[np.ndarray] = []
    bar = progress(transient=True)
    task = bar.add_task(description, total=len(documents))
    with bar if sum(map(len, documents)) >= _PROGRESS_MIN_CHARACTERS else contextlib.nullcontext():
        for batch in batches:
            for ids in tokenizer.encode_batch(batch):
                parts.append(np.array([*ids, tokenizer.eot_id], dtype=dtype))
            bar.update(task, advance=len(batch))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _memmap(path: Path, dtype: np.dtype, n: int) -> np.ndarray:
    if path.stat().st_size != n * dtype.itemsize:
        raise ValueError(f"{path}: {path.stat().st_size} bytes, expected {n} tokens of {dtype.itemsize} bytes")
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))


def _load_cached(folder: Path, tokenizer: TextTokenizer | None) -> tuple[TextTokenizer, np.ndarray, np.ndarray]:
    """(tokenizer, train, val) from a complete cache folder; OSError/ValueError/KeyError/GenscaleError if damaged."""
    meta = json.loads((folder / "meta.json").read_text())
    if tokenizer is None:
        tokenizer = TextTokenizer.load(folder / "tokenizer.json")
    if tokenizer.sha256 != meta["tokenizer_sha256"]:
        raise ValueError("tokenizer does not match meta.json")
    dtype = np.dtype(meta["dtype"])
    return tokenizer, _memmap(folder / "train.bin", dtype, meta["train_tokens"]), \
        _memmap(folder / "val.bin", dtype, meta["val_tokens"])


def _build(folder: Path, docs: Documents, cfg: DataConfig, tokenizer: TextTokenizer | None) -> None:
    train_docs, held_docs = docs.train, docs.held
    if tokenizer is None:
        with console.status(f"training a {cfg.tokenizer} tokenizer (vocab {cfg.vocab_size}) on "
                            f"{len(train_docs)} documents"):
            tokenizer = train_tokenizer(cfg.tokenizer, train_docs, vocab_size=cfg.vocab_size)
    if docs.tokens is not None and docs.tokens[0].sha256 == tokenizer.sha256:  # ingested token ids, as they are
        train, val = np.asarray(docs.tokens[1]), np.asarray(docs.tokens[2])
    else:
        train = encode_documents(tokenizer, train_docs, description="tokenizing train")
        val = encode_documents(tokenizer, held_docs, description="tokenizing held-out")
    tokenizer.save(folder / "tokenizer.json")
    atomic_write_bytes(folder / "train.bin", train.tobytes())
    atomic_write_bytes(folder / "val.bin", val.tobytes())
    meta = {"format": CACHE_FORMAT, "version": docs.version, "split": docs.split, "tokenizer_sha256": tokenizer.sha256,
            "tokenizer_kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "dtype": train.dtype.str,
            "train_tokens": len(train), "val_tokens": len(val), "train_documents": len(train_docs),
            "val_documents": len(held_docs), "train_characters": sum(map(len, train_docs)),
            "val_characters": sum(map(len, held_docs)), "split_seed": cfg.split_seed,
            "val_fraction": cfg.val_fraction}
    atomic_write_bytes(folder / "meta.json", json.dumps(meta, indent=1).encode())  # last: marks it complete


def load_text_data(cfg: DataConfig, *, tokenizer: TextTokenizer | None = None) -> TextData:
    """Documents -> tokenizer -> train.bin / val.bin, cached; memmaps of both.

    The tokenizer is trained on the train documents only with data.tokenizer / data.vocab_size, unless one is given
    (fine-tuning reuses its parent's as it is) or the stored dataset holds ingested token ids (nanoGPT's train.bin /
    val.bin), whose tokenizer and streams are used as they are (train.bin's order: a prefix is the nested subset).
    A second call with the same settings loads the cached files without training or encoding again; a damaged cache
    folder is rebuilt.
    """
    docs = load_documents(cfg)
    if docs.tokens is not None and tokenizer is None:
        tokenizer = docs.tokens[0]  # the ids were ingested with it: train on them, not on a new tokenizer
    folder = cache_dir() / "tokens" / _cache_key(docs.version, docs.split, cfg, tokenizer)
    try:
        tok, train_full, val = _load_cached(folder, tokenizer)
    except (OSError, ValueError, KeyError, TypeError, GenscaleError):  # missing, incomplete or damaged: rebuild
        (folder / "meta.json").unlink(missing_ok=True)
        _build(folder, docs, cfg, tokenizer)
        tok, train_full, val = _load_cached(folder, tokenizer)
    if cfg.size is not None and cfg.size > len(train_full):
        raise GenscaleError(f"data.size: {cfg.size} tokens requested, the train split has {len(train_full)}")
    if len(val) < 2:
        raise GenscaleError(f"{docs.name}: the held-out split has {len(val)} token(s); it needs at least 2")
    train = train_full if cfg.size is None else train_full[:cfg.size]
    return TextData(docs.name, docs.version, tok, folder / "tokenizer.json", train_full, train, val, docs.held,
                    docs.split, folder)
