"""Token datasets: the folder ``meltok-rt tokenize`` writes, its schema, and a reader that streams it.

Layout of a dataset folder::

    DATASET/dataset.json              summary (below), rewritten atomically after every shard
    DATASET/journal.jsonl             append-only record of committed shards and failures (resume)
    DATASET/shards/part-00000.parquet one Parquet file per shard, written atomically, never rewritten

Parquet schema, one row per audio item:

=============  ==========================  =====================================================
column         type                        content
=============  ==========================  =====================================================
id             string                      item id (unique in the dataset)
source         string                      path the audio was read from
tokens         list<list<uint16>>          codes ``[rows, T']``: row 0 = lowest mel bins, time
                                           fastest (uint32 for codebooks over 65,536 codes)
num_samples    int64                       length at the model's sample rate (decode trims to it)
sample_rate    int32                       the source file's own sample rate (Hz)
channels       int32                       the source file's channel count (mixed down to mono)
duration       float64                     seconds (``num_samples / model sample rate``)
model_id       string                      the model that made the tokens
(metadata)     string (nullable)           manifest columns, carried through
=============  ==========================  =====================================================

Read it with ``pyarrow.parquet.read_table("DATASET/shards")``, Hugging Face
``datasets.load_dataset("parquet", data_files="DATASET/shards/*.parquet")``, or this module::

    from meltok_runtime.dataset import open_dataset
    dataset = open_dataset("DATASET")
    for item in dataset:              # one shard, one row group at a time
        item.id, item.tokens          # tokens: [rows, T'] numpy
    item = dataset.get("music/a.ogg")

``dataset.json`` keys: ``format`` (``"meltok-dataset"``), ``format_version``, ``model_id``,
``model_name``, ``bundle_sha256`` (SHA-256 of the bundle's manifest, which lists every graph's
hash), ``sample_rate``, ``token_layout`` (rows, codebook size, dtype, columns per second, window
settings), ``metadata_columns``, ``complete``, ``counts`` (items, failed, shards), ``hours``,
``shards`` (file, rows, hours, bytes, sha256, backend) and ``failures`` (id, source, reason).

``open_dataset`` also reads Parquet files in this schema without a ``dataset.json`` (for example
tokens a language model generated): a file, or a folder of ``*.parquet`` files; only ``id`` and
``tokens`` are required.
"""
from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meltok_runtime.errors import DatasetError
from meltok_runtime.optional import import_optional

FORMAT = "meltok-dataset"
FORMAT_VERSION = 1
INFO_NAME = "dataset.json"
JOURNAL_NAME = "journal.jsonl"
SHARD_FOLDER = "shards"
COLUMNS = ("id", "source", "tokens", "num_samples", "sample_rate", "channels", "duration", "model_id")
INSTALL = "pip install -e '.[dataset]' (pyarrow), in the clone's folder"


def pyarrow_modules():
    """``(pyarrow, pyarrow.parquet)``, or MissingDependencyError saying how to install them."""
    pa = import_optional("pyarrow", install=INSTALL, purpose="token datasets")
    return pa, import_optional("pyarrow.parquet", install=INSTALL, purpose="token datasets")


def token_dtype(codebook_size: int) -> np.dtype:
    """The compact unsigned type holding every code of a codebook."""
    return np.dtype(np.uint16 if codebook_size <= 2 ** 16 else np.uint32)


def arrow_schema(metadata_columns=(), dtype=np.uint16):
    """The Parquet schema of a shard (see the module docstring)."""
    pa, _ = pyarrow_modules()
    fields = [("id", pa.string()), ("source", pa.string()), ("tokens", pa.list_(pa.list_(pa.from_numpy_dtype(dtype)))),
              ("num_samples", pa.int64()), ("sample_rate", pa.int32()), ("channels", pa.int32()),
              ("duration", pa.float64()), ("model_id", pa.string())]
    return pa.schema(fields + [(name, pa.string()) for name in metadata_columns])


def tokens_to_arrow(arrays: list, dtype):
    """A list of ``[rows, T'_i]`` arrays as one ``list<list<dtype>>`` Arrow array (no Python loops over codes)."""
    pa, _ = pyarrow_modules()
    rows = [array.shape[0] for array in arrays]
    inner_lengths = np.concatenate([[array.shape[1]] * array.shape[0] for array in arrays]) if arrays else []
    inner_offsets = np.concatenate([[0], np.cumsum(inner_lengths)]).astype(np.int32)
    outer_offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int32)
    values = (np.concatenate([array.reshape(-1) for array in arrays]) if arrays else np.zeros(0)).astype(dtype)
    inner = pa.ListArray.from_arrays(pa.array(inner_offsets), pa.array(values))
    return pa.ListArray.from_arrays(pa.array(outer_offsets), inner)


def tokens_from_arrow(value) -> np.ndarray:
    """One ``tokens`` cell (an Arrow list of lists) as a numpy ``[rows, T']`` array."""
    rows = value.values
    flat = rows.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(rows), -1) if len(rows) else flat.reshape(0, 0)


@dataclass(frozen=True)
class DatasetItem:
    """One row of a dataset. ``tokens``: ``[rows, T']``; ``num_samples`` is None when the row has none."""

    id: str
    tokens: np.ndarray
    num_samples: int | None = None
    source: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    duration: float | None = None
    model_id: str | None = None
    metadata: dict = field(default_factory=dict)


def read_info(folder) -> dict | None:
    """The ``dataset.json`` of ``folder``, or None when it has none."""
    path = Path(folder) / INFO_NAME
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{str(path)!r} is not readable JSON ({error}); restore it or tokenize again") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise DatasetError(f"{str(path)!r} is not a meltok dataset description (format {FORMAT!r} expected)")
    if info.get("format_version", 0) > FORMAT_VERSION:
        raise DatasetError(f"{str(path)!r} has format version {info['format_version']}; this meltok reads up to "
                           f"{FORMAT_VERSION}: upgrade meltok")
    return info


class Dataset:
    """Parquet shards of token rows, read one row group at a time (never the whole dataset at once)."""

    def __init__(self, shards: list[Path], info: dict | None = None):
        self.shards = shards
        self.info = info
        self._index = None  # id -> (shard number, row), built from the id columns on first ``get``

    @property
    def model_id(self) -> str | None:
        return None if self.info is None else self.info.get("model_id")

    def __len__(self) -> int:
        _, pq = pyarrow_modules()
        return sum(pq.ParquetFile(shard).metadata.num_rows for shard in self.shards)

    def __iter__(self):
        return self.items()

    def items(self, ids=None):
        """Rows in shard order; with ``ids``, only those (in shard order)."""
        wanted = None if ids is None else set(ids)
        _, pq = pyarrow_modules()
        for shard in self.shards:
            parquet = _open_shard(pq, shard)
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group)
                for row in range(table.num_rows):
                    if wanted is None or table.column("id")[row].as_py() in wanted:
                        yield _item(table, row)

    def ids(self) -> list[str]:
        """Every id, reading only the id columns."""
        _, pq = pyarrow_modules()
        return [value for shard in self.shards for value in pq.read_table(shard, columns=["id"]).column(0).to_pylist()]

    def get(self, item_id: str) -> DatasetItem:
        """The row with id ``item_id`` (reads one row group); DatasetError when there is none."""
        _, pq = pyarrow_modules()
        if self._index is None:
            self._index = {}
            for number, shard in enumerate(self.shards):
                column = pq.read_table(shard, columns=["id"]).column(0).to_pylist()
                self._index.update((value, (number, row)) for row, value in enumerate(column))
        if item_id not in self._index:
            raise DatasetError(f"no item with id {item_id!r} in this dataset; list them with .ids()")
        number, row = self._index[item_id]
        parquet = _open_shard(pq, self.shards[number])
        starts = np.cumsum([0] + [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)])
        group = bisect.bisect_right(starts, row) - 1
        return _item(parquet.read_row_group(group), row - int(starts[group]))


def open_dataset(path) -> Dataset:
    """A dataset folder written by ``meltok-rt tokenize``, a folder of Parquet files, or one Parquet file."""
    path = Path(path)
    if path.is_file():
        return Dataset([path])
    if not path.is_dir():
        raise DatasetError(f"dataset {str(path)!r} does not exist; give a folder written by meltok-rt tokenize "
                           "or Parquet files")
    info = read_info(path)
    if info is not None:
        shards = [path / entry["file"] for entry in info.get("shards", [])]
        missing = [str(shard) for shard in shards if not shard.is_file()]
        if missing:
            raise DatasetError(f"shard {missing[0]!r} listed in {INFO_NAME} is missing; restore it or tokenize again")
        return Dataset(shards, info)
    shards = sorted(path.glob("*.parquet")) + sorted((path / SHARD_FOLDER).glob("*.parquet"))
    if not shards:
        raise DatasetError(f"{str(path)!r} holds no {INFO_NAME} and no *.parquet files; give a dataset folder")
    return Dataset(shards)


def _open_shard(pq, shard: Path):
    try:
        parquet = pq.ParquetFile(shard)
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read shard {str(shard)!r} as Parquet ({error}); restore it") from None
    missing = {"id", "tokens"} - set(parquet.schema_arrow.names)
    if missing:
        raise DatasetError(f"shard {str(shard)!r} lacks the column(s) {sorted(missing)}; expected the schema of "
                           "meltok_runtime.dataset")
    return parquet


def _item(table, row: int) -> DatasetItem:
    names = table.column_names

    def cell(name):
        return table.column(name)[row].as_py() if name in names else None

    metadata = {name: cell(name) for name in names if name not in COLUMNS}
    return DatasetItem(id=cell("id"), tokens=tokens_from_arrow(table.column("tokens")[row]),
                       num_samples=cell("num_samples"), source=cell("source"), sample_rate=cell("sample_rate"),
                       channels=cell("channels"), duration=cell("duration"), model_id=cell("model_id"),
                       metadata=metadata)
