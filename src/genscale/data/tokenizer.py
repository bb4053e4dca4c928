"""Character-level and byte-level BPE tokenizers, trained with HuggingFace `tokenizers`.

- char: one token per Unicode character; the `vocab_size - 2` most frequent characters of the training texts are
  kept, any other character becomes <unk>. Any script works: a character is a code point, not a byte.
- bpe: byte-level BPE as in GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"):
  the 256 bytes are the base vocabulary, so every text encodes and decodes exactly and nothing is unknown.

Both put <|endoftext|> at id 0; it separates documents in the token stream. A byte-level BPE tokenizer.json made
elsewhere (GPT-2's has <|endoftext|> at id 50256, its last) is read with its own EOT id, so token ids prepared with
it (nanoGPT's train.bin) keep their meaning. The saved form is HuggingFace's own
tokenizer.json (loadable with `tokenizers.Tokenizer.from_file`); the kind is read back from its model type
(WordLevel: char, BPE: bpe), so the file cannot disagree with itself about what it is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from genscale.errors import GenscaleError
from genscale.paths import atomic_write_bytes

EOT = "<|endoftext|>"  # separates documents in the token stream; id 0 in both kinds trained here
UNK = "<unk>"  # char kind only: characters outside the kept vocabulary; id 1
EOT_ID = 0
UNK_ID = 1
TOKENIZER_KINDS = ("char", "bpe")
MIN_VOCAB = {"char": (3, "EOT, UNK and one character"), "bpe": (257, "EOT and the 256 bytes")}
_KIND_OF_MODEL = {"WordLevel": "char", "BPE": "bpe"}  # HF model type -> our kind


class TextTokenizer:
    """A trained HF `tokenizers.Tokenizer` plus its kind; saved/loaded as the HF tokenizer.json text."""

    def __init__(self, hf: Tokenizer):
        self._json = hf.to_str()  # before the runtime flag below, which HF does not serialise anyway
        self.kind: str = _kind_of(self._json)
        # a document that contains the text "<|endoftext|>" (or "<unk>") encodes it as ordinary characters: only
        # the EOT ids that load_text_data inserts separate documents
        hf.encode_special_tokens = True
        self._hf = hf
        self.vocab_size: int = hf.get_vocab_size(with_added_tokens=True)
        self.eot_id: int = hf.token_to_id(EOT)
        self._special_ids = frozenset({EOT_ID, UNK_ID} if self.kind == "char" else {self.eot_id})

    def __repr__(self) -> str:
        return f"TextTokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"

    def encode(self, text: str) -> list[int]:
        """Token ids of one text (no EOT added)."""
        return self._hf.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, encoded in parallel by HF's thread pool."""
        return [e.ids for e in self._hf.encode_batch(texts)]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`; special tokens (EOT, UNK) are skipped."""
        return self._hf.decode([int(i) for i in ids], skip_special_tokens=True)

    def count_characters(self, ids: Sequence[int]) -> int:
        """How many characters `ids` stand for: len(decode(ids)) plus one per special token (EOT, UNK), which decode
        skips. The denominator of per-character perplexity, so that tokenizers of different kinds compare."""
        ids = [int(i) for i in ids]
        return len(self.decode(ids)) + sum(i in self._special_ids for i in ids)

    def to_json(self) -> str:
        """HF's tokenizer.json text; the kind is its model type."""
        return self._json

    @property
    def sha256(self) -> str:
        """Of to_json(): identifies the tokenizer (fine-tuning checks it against the parent run's)."""
        return hashlib.sha256(self._json.encode("utf-8")).hexdigest()

    def save(self, path: Path) -> None:
        atomic_write_bytes(Path(path), self._json.encode("utf-8"))

    @classmethod
    def load(cls, path: Path) -> TextTokenizer:
        """Read a saved tokenizer; GenscaleError naming the path if it is missing or damaged."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise GenscaleError(f"{path}: cannot read tokenizer ({getattr(e, 'strerror', None) or e})") from None
        try:
            return cls(_parse(text))
        except ValueError as e:
            raise GenscaleError(f"{path}: damaged tokenizer ({e})") from None

    @classmethod
    def from_json(cls, text: str) -> TextTokenizer:
        try:
            return cls(_parse(text))
        except ValueError as e:
            raise GenscaleError(f"tokenizer JSON: damaged ({e})") from None


def _kind_of(text: str) -> str:
    """"char" or "bpe" from a tokenizer.json's model type; ValueError if it is neither."""
    try:
        model_type = json.loads(text)["model"]["type"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"not a tokenizer.json: {type(e).__name__} {e}") from None
    if model_type not in _KIND_OF_MODEL:
        raise ValueError(f"model type {model_type!r} is neither WordLevel (char) nor BPE (bpe)")
    return _KIND_OF_MODEL[model_type]


def _parse(text: str) -> Tokenizer:
    """An HF tokenizer from its JSON, checked to be one of ours; ValueError with the reason otherwise."""
    kind = _kind_of(text)
    try:
        hf = Tokenizer.from_str(text)
    except Exception as e:  # HF raises a bare Exception for any serde error
        raise ValueError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if kind == "bpe":  # EOT at any id (GPT-2's is 50256), but a special token, so no text encodes to it
        special = {t.content for t in hf.get_added_tokens_decoder().values() if t.special}
        if EOT not in special:
            raise ValueError(f"{EOT} is not one of its special tokens")
        return hf
    for token, token_id in {EOT: EOT_ID, UNK: UNK_ID}.items():
        if hf.token_to_id(token) != token_id:
            raise ValueError(f"{token} is not id {token_id}")
    return hf


def train_tokenizer(kind: str, texts: Iterable[str], *, vocab_size: int) -> TextTokenizer:
    """Train a `kind` tokenizer ("char" or "bpe") of at most `vocab_size` tokens (special tokens included).

    Deterministic: the same texts and settings give the same tokenizer JSON (HF breaks frequency ties by token).
    """
    if kind not in TOKENIZER_KINDS:
        raise GenscaleError(f"data.tokenizer: unknown kind '{kind}' (choose {', '.join(TOKENIZER_KINDS)})")
    least, why = MIN_VOCAB[kind]
    if vocab_size < least:
        raise GenscaleError(f"data.vocab_size: {vocab_size} is too small for a {kind} tokenizer (at least {least}: "
                            f"{why})")
    if kind == "char":
        hf = Tokenizer(models.WordLevel(unk_token=UNK))
        # every code point its own piece; in Oniguruma (?m) lets "." match "\n" too
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"(?m)."), behavior="isolated")
        hf.decoder = decoders.Fuse()  # join the characters back without separators
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=0, special_tokens=[EOT, UNK],
                                            show_progress=False)
    else:
        hf = Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        # all 256 bytes from the start, even those the training texts lack: no text is ever unknown
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf.train_from_iterator(texts, trainer)
    return TextTokenizer(hf)
