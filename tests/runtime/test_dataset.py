"""Token datasets: ``meltok-rt tokenize`` output equals ``meltok-rt encode``'s, reads with pyarrow,
Hugging Face ``datasets`` and ``meltok_runtime.dataset``, records bad items, refuses what it must,
and ``detokenize`` goes back to audio."""
import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from meltok_runtime.io.audio import load_audio
from meltok_runtime.dataset import open_dataset
from meltok_runtime.dataset.writer import DatasetWriter
from meltok_runtime.errors import DatasetError, ModelMismatchError

from .conftest import DATA
from .corpus_fixtures import assert_same_tokens, run_cli

pq = pytest.importorskip("pyarrow.parquet")


def assert_one_line_error(result, match):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert match in lines[0], lines[0]


def test_tokens_equal_what_meltok_rt_encode_writes(local_dataset, encoded):
    assert_same_tokens(local_dataset, encoded)
    info = json.loads((local_dataset / "dataset.json").read_text())
    assert info["complete"] and info["counts"] == {"items": 5, "failed": 0, "shards": 3}
    assert info["model_id"] == next(iter(encoded.values())).model_id
    assert info["hours"] == pytest.approx((8 + 4.89 + 2.998 + 3 + 40) / 3600, rel=1e-3)
    from meltok_runtime.manifest import file_sha256
    assert all(file_sha256(local_dataset / shard["file"]) == shard["sha256"] for shard in info["shards"])


def test_pyarrow_and_hugging_face_datasets_read_the_shards(local_dataset, tmp_path):
    datasets = pytest.importorskip("datasets")
    table = pq.read_table(local_dataset / "shards")
    assert table.num_rows == 5
    assert str(table.schema.field("tokens").type) == "list<element: list<element: uint16>>"
    rows = {row["id"]: row for row in table.to_pylist()}
    music = rows["clips/music48k.flac"]
    assert (music["sample_rate"], music["channels"], music["num_samples"]) == (48000, 2, 132300)
    assert music["duration"] == pytest.approx(3.0)
    loaded = datasets.load_dataset("parquet", data_files=str(local_dataset / "shards" / "*.parquet"), split="train",
                                   cache_dir=str(tmp_path / "hf"))
    assert loaded.num_rows == 5
    reader = open_dataset(local_dataset)
    for row in loaded:
        tokens = np.array(row["tokens"])
        assert tokens.shape[0] == 12 and np.array_equal(tokens, reader.get(row["id"]).tokens)


def test_reader_streams_row_groups_and_gets_one_item(local_dataset, encoded, monkeypatch):
    reader = open_dataset(local_dataset)
    assert len(reader) == 5 and reader.ids() == [item.id for item in reader]
    long = reader.get("clips/long_music.ogg")
    assert long.tokens.shape == (12, 862) and long.source.endswith("long_music.ogg")
    assert [item.id for item in reader.items(ids=["clips/speech.flac"])] == ["clips/speech.flac"]
    with pytest.raises(DatasetError, match="no item with id"):
        reader.get("clips/nothing.wav")
    read_groups = []
    original = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, group, **kw: read_groups.append(group) or original(self, group, **kw))
    monkeypatch.setattr(pq, "read_table", lambda *a, **kw: pytest.fail("get() read a whole table"))
    assert np.array_equal(reader.get("clips/speech.flac").tokens, encoded["clips/speech.flac"].tokens[0])
    assert read_groups == [0]


def test_manifests_carry_ids_and_metadata_columns(tmp_path, encoded):
    (tmp_path / "list.csv").write_text(f"path,id,speaker,lang\n{DATA / 'speech.flac'},s1,anna,fr\n"
                                       f"{DATA / 'music.flac'},m1,,\nmissing.flac,x1,,\n")
    (tmp_path / "more.jsonl").write_text(json.dumps({"path": "effects.flac", "id": "e1", "lang": "none",
                                                     "tags": ["boom"]}) + "\n")
    shutil.copy(DATA / "effects.flac", tmp_path / "effects.flac")
    (tmp_path / "plain.txt").write_text(f"# one path per line\n{DATA / 'music48k.flac'}\n")
    result = run_cli("tokenize", tmp_path / "list.csv", tmp_path / "more.jsonl", tmp_path / "plain.txt",
                     "-o", tmp_path / "ds")
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "ds" / "shards")
    assert table.column_names[-3:] == ["speaker", "lang", "tags"]
    rows = {row["id"]: row for row in table.to_pylist()}
    assert sorted(rows) == sorted(["s1", "m1", "e1", str(DATA / "music48k.flac")])
    assert (rows["s1"]["speaker"], rows["s1"]["lang"], rows["e1"]["tags"], rows["m1"]["speaker"]) == \
        ("anna", "fr", '["boom"]', "")
    assert open_dataset(tmp_path / "ds").get("e1").metadata == {"speaker": None, "lang": "none", "tags": '["boom"]'}
    assert np.array_equal(open_dataset(tmp_path / "ds").get("s1").tokens, encoded["clips/speech.flac"].tokens[0])
    [failure] = json.loads((tmp_path / "ds" / "dataset.json").read_text())["failures"]
    assert failure["id"] == "x1" and "does not exist" in failure["reason"]


def test_bad_items_are_recorded_with_a_reason_and_skipped(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(DATA / "speech.flac", folder / "good.flac")
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.wav").write_text("not audio at all")
    audio, rate = load_audio(DATA / "speech.flac")
    broken = audio[:, :44100].copy()
    broken[0, 1000] = np.nan
    sf.write(folder / "nan.wav", broken.T, rate, subtype="FLOAT")
    sf.write(folder / "short.wav", audio[:, :1000].T, rate)
    result = run_cli("tokenize", folder, "-o", tmp_path / "ds")
    assert result.exit_code == 0, result.output
    assert "1 items" in result.stdout and "4 failed" in result.stdout
    info = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    reasons = {failure["id"]: failure["reason"] for failure in info["failures"]}
    assert sorted(reasons) == ["in/empty.wav", "in/nan.wav", "in/short.wav", "in/text.wav"]
    assert "empty" in reasons["in/empty.wav"] and "cannot read" in reasons["in/text.wav"]
    assert "NaN" in reasons["in/nan.wav"] and "too short" in reasons["in/short.wav"]
    assert all("\n" not in reason for reason in reasons.values())
    assert open_dataset(tmp_path / "ds").ids() == ["in/good.flac"]
    again = run_cli("tokenize", folder, "-o", tmp_path / "ds")  # failures are done: nothing is retried
    assert again.exit_code == 0 and "1 items" in again.stdout and "4 failed" in again.stdout


def test_another_model_and_foreign_folders_are_refused(local_dataset, tmp_path, clips):
    from meltok_runtime.codec import default_bundle

    bundle = shutil.copytree(default_bundle(), tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["model_id"] = "meltok-edge:000000000000"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    dataset = shutil.copytree(local_dataset, tmp_path / "ds")
    before = {path: path.read_bytes() for path in dataset.rglob("*") if path.is_file()}
    assert_one_line_error(run_cli("tokenize", clips, "-o", dataset, "-b", bundle), "was made with model_id")
    assert {path: path.read_bytes() for path in dataset.rglob("*") if path.is_file()} == before
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8 keep me")
    assert_one_line_error(run_cli("tokenize", clips, "-o", foreign), "holds files but no dataset.json")
    assert [p.name for p in foreign.iterdir()] == ["holiday.jpg"]
    assert (foreign / "holiday.jpg").read_bytes() == b"\xff\xd8 keep me"
    (tmp_path / "dup").mkdir()
    (tmp_path / "twice.txt").write_text(f"{clips / 'music.flac'}\n{clips / 'music.flac'}\n")
    assert_one_line_error(run_cli("tokenize", tmp_path / "twice.txt", "-o", tmp_path / "dup"), "two items have the id")


def test_writer_reopening_drops_uncommitted_shards_and_a_torn_journal_line(tmp_path):
    from meltok_runtime.dataset.items import dataset_identity

    identity = dataset_identity(None)
    row = {"source": "x.wav", "tokens": np.ones((12, 3), np.uint16), "num_samples": 5000, "sample_rate": 44100,
           "channels": 1, "duration": 5000 / 44100, "model_id": identity["model_id"], "backend": "ort-cpu"}
    writer = DatasetWriter.open(tmp_path / "ds", identity, shard_rows=2)
    for index in range(3):
        writer.add({**row, "id": f"item{index}"})
    writer.fail("bad", "bad.wav", "too short")  # journaled with the next commit only
    shards = tmp_path / "ds" / "shards"
    first = (shards / "part-00000.parquet").read_bytes()
    shutil.copy(shards / "part-00000.parquet", shards / "part-00001.parquet")  # renamed, then killed: no journal line
    (shards / ".part-00002.parquet.abc.tmp").write_bytes(b"half")
    with open(tmp_path / "ds" / "journal.jsonl", "a") as journal:
        journal.write('{"shard": {"file": "shards/part-0')  # killed while appending
    with pytest.raises(DatasetError, match="another job is writing"):
        DatasetWriter.open(tmp_path / "ds", identity, shard_rows=2)
    del writer  # what a kill does: its lock goes with it
    reopened = DatasetWriter.open(tmp_path / "ds", identity, shard_rows=2)
    assert reopened.done == {"item0", "item1"} and not reopened.failures
    assert sorted(p.name for p in shards.iterdir()) == ["part-00000.parquet"]
    assert (tmp_path / "ds" / "journal.jsonl").read_text().count("\n") == 1
    reopened.add({**row, "id": "item2"})
    reopened.fail("bad", "bad.wav", "too short")
    summary = reopened.close(complete=True)
    assert summary["counts"] == {"items": 3, "failed": 1, "shards": 2}
    assert (shards / "part-00000.parquet").read_bytes() == first
    assert open_dataset(tmp_path / "ds").ids() == ["item0", "item1", "item2"]
    with pytest.raises(ModelMismatchError, match="bundle_sha256"):
        DatasetWriter.open(tmp_path / "ds", {**identity, "bundle_sha256": "0" * 64})


def test_detokenize_decodes_like_meltok_rt_decode_and_resumes(local_dataset, encoded, tmp_path):
    out = tmp_path / "audio"
    result = run_cli("detokenize", local_dataset, "-o", out, "--ids", "clips/speech.flac", "--ids", "clips/music48k.flac")
    assert result.exit_code == 0, result.output
    assert "wrote 2 files" in result.stdout
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.wav")) == ["clips/music48k.wav", "clips/speech.wav"]
    token_path = tmp_path / "speech.mtok"
    from meltok_runtime.io.tokenfile import write_tokens
    token_file = encoded["clips/speech.flac"]
    write_tokens(token_path, token_file.tokens, sample_rate=44100, num_samples=token_file.num_samples,
                 model_id=token_file.model_id, codebook_size=token_file.codebook_size)
    assert run_cli("decode", token_path, "-o", tmp_path / "speech.wav").exit_code == 0
    ours, rate = sf.read(out / "clips" / "speech.wav", dtype="float32")
    theirs, _ = sf.read(tmp_path / "speech.wav", dtype="float32")
    assert rate == 44100 and ours.shape == (token_file.num_samples[0],) and np.array_equal(ours, theirs)
    stamp = (out / "clips" / "speech.wav").stat().st_mtime_ns
    again = run_cli("detokenize", local_dataset, "-o", out, "--ids", "clips/speech.flac", "--ids", "clips/effects.flac",
                    "--ids", "clips/music48k.flac")
    assert "wrote 1 files" in again.stdout and "2 already there" in again.stdout
    assert (out / "clips" / "speech.wav").stat().st_mtime_ns == stamp
    forced = run_cli("detokenize", local_dataset, "-o", out, "--ids", "clips/speech.flac", "--force")
    assert "wrote 1 files" in forced.stdout and (out / "clips" / "speech.wav").stat().st_mtime_ns != stamp
    assert_one_line_error(run_cli("detokenize", local_dataset, "-o", out, "--ids", "nope"), "not in the dataset")


def test_detokenize_reads_generated_tokens_in_the_schema_without_dataset_json(tmp_path):
    import pyarrow as pa

    from meltok_runtime.dataset.reader import tokens_to_arrow

    rng = np.random.default_rng(0)
    generated = [rng.integers(0, 8192, (12, columns)).astype(np.uint16) for columns in (10, 25)]
    table = pa.table({"id": ["lm/0", "../escape"], "tokens": tokens_to_arrow(generated, np.uint16)})
    pq.write_table(table, tmp_path / "generated.parquet")
    result = run_cli("detokenize", tmp_path / "generated.parquet", "-o", tmp_path / "out", "--format", "flac")
    assert result.exit_code == 0, result.output
    assert "wrote 1 files" in result.stdout and "not a safe relative file name" in result.stderr
    audio, rate = sf.read(tmp_path / "out" / "lm" / "0.flac")
    assert rate == 44100 and audio.shape == ((8 * 10 - 1) * 256,) and np.abs(audio).max() > 0
    assert not (tmp_path / "escape.flac").exists()


def test_progress_reports_items_hours_and_speed(clips, tmp_path):
    from meltok_runtime.dataset.job import tokenize

    seen = []
    summary = tokenize([clips / "speech.flac", clips / "effects.flac"], tmp_path / "ds", backend="ort-cpu",
                       progress=lambda stats: seen.append(stats.describe()))
    assert summary["counts"]["items"] == 2 and len(seen) == 2
    assert seen[-1].startswith("2/2 items, 0.00 h of audio,") and "x real time" in seen[-1]


def test_detokenize_refuses_two_ids_that_would_share_a_file_before_any_work(tmp_path):
    audio, rate = load_audio(DATA / "speech.flac")
    folder = tmp_path / "x"
    folder.mkdir()
    sf.write(folder / "a.flac", audio[:, :rate].T, rate)  # two different real cuts, one name apart from the suffix
    sf.write(folder / "a.ogg", audio[:, rate:2 * rate].T, rate)
    assert run_cli("tokenize", folder, "-o", tmp_path / "ds").exit_code == 0
    out = tmp_path / "audio"
    assert_one_line_error(run_cli("detokenize", tmp_path / "ds", "-o", out),
                          "ids 'x/a.flac' and 'x/a.ogg' would both be written to 'x/a.wav'")
    assert not out.exists() or not any(out.rglob("*"))
    result = run_cli("detokenize", tmp_path / "ds", "-o", out, "--keep-suffix")
    assert result.exit_code == 0 and "wrote 2 files" in result.stdout, result.output
    first, _ = sf.read(out / "x" / "a.flac.wav")
    second, _ = sf.read(out / "x" / "a.ogg.wav")
    assert first.shape == second.shape == (rate,) and not np.array_equal(first, second)


def test_detokenize_original_rate_and_short_force_behave_as_in_decode(local_dataset, encoded, tmp_path):
    out = tmp_path / "audio"
    result = run_cli("detokenize", local_dataset, "-o", out, "--ids", "clips/music48k.flac", "--original-rate")
    assert result.exit_code == 0, result.output
    audio, rate = sf.read(out / "clips" / "music48k.wav", dtype="float32")
    source, source_rate = sf.read(DATA / "music48k.flac", dtype="float32")
    assert rate == source_rate == 48000 and audio.shape == (source.shape[0],)  # the source's rate and length
    from meltok_runtime.io.tokenfile import write_tokens  # the same as meltok-rt decode --original-rate
    token_file = encoded["clips/music48k.flac"]
    write_tokens(tmp_path / "m.mtok", token_file.tokens, sample_rate=44100, num_samples=token_file.num_samples,
                 model_id=token_file.model_id, codebook_size=token_file.codebook_size,
                 source_sample_rate=token_file.source_sample_rate, source_num_samples=token_file.source_num_samples)
    assert run_cli("decode", tmp_path / "m.mtok", "-o", tmp_path / "m.wav", "--original-rate").exit_code == 0
    theirs, _ = sf.read(tmp_path / "m.wav", dtype="float32")
    assert np.array_equal(audio, theirs)
    stamp = (out / "clips" / "music48k.wav").stat().st_mtime_ns
    forced = run_cli("detokenize", local_dataset, "-o", out, "--ids", "clips/music48k.flac", "-y")
    assert "wrote 1 files" in forced.stdout and (out / "clips" / "music48k.wav").stat().st_mtime_ns != stamp
    assert sf.info(out / "clips" / "music48k.wav").samplerate == 44100  # without --original-rate: the model's
