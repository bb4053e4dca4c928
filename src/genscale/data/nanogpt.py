"""nanoGPT's prepared data: `train.bin` / `val.bin`, flat np.uint16 token ids written with `ndarray.tofile`.

nanoGPT's `data/<name>/prepare.py` writes them with no header, so the file alone does not say which tokenizer the ids
belong to (meta.pkl, a pickle, is never read here): the user names a tokenizer.json, and every id must lie below its
vocabulary size. A source is a .bin file, or a folder holding train.bin (and val.bin, which becomes the test split).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genscale.data.tokenizer import TextTokenizer
from genscale.data.tokens import token_dtype
from genscale.errors import GenscaleError

NANOGPT_DTYPE = np.dtype("<u2")  # prepare.py: np.array(ids, dtype=np.uint16).tofile(...)


def is_token_source(path: Path) -> bool:
    return (path.is_file() and path.suffix.lower() == ".bin") or (path.is_dir() and (path / "train.bin").is_file())


def token_file(path: Path) -> Path:
    """The file a token source reads: the .bin itself, or a folder's train.bin."""
    return path / "train.bin" if path.is_dir() else path


def read_token_file(path: Path, tokenizer: TextTokenizer, *, tokenizer_path: str) -> np.ndarray:
    """The token ids of a nanoGPT .bin, in the store's dtype for the tokenizer; GenscaleError if the file is not a
    whole number of uint16 ids or holds an id the tokenizer does not have."""
    size = path.stat().st_size
    if size % NANOGPT_DTYPE.itemsize:
        raise GenscaleError(f"{path}: {size} bytes, not a whole number of uint16 token ids (nanoGPT's format)")
    ids = np.fromfile(path, dtype=NANOGPT_DTYPE)
    if len(ids) and int(ids.max()) >= tokenizer.vocab_size:
        at = int(np.argmax(ids >= tokenizer.vocab_size))
        raise GenscaleError(f"{path}: token id {int(ids[at])} (at position {at}) is beyond the vocabulary of "
                            f"--tokenizer {tokenizer_path} ({tokenizer.vocab_size} tokens): not the tokenizer these "
                            "ids came from")
    return ids.astype(token_dtype(tokenizer.vocab_size))


def token_documents(stream: np.ndarray, eot_id: int) -> list[tuple[int, int]]:
    """(start, end) of each non-empty stretch between <|endoftext|> ids: the documents of the stream."""
    bounds = [-1, *np.flatnonzero(stream == eot_id).tolist(), len(stream)]
    return [(a + 1, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a + 1]
