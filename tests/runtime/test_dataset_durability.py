"""Durability of a token dataset: renames are flushed to their folder, a resume checks every journaled
shard, a damaged journal never costs a committed shard, and shards are committed by time as well as by rows."""
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from meltok_runtime.dataset import open_dataset
from meltok_runtime.dataset.writer import DatasetWriter
from meltok_runtime.io.atomic import atomic_directory, atomic_output

from .corpus_fixtures import assert_same_tokens, run_cli
from .test_dataset import assert_one_line_error

pytest.importorskip("pyarrow")


@pytest.fixture
def disk_events(monkeypatch):
    """Records ``("replace", target)`` and ``("fsync", is_folder, (device, inode))`` in the order they happen."""
    events, real_replace, real_fsync = [], os.replace, os.fsync

    def replace(source, target):
        real_replace(source, target)
        events.append(("replace", Path(target)))

    def fsync(handle):
        info = os.fstat(handle)
        events.append(("fsync", stat.S_ISDIR(info.st_mode), (info.st_dev, info.st_ino)))
        real_fsync(handle)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    return events


def folder_synced_after_rename(events, target: Path) -> bool:
    identity = (os.stat(target.parent).st_dev, os.stat(target.parent).st_ino)
    renamed = events.index(("replace", target))
    return ("fsync", True, identity) in events[renamed + 1:]


def test_atomic_outputs_flush_their_folder_after_the_rename(tmp_path, disk_events):
    with atomic_output(tmp_path / "file.bin") as tmp:
        tmp.write_bytes(b"data")
    assert folder_synced_after_rename(disk_events, tmp_path / "file.bin")
    with atomic_directory(tmp_path / "folder") as tmp:
        (tmp / "inside.txt").write_text("x")
    assert folder_synced_after_rename(disk_events, tmp_path / "folder")


def _row(identity, item_id):
    return {"id": item_id, "source": f"{item_id}.wav", "tokens": np.full((12, 3), len(item_id), np.uint16),
            "num_samples": 5000, "sample_rate": 44100, "channels": 1, "duration": 5000 / 44100,
            "model_id": identity["model_id"], "backend": "ort-cpu"}


def _three_shards(folder: Path, disk_events=None) -> dict:
    from meltok_runtime.dataset.items import dataset_identity

    identity = dataset_identity(None)
    writer = DatasetWriter.open(folder, identity, shard_rows=1)
    for index in range(3):
        writer.add(_row(identity, f"item{index}"))
    writer.close(complete=False)
    return identity


def test_a_committed_shard_and_the_new_journal_are_flushed_to_their_folders(tmp_path, disk_events):
    _three_shards(tmp_path / "ds")
    assert folder_synced_after_rename(disk_events, tmp_path / "ds" / "shards" / "part-00002.parquet")
    folder = os.stat(tmp_path / "ds")
    assert ("fsync", True, (folder.st_dev, folder.st_ino)) in disk_events  # the journal's creation


def _snapshot(folder: Path) -> dict:
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file() and path.name != ".lock"}


def test_a_damaged_middle_journal_line_stops_the_resume_and_deletes_nothing(local_dataset, clips, tmp_path):
    dataset = shutil.copytree(local_dataset, tmp_path / "ds")
    journal = dataset / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    assert len(lines) == 3
    journal.write_bytes(lines[0] + lines[1][:len(lines[1]) // 2] + b"\n" + lines[2])  # line 2 cut short
    before = _snapshot(dataset)
    result = run_cli("tokenize", clips, "-o", dataset, "--backend", "ort-cpu", "--shard-rows", 2)
    assert_one_line_error(result, "line 2 of")
    assert "later lines are intact" in result.stderr and "restore the journal" in result.stderr
    assert _snapshot(dataset) == before  # no committed shard deleted or rewritten, the journal untouched
    again = run_cli("tokenize", clips, "-o", dataset, "--backend", "ort-cpu", "--shard-rows", 2)
    assert_one_line_error(again, "line 2 of")  # the same answer: the refused run let go of the dataset's lock


def test_a_torn_last_line_is_still_cut_off_and_its_work_redone(tmp_path):
    identity = _three_shards(tmp_path / "ds")
    journal = tmp_path / "ds" / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:2]) + lines[2][:10])  # killed while appending the last line
    writer = DatasetWriter.open(tmp_path / "ds", identity, shard_rows=1)
    assert writer.done == {"item0", "item1"} and journal.read_bytes() == b"".join(lines[:2])
    assert sorted(path.name for path in (tmp_path / "ds" / "shards").iterdir()) == ["part-00000.parquet",
                                                                                     "part-00001.parquet"]
    writer.release()


@pytest.mark.parametrize("damage, problem", [("delete", "is missing"), ("flip", "SHA-256"), ("truncate", "bytes")])
def test_a_journaled_shard_missing_or_altered_stops_the_resume(damage, problem, local_dataset, clips, tmp_path):
    dataset = shutil.copytree(local_dataset, tmp_path / "ds")
    shard = dataset / "shards" / "part-00001.parquet"
    content = shard.read_bytes()
    if damage == "delete":
        shard.unlink()
    elif damage == "flip":
        shard.write_bytes(content[:100] + bytes([content[100] ^ 1]) + content[101:])
    else:
        shard.write_bytes(content[:-10])
    before = _snapshot(dataset)
    result = run_cli("tokenize", clips, "-o", dataset, "--backend", "ort-cpu", "--shard-rows", 2)
    assert_one_line_error(result, "part-00001.parquet")
    assert problem in result.stderr and "line 2 of journal.jsonl" in result.stderr
    assert _snapshot(dataset) == before


def test_shards_are_committed_by_time_as_well_as_by_rows(tmp_path, monkeypatch):
    from meltok_runtime.dataset import writer as writer_module
    from meltok_runtime.dataset.items import dataset_identity

    clock = [1000.0]
    monkeypatch.setattr(writer_module.time, "monotonic", lambda: clock[0])
    identity = dataset_identity(None)
    writer = DatasetWriter.open(tmp_path / "ds", identity, shard_rows=1000, commit_seconds=60)
    journal = tmp_path / "ds" / "journal.jsonl"
    for step, item_id in ((0, "a"), (30, "b"), (29, "c")):
        clock[0] += step
        writer.add(_row(identity, item_id))
    assert not journal.exists()  # the oldest row waited 59 s
    clock[0] += 1
    writer.add(_row(identity, "d"))  # 60 s: a shard of four rows
    assert [json.loads(line)["ids"] for line in journal.read_text().splitlines()] == [["a", "b", "c", "d"]]
    clock[0] += 5
    writer.fail("bad", "bad.wav", "too short")
    clock[0] += 60
    writer.fail("worse", "worse.wav", "empty")  # failures alone are committed by time too
    assert [entry["id"] for entry in json.loads(journal.read_text().splitlines()[1])["failures"]] == ["bad", "worse"]
    writer.close(complete=True)


def test_commit_seconds_option_commits_small_shards(clips, encoded, tmp_path):
    result = run_cli("tokenize", clips, "-o", tmp_path / "ds", "--backend", "ort-cpu", "--shard-rows", 1000,
                     "--commit-seconds", 0.001)
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert info["counts"]["items"] == 5 and info["counts"]["shards"] >= 2  # by rows alone: one shard
    assert_same_tokens(tmp_path / "ds", encoded)
    assert len(open_dataset(tmp_path / "ds").ids()) == 5
