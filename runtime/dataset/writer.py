"""Writing a token dataset so that a kill at any moment loses nothing and duplicates nothing.

Rows are buffered and written as one Parquet shard at a time (temporary file, fsync, rename);
only then is one line appended to ``journal.jsonl`` (fsync) naming the shard, its ids and the
failures since the previous line. The journal is the truth: on reopening, a shard file that no
journal line names (killed between rename and journal) and temporary files are removed and their
items done again; a torn last journal line is cut off. Journaled shards are never rewritten.
``dataset.json`` is a summary derived from the journal, rewritten atomically after every line.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from pathlib import Path

from meltok_runtime.io.atomic import atomic_output
from meltok_runtime.dataset.reader import (FORMAT, FORMAT_VERSION, INFO_NAME, JOURNAL_NAME, SHARD_FOLDER, DatasetError, arrow_schema,
                      pyarrow_modules, read_info, token_dtype, tokens_to_arrow)
from meltok_runtime.errors import ModelMismatchError, OutputPathError
from meltok_runtime.manifest import file_sha256

log = logging.getLogger("meltok_runtime")

ROW_GROUP_ROWS = 64  # rows read at once by ``Dataset.get`` and by streaming readers
_SHARD_NAME = re.compile(r"part-(\d{5,})\.parquet")
LOCK_NAME = ".lock"
IDENTITY_KEYS = ("model_id", "bundle_sha256", "sample_rate", "token_layout")


class DatasetWriter:
    """Append-only writer of a dataset folder; ``open`` creates it or resumes it.

    ``identity``: ``model_id``, ``model_name``, ``bundle_sha256``, ``sample_rate`` and
    ``token_layout`` of the model making the tokens; a dataset made by another is refused.
    """

    def __init__(self, folder: Path, identity: dict, metadata_columns: list, shard_rows: int):
        self.folder, self.identity, self.metadata_columns = folder, identity, list(metadata_columns)
        self.shard_rows = shard_rows
        self.dtype = token_dtype(identity["token_layout"]["codebook_size"])
        self.shards, self.failures, self.done = [], [], set()
        self._rows, self._failed_since = [], []
        self._journal = folder / JOURNAL_NAME

    @classmethod
    def open(cls, folder, identity: dict, metadata_columns=(), shard_rows: int = 1000) -> "DatasetWriter":
        pyarrow_modules()  # fail before any work when pyarrow is missing
        folder = Path(folder)
        info = read_info(folder) if folder.is_dir() else None
        if info is None and folder.is_dir() and any(path.name != LOCK_NAME for path in folder.iterdir()):
            raise OutputPathError(f"output folder {str(folder)!r} holds files but no {INFO_NAME}; give a new or empty "
                                  "folder (nothing in it was touched)")
        if folder.exists() and not folder.is_dir():
            raise OutputPathError(f"output path {str(folder)!r} is a file; give a folder for the dataset")
        if not folder.parent.is_dir():
            raise OutputPathError(f"folder {str(folder.parent)!r} does not exist; create it first")
        writer = cls(folder, identity, metadata_columns, shard_rows)
        folder.mkdir(exist_ok=True)
        writer._lock()
        info = read_info(folder)  # again, under the lock: another job may have finished meanwhile
        if info is not None:
            writer._check_same(info)
            writer._replay()
        writer._write_info(complete=False)
        (folder / SHARD_FOLDER).mkdir(exist_ok=True)
        return writer

    # ----------------------------------------------------------------- resume
    def _lock(self) -> None:
        """Hold an exclusive lock on ``DATASET/.lock`` while this process writes (released at exit, even on a kill)."""
        self._lock_file = open(self.folder / LOCK_NAME, "a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise DatasetError(f"another job is writing dataset {str(self.folder)!r}; wait for it or stop it "
                               "first") from None

    def _check_same(self, info: dict) -> None:
        for key in IDENTITY_KEYS:
            if info.get(key) != self.identity[key]:
                raise ModelMismatchError(
                    f"dataset {str(self.folder)!r} was made with {key} {info.get(key)!r}, this run uses "
                    f"{self.identity[key]!r}; tokenize with the same bundle (-b) or into a new folder")
        if info.get("metadata_columns", []) != self.metadata_columns:
            raise DatasetError(f"dataset {str(self.folder)!r} has metadata columns {info.get('metadata_columns')}, "
                               f"these sources give {self.metadata_columns}; use the same manifests or a new folder")

    def _replay(self) -> None:
        """Rebuild the state from the journal; cut a torn last line; remove uncommitted shard files."""
        good = 0
        if self._journal.is_file():
            data = self._journal.read_bytes()
            for line in data.splitlines(keepends=True):
                try:
                    entry = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    break
                if not line.endswith(b"\n"):
                    break
                good += len(line)
                if entry["shard"] is not None:
                    self.shards.append(entry["shard"])
                self.done.update(entry["ids"])
                self.failures.extend(entry["failures"])
                self.done.update(failure["id"] for failure in entry["failures"])
            if good < len(data):
                log.warning("cutting a torn last line off %s (the job was killed while writing it)", self._journal)
                with open(self._journal, "r+b") as handle:
                    handle.truncate(good)
        committed = {Path(shard["file"]).name for shard in self.shards}
        for path in sorted((self.folder / SHARD_FOLDER).glob("*")):
            if path.name.startswith(".") or (_SHARD_NAME.fullmatch(path.name) and path.name not in committed):
                log.info("removing %s: written by an interrupted run but never committed", path)
                path.unlink()

    # ----------------------------------------------------------------- writing
    def add(self, row: dict) -> None:
        """Buffer one row (the schema's columns plus ``backend``); a full buffer becomes a shard."""
        self._rows.append(row)
        if len(self._rows) >= self.shard_rows:
            self.commit()

    def fail(self, item_id: str, source: str, reason: str) -> None:
        """Record an item that could not be tokenized (journaled with the next commit)."""
        self._failed_since.append({"id": item_id, "source": source, "reason": reason})

    def commit(self) -> None:
        """Write the buffered rows as a shard (if any), then journal it with the failures since the last commit."""
        if not self._rows and not self._failed_since:
            return
        shard = self._write_shard(self._rows) if self._rows else None
        entry = {"shard": shard, "ids": [row["id"] for row in self._rows], "failures": self._failed_since}
        with open(self._journal, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if shard is not None:
            self.shards.append(shard)
        self.failures.extend(self._failed_since)
        self.done.update(entry["ids"])
        self.done.update(failure["id"] for failure in self._failed_since)
        self._rows, self._failed_since = [], []
        self._write_info(complete=False)

    def close(self, complete: bool) -> dict:
        """Commit what is buffered, write the final summary (returned) and release the lock."""
        self.commit()
        info = self._write_info(complete=complete)
        self._lock_file.close()
        return info

    def _write_shard(self, rows: list) -> dict:
        pa, pq = pyarrow_modules()
        number = 1 + max((int(_SHARD_NAME.fullmatch(Path(s["file"]).name).group(1)) for s in self.shards), default=-1)
        relative = f"{SHARD_FOLDER}/part-{number:05d}.parquet"
        columns = {name: [row.get(name) for row in rows] for name in arrow_schema(self.metadata_columns).names}
        columns["tokens"] = tokens_to_arrow([row["tokens"] for row in rows], self.dtype)
        table = pa.table(columns, schema=arrow_schema(self.metadata_columns, self.dtype))
        with atomic_output(self.folder / relative) as tmp:
            pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        path = self.folder / relative
        return {"file": relative, "rows": len(rows), "hours": sum(row["duration"] for row in rows) / 3600,
                "bytes": path.stat().st_size, "sha256": file_sha256(path),
                "backends": sorted({row["backend"] for row in rows})}

    def _write_info(self, complete: bool) -> dict:
        info = {"format": FORMAT, "format_version": FORMAT_VERSION, **self.identity,
                "metadata_columns": self.metadata_columns, "complete": complete,
                "counts": {"items": sum(s["rows"] for s in self.shards), "failed": len(self.failures),
                           "shards": len(self.shards)},
                "hours": sum(s["hours"] for s in self.shards), "shards": self.shards, "failures": self.failures}
        with atomic_output(self.folder / INFO_NAME) as tmp:
            tmp.write_text(json.dumps(info, indent=1))
        return info
