"""`genscale data ingest` of Parquet, `datasets` save_to_disk folders and nanoGPT's train.bin / val.bin.

Files are written by the reference libraries (pyarrow, `datasets`, numpy's tofile as nanoGPT's prepare.py does)
from real Fashion-MNIST images and Shakespeare lines; what the store holds is compared with what was written.
"""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from genscale.config import DataConfig
from genscale.data.builtin import load_fashion_mnist
from genscale.data.corpora import load_corpus
from genscale.data.ingest import IngestOptions, ingest
from genscale.data.store import load_images, load_texts, load_tokens, load_version
from genscale.data.tokenizer import train_tokenizer
from genscale.data.tokens import load_text_data
from genscale.errors import GenscaleError


@pytest.fixture(scope="module")
def images():
    return load_fashion_mnist()["x_train"][:40]


@pytest.fixture(scope="module")
def lines():
    text = load_corpus("shakespeare")[0][1]
    return [ln for ln in text.splitlines() if len(ln.strip()) > 30][:60]


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def _image_table(images: np.ndarray, corrupt_row: int | None = None) -> pa.Table:
    cells = [{"bytes": _png(img), "path": f"{i}.png"} for i, img in enumerate(images)]
    if corrupt_row is not None:
        cells[corrupt_row] = {"bytes": cells[corrupt_row]["bytes"][:40], "path": "broken.png"}  # truncated PNG
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    return pa.table({"image": pa.array(cells, type=image_type), "label": list(range(len(images)))})


def _stored_in_source_order(version, column_values: dict[str, object]) -> dict[int, object]:
    """Row index ("FILE#ROW") -> stored value, whichever split the row landed in."""
    return {int(r.source.rsplit("#", 1)[1]): v for r, v in zip(version.records, column_values, strict=True)}


def test_parquet_images_round_trip_and_corrupt_row_is_quarantined(tmp_path, images):
    pq.write_table(_image_table(images, corrupt_row=7), tmp_path / "train.parquet")
    version, rejected = ingest(str(tmp_path / "train.parquet"), "pq-img")
    assert [r.source for r in rejected] == [f"{tmp_path / 'train.parquet'}#7"]
    assert rejected[0].reason.startswith("cannot decode image")
    stored = _stored_in_source_order(version, load_images(version))
    assert sorted(stored) == [i for i in range(len(images)) if i != 7]
    for i, img in stored.items():
        np.testing.assert_array_equal(img[0], images[i])
    assert (tmp_path / "datasets" / "versions" / version.id / "quarantine.jsonl").read_text().count("\n") == 1


def test_parquet_folder_of_texts_round_trip(tmp_path, lines):
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"text": lines[:30]}), tmp_path / "pq" / "a.parquet")
    pq.write_table(pa.table({"text": lines[30:] + ["   "]}), tmp_path / "pq" / "b.parquet")
    version, rejected = ingest(str(tmp_path / "pq"), "pq-text")
    assert [(r.source, r.reason) for r in rejected] == [(f"{tmp_path / 'pq' / 'b.parquet'}#30",
                                                          "empty record (whitespace only)")]
    got = {r.source: t for r, t in zip(version.records, load_texts(load_version("pq-text")), strict=True)}
    expected = {f"{tmp_path / 'pq' / f}#{i}": t for f, part in (("a.parquet", lines[:30]), ("b.parquet", lines[30:]))
                for i, t in enumerate(part)}
    assert got == expected


def test_datasets_save_to_disk_folder_ingests_the_same_content(tmp_path, images, lines):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(img) for img in images],
                                     "label": list(range(len(images)))}, features=features)
    texts = datasets.Dataset.from_dict({"text": lines})
    datasets.DatasetDict({"train": ds, "test": ds.select(range(5))}).save_to_disk(str(tmp_path / "img"))
    texts.save_to_disk(str(tmp_path / "txt"))
    version, rejected = ingest(str(tmp_path / "img"), "hf-img", IngestOptions(test=str(tmp_path / "img" / "test")))
    assert rejected == [] and version.meta["splits"] == {"train": len(images), "test": 5}
    x = load_images(version)
    np.testing.assert_array_equal(x[:len(images), 0], images)  # train rows in order, then the test split
    np.testing.assert_array_equal(x[len(images):, 0], images[:5])
    version, _ = ingest(str(tmp_path / "txt"), "hf-text")
    assert sorted(load_texts(version)) == sorted(lines)
    with pytest.raises(GenscaleError, match=r"no split 'validation' \(has train, test\)"):
        ingest(str(tmp_path / "img"), "x", IngestOptions(table_split="validation"))


def test_column_errors_name_the_file_and_the_columns(tmp_path, lines):
    path = tmp_path / "two.parquet"
    pq.write_table(pa.table({"title": lines[:5], "body": lines[5:10], "n": list(range(5))}), path)
    with pytest.raises(GenscaleError, match=rf"^{path}: 2 image or text columns \(title \(text\), body \(text\), "
                                            r"n \(int64\)\); choose one with --column$"):
        ingest(str(path), "x")
    with pytest.raises(GenscaleError, match=rf"^{path}: no column 'caption' \(has title \(text\), body"):
        ingest(str(path), "x", IngestOptions(column="caption"))
    version, _ = ingest(str(path), "body", IngestOptions(column="body"))
    assert sorted(load_texts(version)) == sorted(lines[5:10])


def _nanogpt_folder(tmp_path, tokenizer, train_text: str, val_text: str):
    """train.bin / val.bin as nanoGPT's prepare.py writes them (np.uint16, tofile)."""
    folder = tmp_path / "nanogpt"
    folder.mkdir()
    ids = {}
    for name, text in (("train", train_text), ("val", val_text)):
        ids[name] = np.array(tokenizer.encode(text), dtype=np.uint16)
        ids[name].tofile(folder / f"{name}.bin")
    tokenizer.save(tmp_path / "tokenizer.json")
    return folder, ids


def test_nanogpt_bin_round_trip_and_gpt_trains_on_the_stored_ids(tmp_path, lines):
    text = "\n".join(lines)
    tok = train_tokenizer("bpe", [text], vocab_size=300)
    folder, ids = _nanogpt_folder(tmp_path, tok, "\n".join(lines[:50]), "\n".join(lines[50:]))
    version, rejected = ingest(str(folder), "shake-bin", IngestOptions(tokenizer=str(tmp_path / "tokenizer.json")))
    assert rejected == [] and version.meta["splits"] == {"train": 1, "test": 1}
    stored_tok, train, test = load_tokens(version)
    assert stored_tok.sha256 == tok.sha256
    np.testing.assert_array_equal(train, ids["train"])
    np.testing.assert_array_equal(test, ids["val"])
    assert load_texts(version) == ["\n".join(lines[:50]), "\n".join(lines[50:])]
    data = load_text_data(DataConfig(source="dataset", dataset="shake-bin"))
    assert data.tokenizer.sha256 == tok.sha256
    np.testing.assert_array_equal(data.train_full, ids["train"])
    np.testing.assert_array_equal(data.val, ids["val"])


def test_nanogpt_bin_errors(tmp_path, lines):
    tok = train_tokenizer("char", lines, vocab_size=40)
    folder, _ = _nanogpt_folder(tmp_path, tok, lines[0], lines[1])
    np.array([3, 5, tok.vocab_size + 2], dtype=np.uint16).tofile(folder / "train.bin")
    with pytest.raises(GenscaleError, match=rf"train.bin: token id {tok.vocab_size + 2} \(at position 2\) is beyond "
                                            rf"the vocabulary of --tokenizer .*tokenizer.json \({tok.vocab_size} "
                                            "tokens\\)"):
        ingest(str(folder), "x", IngestOptions(tokenizer=str(tmp_path / "tokenizer.json")))
    with pytest.raises(GenscaleError, match="give --tokenizer tokenizer.json"):
        ingest(str(folder), "x")
    (folder / "train.bin").write_bytes(b"\x01\x00\x02")
    with pytest.raises(GenscaleError, match="3 bytes, not a whole number of uint16 token ids"):
        ingest(str(folder), "x", IngestOptions(tokenizer=str(tmp_path / "tokenizer.json")))
    assert json.loads((tmp_path / "tokenizer.json").read_text())["model"]["type"] == "WordLevel"


def test_lone_token_file_holds_out_its_end_and_splits_documents_at_eot(tmp_path, lines):
    tok = train_tokenizer("char", lines, vocab_size=60)
    docs = [tok.encode(t) for t in lines[:10]]
    stream = np.array([i for d in docs for i in (*d, tok.eot_id)], dtype=np.uint16)
    stream.tofile(tmp_path / "train.bin")
    tok.save(tmp_path / "tokenizer.json")
    version, _ = ingest(str(tmp_path / "train.bin"), "lone", IngestOptions(tokenizer=str(tmp_path / "tokenizer.json"),
                                                                            test_fraction=0.25))
    _, train, test = load_tokens(version)
    n_test = round(len(stream) * 0.25)
    np.testing.assert_array_equal(np.concatenate([train, test]), stream)
    assert len(test) == n_test
    assert "".join(load_texts(version)) == "".join(tok.decode(d) for d in docs)  # EOTs only separate documents
    assert version.meta["splits"]["train"] + version.meta["splits"]["test"] in (10, 11)  # one document may be cut


def _gpt2_layout_tokenizer(text: str, *, special: bool = True):
    """A byte-level BPE laid out as GPT-2's tokenizer.json is (what nanoGPT's ids come from): trained without special
    tokens, <|endoftext|> added after the merges, so its id is the last one (GPT-2: 50256)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    (hf.add_special_tokens if special else hf.add_tokens)(["<|endoftext|>"])
    return hf


def test_nanogpt_bin_of_a_gpt2_layout_tokenizer_splits_documents_at_its_own_eot_id(tmp_path, lines):
    hf = _gpt2_layout_tokenizer("\n".join(lines))
    eot = hf.token_to_id("<|endoftext|>")
    assert eot == hf.get_vocab_size() - 1 and eot != 0
    docs = [hf.encode(t).ids for t in lines[:6]]
    stream = np.array([i for d in docs for i in (*d, eot)], dtype=np.uint16)
    stream.tofile(tmp_path / "train.bin")
    hf.save(str(tmp_path / "tokenizer.json"))
    options = IngestOptions(tokenizer=str(tmp_path / "tokenizer.json"), test_fraction=0.01)
    version, _ = ingest(str(tmp_path / "train.bin"), "gpt2ids", options)
    tok, train, test = load_tokens(version)
    assert tok.eot_id == eot
    np.testing.assert_array_equal(np.concatenate([train, test]), stream)
    assert load_texts(version)[:5] == lines[:5]  # split at id `eot`, not at id 0
    assert tok.count_characters([eot]) == 1  # the EOT counts as the special token it is


def test_a_bpe_tokenizer_whose_endoftext_is_not_special_is_refused(tmp_path, lines):
    hf = _gpt2_layout_tokenizer("\n".join(lines), special=False)
    hf.save(str(tmp_path / "tokenizer.json"))
    np.zeros(4, dtype=np.uint16).tofile(tmp_path / "train.bin")
    with pytest.raises(GenscaleError, match=r"tokenizer.json: damaged tokenizer \(<\|endoftext\|> is not one of its "
                                            r"special tokens\)"):
        ingest(str(tmp_path / "train.bin"), "x", IngestOptions(tokenizer=str(tmp_path / "tokenizer.json")))
