"""Writing a token dataset so that a kill or a power cut at any moment loses nothing committed and
duplicates nothing.

Rows are buffered and written as one Parquet shard at a time (temporary file, fsync, rename, fsync
of the folder); only then is one line appended to ``journal.jsonl`` (fsync) naming the shard, its
SHA-256, its ids and the failures since the previous line. A shard is committed when it holds
``shard_rows`` rows or when its oldest row waited ``commit_seconds`` (60 s by default), so a kill
loses at most about that much work. The journal is the truth. On reopening (resume):

- a torn tail (the job was killed while appending: an unterminated or unreadable last line) is cut off;
- a damaged line *followed by intact lines* cannot come from a kill: it is refused with a one-line
  ``DatasetError`` naming the line, and nothing is changed (no shard is deleted or rewritten);
- every journaled shard must exist with its journaled size and SHA-256, else ``DatasetError`` naming
  the shard (restore it, or tokenize into a new folder); nothing is changed;
- shard files no intact line names (killed between rename and journal) and temporary files are
  removed, and their items done again.

Journaled shards are never rewritten. ``dataset.json`` is a summary derived from the journal,
rewritten atomically after every line.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
from pathlib import Path

from meltok_runtime.io.atomic import atomic_output, fsync_directory
from meltok_runtime.dataset.reader import (FORMAT, FORMAT_VERSION, INFO_NAME, JOURNAL_NAME, SHARD_FOLDER, arrow_schema,
                                           pyarrow_modules, read_info, token_dtype, tokens_to_arrow)
from meltok_runtime.errors import DatasetError, ModelMismatchError, OutputPathError
from meltok_runtime.manifest import file_sha256

log = logging.getLogger("meltok_runtime")

ROW_GROUP_ROWS = 64  # rows read at once by ``Dataset.get`` and by streaming readers
_SHARD_NAME = re.compile(r"part-(\d{5,})\.parquet")
LOCK_NAME = ".lock"
IDENTITY_KEYS = ("model_id", "bundle_sha256", "sample_rate", "token_layout")
DEFAULT_COMMIT_SECONDS = 60.0


class DatasetWriter:
    """Append-only writer of a dataset folder; ``open`` creates it or resumes it.

    ``identity``: ``model_id``, ``model_name``, ``bundle_sha256``, ``sample_rate`` and
    ``token_layout`` of the model making the tokens; a dataset made by another is refused.
    A shard is committed at ``shard_rows`` rows or once its oldest row waited ``commit_seconds``.
    """

    def __init__(self, folder: Path, identity: dict, metadata_columns: list, shard_rows: int,
                 commit_seconds: float = DEFAULT_COMMIT_SECONDS):
        if not commit_seconds > 0:
            raise DatasetError(f"commit_seconds must be positive, got {commit_seconds!r}; e.g. 60")
        self.folder, self.identity, self.metadata_columns = folder, identity, list(metadata_columns)
        self.shard_rows, self.commit_seconds = shard_rows, commit_seconds
        self._oldest = None  # time.monotonic() of the oldest row or failure not yet committed
        self.dtype = token_dtype(identity["token_layout"]["codebook_size"])
        self.shards, self.failures, self.done = [], [], set()
        self._rows, self._failed_since = [], []
        self._journal = folder / JOURNAL_NAME

    @classmethod
    def open(cls, folder, identity: dict, metadata_columns=(), shard_rows: int = 1000,
             commit_seconds: float = DEFAULT_COMMIT_SECONDS) -> "DatasetWriter":
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
        writer = cls(folder, identity, metadata_columns, shard_rows, commit_seconds)
        if not folder.is_dir():
            folder.mkdir()
            fsync_directory(folder.parent)
        writer._lock()
        try:
            info = read_info(folder)  # again, under the lock: another job may have finished meanwhile
            if info is not None:
                writer._check_same(info)
                writer._replay()
            writer._write_info(complete=False)
            if not (folder / SHARD_FOLDER).is_dir():
                (folder / SHARD_FOLDER).mkdir()
                fsync_directory(folder)
        except BaseException:
            writer.release()
            raise
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
        """Rebuild the state from the journal (see the module docstring); DatasetError, with nothing
        changed, for a damaged line before intact ones or a journaled shard missing or altered."""
        entries, good = self._read_journal()
        for entry in entries:
            if entry["shard"] is not None:
                self.shards.append(entry["shard"])
            self.done.update(entry["ids"])
            self.failures.extend(entry["failures"])
            self.done.update(failure["id"] for failure in entry["failures"])
        for number, shard in ((entry["line"], entry["shard"]) for entry in entries if entry["shard"] is not None):
            self._check_shard(shard, number)
        if self._journal.is_file() and good < self._journal.stat().st_size:
            log.warning("cutting a torn last line off %s (the job was killed while writing it)", self._journal)
            with open(self._journal, "r+b") as handle:
                handle.truncate(good)
                os.fsync(handle.fileno())
        committed = {Path(shard["file"]).name for shard in self.shards}
        for path in sorted((self.folder / SHARD_FOLDER).glob("*")):
            if path.name.startswith(".") or (_SHARD_NAME.fullmatch(path.name) and path.name not in committed):
                log.info("removing %s: written by an interrupted run but never committed", path)
                path.unlink()

    def _read_journal(self) -> tuple[list, int]:
        """The intact journal entries (each with its 1-based ``line``) and the byte length they span.

        Damaged lines are allowed only as a tail (a kill while appending); one before an intact line is
        refused, since cutting there would drop committed shards."""
        if not self._journal.is_file():
            return [], 0
        entries, good, damaged = [], 0, None
        for number, line in enumerate(self._journal.read_bytes().splitlines(keepends=True), 1):
            entry = _journal_entry(line)
            if entry is None:
                damaged = damaged or number
                continue
            if damaged is not None:
                raise DatasetError(
                    f"line {damaged} of {str(self._journal)!r} is damaged but later lines are intact (not a killed "
                    f"write: the file was altered); nothing was changed: restore the journal from a backup, or "
                    f"tokenize into a new folder")
            entries.append({**entry, "line": number})
            good += len(line)
        return entries, good

    def _check_shard(self, shard: dict, line: int) -> None:
        """A journaled shard must be there with its journaled size and SHA-256."""
        path = self.folder / shard["file"]
        if not path.is_file():
            problem = "is missing"
        elif "bytes" in shard and path.stat().st_size != shard["bytes"]:
            problem = f"has {path.stat().st_size} bytes, not the {shard['bytes']} journaled"
        elif "sha256" in shard and file_sha256(path) != shard["sha256"]:
            problem = "does not match its journaled SHA-256"
        else:
            return
        raise DatasetError(f"shard {str(path)!r} (line {line} of {JOURNAL_NAME}) {problem}; nothing was changed: "
                           "restore the shard from a backup, or tokenize into a new folder")

    # ----------------------------------------------------------------- writing
    def add(self, row: dict) -> None:
        """Buffer one row (the schema's columns plus ``backend``); a full buffer becomes a shard."""
        self._rows.append(row)
        self._oldest = self._oldest or time.monotonic()
        if len(self._rows) >= self.shard_rows or self._waited_too_long():
            self.commit()

    def fail(self, item_id: str, source: str, reason: str) -> None:
        """Record an item that could not be tokenized (journaled with the next commit)."""
        self._failed_since.append({"id": item_id, "source": source, "reason": reason})
        self._oldest = self._oldest or time.monotonic()
        if self._waited_too_long():
            self.commit()

    def _waited_too_long(self) -> bool:
        return self._oldest is not None and time.monotonic() - self._oldest >= self.commit_seconds

    def commit(self) -> None:
        """Write the buffered rows as a shard (if any), then journal it with the failures since the last commit."""
        if not self._rows and not self._failed_since:
            return
        shard = self._write_shard(self._rows) if self._rows else None
        entry = {"shard": shard, "ids": [row["id"] for row in self._rows], "failures": self._failed_since}
        created = not self._journal.exists()
        with open(self._journal, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if created:
            fsync_directory(self.folder)
        if shard is not None:
            self.shards.append(shard)
        self.failures.extend(self._failed_since)
        self.done.update(entry["ids"])
        self.done.update(failure["id"] for failure in self._failed_since)
        self._rows, self._failed_since, self._oldest = [], [], None
        self._write_info(complete=False)

    def close(self, complete: bool) -> dict:
        """Commit what is buffered, write the final summary (returned) and release the lock."""
        self.commit()
        info = self._write_info(complete=complete)
        self.release()
        return info

    def release(self) -> None:
        """Release the folder's lock (no more writing); ``close`` does it, and a stopped job does it too."""
        self._lock_file.close()

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


def _journal_entry(line: bytes) -> dict | None:
    """One journal line as ``{"shard", "ids", "failures"}``, or None when it is torn or damaged."""
    if not line.endswith(b"\n"):
        return None
    try:
        entry = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if (not isinstance(entry, dict) or not isinstance(entry.get("ids"), list)
            or not isinstance(entry.get("failures"), list)
            or not (entry.get("shard") is None or isinstance(entry["shard"], dict) and "file" in entry["shard"])):
        return None
    return entry
