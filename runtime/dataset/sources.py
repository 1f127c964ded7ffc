"""The items of a corpus job: audio files found in folders, named directly, or listed in manifests.

A source (``SRC`` of ``meltok-rt tokenize``) is one of

- a folder: every audio file below it (recursive, hidden files and folders skipped), sorted; the id
  of an item is the folder's name joined with the file's path inside it (``music/a/b.ogg``);
- an audio file: one item whose id is the file name;
- a manifest, recognised by its suffix: ``.txt``/``.lst`` (one path per line; blank lines and lines
  starting with ``#`` skipped), ``.csv``/``.tsv`` (a header row with a ``path`` column, optional
  ``id`` and any other columns) or ``.jsonl`` (one object per line with ``path``, optional ``id`` and
  other keys). Relative paths are relative to the manifest's folder; an item without an id takes
  the path as written. Other columns are metadata, carried into the dataset as string columns
  (JSON-lines values that are not strings are stored as their JSON text).

Ids must be unique across all sources; a duplicate is refused before any work starts.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from meltok_runtime.errors import SourceError

from meltok_runtime.io.formats import AUDIO_SUFFIXES  # the runtime's one list, shared with training's corpus

MANIFEST_SUFFIXES = frozenset({".txt", ".lst", ".csv", ".tsv", ".jsonl"})


@dataclass(frozen=True)
class Item:
    """One audio file to tokenize: its dataset id, its path, its size in bytes (the progress measure)
    and the metadata columns of its manifest row."""

    id: str
    path: str
    size: int = 0
    metadata: dict = field(default_factory=dict)


def collect_items(sources, reserved_columns=()) -> tuple[list[Item], list[str]]:
    """Every item of ``sources`` in order, and the metadata column names (first appearance order).

    ``reserved_columns``: names a manifest column may not take (the dataset's own columns).
    """
    items, seen = [], {}
    for source in sources:
        for item in _items_of(Path(source)):
            if item.id in seen:
                raise SourceError(f"two items have the id {item.id!r} ({seen[item.id]!r} and {item.path!r}); "
                                  "give unique ids in a manifest with an id column")
            seen[item.id] = item.path
            items.append(item)
    columns = list(dict.fromkeys(key for item in items for key in item.metadata))
    clashing = sorted(set(columns) & set(reserved_columns))
    if clashing:
        raise SourceError(f"manifest columns {clashing} clash with the dataset's own columns; rename them")
    return items, columns


def _items_of(source: Path):
    if source.is_dir():
        return _folder_items(source)
    if not source.exists():
        raise SourceError(f"source {str(source)!r} does not exist; give audio folders, files or manifests")
    suffix = source.suffix.lower()
    if suffix in MANIFEST_SUFFIXES:
        return _manifest_items(source, suffix)
    return [Item(source.name, str(source), source.stat().st_size)]


def _folder_items(folder: Path) -> list[Item]:
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or path.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        if path.is_file():
            found.append(Item(f"{folder.resolve().name}/{relative.as_posix()}", str(path), path.stat().st_size))
    return found


def _manifest_items(manifest: Path, suffix: str) -> list[Item]:
    try:
        text = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SourceError(f"cannot read manifest {str(manifest)!r} ({error}); give a UTF-8 text file") from None
    if suffix in (".txt", ".lst"):
        rows = [{"path": line.strip()} for line in text.splitlines() if line.strip() and not line.startswith("#")]
    elif suffix == ".jsonl":
        rows = [_json_row(line, manifest, number) for number, line in enumerate(text.splitlines(), 1)
                if line.strip()]
    else:
        rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
        if rows and "path" not in rows[0]:
            raise SourceError(f"manifest {str(manifest)!r} has columns {list(rows[0])}; expected a 'path' column")
    items = []
    for number, row in enumerate(rows, 1):
        written = row.pop("path", None)
        if not written:
            raise SourceError(f"row {number} of manifest {str(manifest)!r} has no path; give one per row")
        path = Path(written) if Path(written).is_absolute() else manifest.parent / written
        item_id = row.pop("id", None) or written
        size = path.stat().st_size if path.is_file() else 0  # a missing file becomes a recorded failure
        metadata = {key: value if isinstance(value, str) or value is None else json.dumps(value)
                    for key, value in row.items()}
        items.append(Item(str(item_id), str(path), size, metadata))
    return items


def _json_row(line: str, manifest: Path, number: int) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise SourceError(f"line {number} of manifest {str(manifest)!r} is not JSON ({error}); "
                          "expected one object per line") from None
    if not isinstance(row, dict):
        raise SourceError(f"line {number} of manifest {str(manifest)!r} is not a JSON object; "
                          "expected {\"path\": ..., \"id\": ...}")
    return row
