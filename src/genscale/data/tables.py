"""Columnar sources: Parquet files and folders saved by Hugging Face `datasets` (`Dataset.save_to_disk`).

Read with pyarrow alone (no `datasets` at run time). A source is
  - a .parquet file, or a folder of them (sorted by path, read as one table; every file needs the column);
  - a `save_to_disk` folder: state.json naming its Arrow stream files (data-00000-of-00001.arrow, ...), plus
    dataset_info.json; a DatasetDict folder (dataset_dict.json, one sub-folder per split) is read at one split.
One column is ingested: an image column (the HF Image feature, a struct {bytes, path}, or raw encoded bytes) or a
text column (string). Without a column name the one column of the wanted kind is taken; none or several is an
error naming the file and its columns. Each row is a record whose source is "FILE#ROW" (0-based within the file);
what is wrong with a row (no bytes, a null or empty text) comes back as a reason, never raised, so the ingest can
quarantine it as it does a broken file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from genscale.errors import GenscaleError

PARQUET_SUFFIX = ".parquet"


@dataclass(frozen=True)
class TableRows:
    """One column of a columnar source, row by row."""

    kind: str  # "image" or "text"
    column: str
    sources: list[str]  # "FILE#ROW" of each row
    values: list[bytes | str | None]  # encoded image bytes or text; None when the row holds none
    problems: list[str | None]  # why a row gives no record (one line), None when it may


def is_table_source(path: Path) -> bool:
    """A .parquet file, a folder holding .parquet files, or a `datasets` save_to_disk folder."""
    if path.is_file():
        return path.suffix.lower() == PARQUET_SUFFIX
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()
                              or any(path.glob(f"*{PARQUET_SUFFIX}")))


def _files(path: Path, split: str) -> list[Path]:
    """Every file of the source, in order (arrow streams of a `datasets` folder, else .parquet files)."""
    if (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise GenscaleError(f"{path / 'dataset_dict.json'}: cannot read ({e})") from None
        if split not in splits:
            raise GenscaleError(f"{path}: no split '{split}' (has {', '.join(splits)}); choose one with --split")
        path = path / split
    if (path / "state.json").is_file():
        try:
            names = [f["filename"] for f in json.loads((path / "state.json").read_text())["_data_files"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise GenscaleError(f"{path / 'state.json'}: not a `datasets` save_to_disk state ({e})") from None
        return [path / n for n in names]
    return [path] if path.is_file() else sorted(path.glob(f"*{PARQUET_SUFFIX}"))


def _read(file: Path, *, schema_only: bool = False) -> pa.Table | pa.Schema:
    return (_read_parquet if file.suffix.lower() == PARQUET_SUFFIX else _read_arrow)(file, schema_only)


def _read_arrow(file: Path, schema_only: bool) -> pa.Table | pa.Schema:
    try:
        with pa.memory_map(str(file)) as source:
            stream = pa.ipc.open_stream(source)
            return stream.schema if schema_only else stream.read_all()
    except (OSError, pa.ArrowInvalid) as e:
        raise GenscaleError(f"{file}: cannot read as an Arrow stream ({e})") from None


def _read_parquet(file: Path, schema_only: bool) -> pa.Table | pa.Schema:
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(file) if schema_only else pq.read_table(file)
    except (OSError, pa.ArrowInvalid) as e:
        raise GenscaleError(f"{file}: cannot read as Parquet ({e})") from None


def _column_kind(t: pa.DataType) -> str | None:
    """"image" (HF Image struct {bytes, path}, or binary), "text" (string), or None."""
    if pa.types.is_struct(t):
        return "image" if t.get_field_index("bytes") >= 0 and _column_kind(t.field("bytes").type) == "image" else None
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "image"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    return None


def _choose_column(file: Path, schema: pa.Schema, column: str | None, kind: str) -> tuple[str, str]:
    """(column, its kind) by name, or the one image/text column (of `kind` unless auto)."""
    listing = ", ".join(f"{f.name} ({_column_kind(f.type) or f.type})" for f in schema)
    if column is not None:
        if column not in schema.names:
            raise GenscaleError(f"{file}: no column '{column}' (has {listing})")
        found = _column_kind(schema.field(column).type)
        if found is None or kind not in ("auto", found):
            want = "an image or text" if kind == "auto" else f"an {kind}" if kind == "image" else "a text"
            raise GenscaleError(f"{file}: column '{column}' is {schema.field(column).type}, not {want} column "
                                f"(columns: {listing})")
        return column, found
    candidates = [f.name for f in schema if _column_kind(f.type) is not None
                  and kind in ("auto", _column_kind(f.type))]
    what = "image or text" if kind == "auto" else kind
    if not candidates:
        raise GenscaleError(f"{file}: no {what} column (columns: {listing})")
    if len(candidates) > 1:
        raise GenscaleError(f"{file}: {len(candidates)} {what} columns ({listing}); choose one with --column")
    return candidates[0], _column_kind(schema.field(candidates[0]).type) or ""


def _source_files(path: Path, split: str) -> list[Path]:
    files = _files(path, split)
    if not files:
        raise GenscaleError(f"{path}: no {PARQUET_SUFFIX} files found")
    return files


def table_kind(path: str | Path, *, column: str | None = None, split: str = "train") -> str:
    """"image" or "text": the kind of the column `read_table_rows` would read, from the first file's schema alone."""
    files = _source_files(Path(path), split)
    return _choose_column(files[0], _read(files[0], schema_only=True), column, "auto")[1]


def read_table_rows(path: str | Path, *, column: str | None = None, kind: str = "auto", split: str = "train"
                    ) -> TableRows:
    """The rows of one column of a Parquet / `datasets` source (see the module docstring)."""
    files = _source_files(Path(path), split)
    name, found = _choose_column(files[0], _read(files[0], schema_only=True), column, kind)
    sources: list[str] = []
    values: list[bytes | str | None] = []
    problems: list[str | None] = []
    for file in files:
        table = _read(file)
        if name not in table.schema.names or _column_kind(table.schema.field(name).type) != found:
            raise GenscaleError(f"{file}: no {found} column '{name}' as in {files[0]} (has "
                                f"{', '.join(table.schema.names)})")
        for row, cell in enumerate(table.column(name).to_pylist()):
            sources.append(f"{file}#{row}")
            value, problem = _cell(cell, found)
            values.append(value)
            problems.append(problem)
    return TableRows(found, name, sources, values, problems)


def _cell(cell: object, kind: str) -> tuple[bytes | str | None, str | None]:
    if kind == "image":
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if data is None:
            where = cell.get("path") if isinstance(cell, dict) else None
            return None, "no image bytes" + (f" (only a path: {where})" if where else " (null)")
        return bytes(data), None  # type: ignore[arg-type]
    if cell is None:
        return None, "empty record (null)"
    if not str(cell).strip():
        return None, "empty record (whitespace only)"
    return str(cell), None
