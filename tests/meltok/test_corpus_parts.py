"""Corpus parts (``meltok data parts``): self-contained one-shard corpora of bounded size that a
training run on a borrowed GPU receives in pieces; the reader picks up parts that arrive late."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from meltok.cli import main as meltok_cli
from meltok.errors import CorpusError
from meltok.train.corpus import CorpusReader, build_corpus, read_manifest
from meltok.train.corpus.parts import PartsReader, pack_parts
from meltok.train.data import open_reader

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The shipped real clips as one train split in shards of at most 0.25 MiB (several shards)."""
    sources = tmp_path_factory.mktemp("sources") / "clips"
    sources.mkdir()
    for name in ("music.flac", "speech.flac", "effects.flac"):
        shutil.copy(DATA / name, sources / name)
    out = tmp_path_factory.mktemp("corpus") / "corpus"
    build_corpus([sources], out, valid_fraction=0.0, test_fraction=0.0, shard_mb=0.25)
    return out


def test_parts_are_corpora_of_one_shard_that_together_hold_the_split(corpus, tmp_path):
    manifest = read_manifest(corpus)
    shards = manifest["shards"]["train"]
    assert len(shards) >= 3
    parts = pack_parts(corpus, tmp_path / "parts", part_mb=0.25)
    assert len(parts) == len(shards)
    total = 0
    for part, shard in zip(parts, shards):
        reader = CorpusReader(part, "train")  # each part reads as a corpus of its own
        total += reader.num_samples
        assert (part / shard["path"]).read_bytes() == (corpus / shard["path"]).read_bytes()
        assert sum(f.stat().st_size for f in part.rglob("*") if f.is_file()) < 0.25 * 2 ** 20 + 2 ** 16
    assert total == CorpusReader(corpus, "train").num_samples


def test_a_limited_number_of_parts_is_spread_over_the_corpus(corpus, tmp_path):
    shards = read_manifest(corpus)["shards"]["train"]
    parts = pack_parts(corpus, tmp_path / "parts", max_parts=2, part_mb=0.25)
    picked = [json.loads((p / "manifest.json").read_text())["shards"]["train"][0]["path"] for p in parts]
    assert picked == [shards[0]["path"], shards[-1]["path"]]


def test_oversized_shards_are_refused_in_one_line(corpus, tmp_path):
    with pytest.raises(CorpusError, match="--shard-mb 0.1"):
        pack_parts(corpus, tmp_path / "parts", part_mb=0.1)


def test_the_reader_picks_up_a_part_that_arrives_while_it_runs(corpus, tmp_path):
    parts = pack_parts(corpus, tmp_path / "packed", part_mb=0.25)
    live = tmp_path / "live"
    live.mkdir()
    shutil.copytree(parts[0], live / parts[0].name)
    reader = open_reader(live, "train")
    assert isinstance(reader, PartsReader) and list(reader.parts) == [parts[0].name]
    first = reader.num_samples
    reader.refresh_seconds = 0.0
    shutil.copytree(parts[1], live / ".incoming")  # carried in under another name, then renamed in
    rng = np.random.default_rng(0)
    reader.random_crop(rng, 4096)
    assert list(reader.parts) == [parts[0].name]  # a folder being copied is not a part yet
    (live / ".incoming").rename(live / parts[1].name)
    crop = reader.random_crop(rng, 4096)
    assert list(reader.parts) == [parts[0].name, parts[1].name] and reader.num_samples > first
    assert crop.dtype == np.float32 and crop.shape == (4096,) and np.abs(crop).max() > 0.1


def test_an_empty_parts_folder_is_refused_with_the_fix(tmp_path):
    (tmp_path / "part-00").mkdir()
    with pytest.raises(CorpusError, match="meltok data parts"):
        open_reader(tmp_path, "train")


def test_data_parts_command(corpus, tmp_path):
    result = CliRunner().invoke(meltok_cli, ["data", "parts", str(corpus), "-o", str(tmp_path / "p"),
                                             "--part-mb", "0.25", "--max-parts", "2"])
    assert result.exit_code == 0, result.output
    assert "2 parts" in result.output and len(list((tmp_path / "p").glob("part-*/manifest.json"))) == 2


def test_stage1_trains_on_a_parts_folder(corpus, tmp_path):
    """What a borrowed-GPU run does, on the CPU with a tiny budget: train on the parts carried so far."""
    parts = pack_parts(corpus, tmp_path / "packed", max_parts=2, part_mb=0.25)
    live = tmp_path / "live"
    live.mkdir()
    shutil.copytree(parts[0], live / parts[0].name)
    run = tmp_path / "run"
    result = CliRunner().invoke(meltok_cli, ["train", "stage1", "--data", str(live), "-o", str(run), "--preset",
                                             "tiny", "--steps", "2", "--batch-size", "2", "--set",
                                             "crop_samples=12032", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (run / "model.safetensors").exists()
    assert max(f.stat().st_size for f in run.rglob("*") if f.is_file()) < 16 * 2 ** 20
