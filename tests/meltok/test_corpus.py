"""Corpus builder and reader on the shipped clips plus a band-limited copy made here."""
import json
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from meltok.errors import CorpusError
from meltok.train.corpus import SAMPLE_RATE, CorpusReader, build_corpus, is_band_limited, measure_bandwidth

DATA = Path(__file__).resolve().parents[1] / "data"
TINY_MB = 0.25  # forces several shards from ~1 minute of audio


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    """Three sources: music, speech (+ a 16 kHz round trip of it), effects (+ a .pk3 and junk)."""
    root = tmp_path_factory.mktemp("sources")
    music, speech, fx = root / "music", root / "speech", root / "fx"
    for folder, names in [(music, ["music.flac", "music48k.flac", "long_music.ogg"]),
                          (speech, ["speech.flac"]), (fx, ["effects.flac"])]:
        (folder / "sub").mkdir(parents=True)
        for name in names:
            shutil.copy(DATA / name, folder / "sub" / name)
    x, sr = sf.read(DATA / "speech.flac", dtype="float32")
    narrow = soxr.resample(soxr.resample(x.mean(1), sr, 16000, "HQ"), 16000, sr, "HQ")
    sf.write(speech / "speech_16k_up.flac", narrow, sr, subtype="PCM_16")
    y, sr = sf.read(DATA / "effects.flac", dtype="float32")
    sf.write(fx / "member.wav", y[: sr], sr, subtype="PCM_16")
    with zipfile.ZipFile(fx / "sounds.pk3", "w") as zf:
        zf.write(fx / "member.wav", "sound/boom.wav")
    (fx / "member.wav").unlink()
    (fx / "broken.ogg").write_bytes(b"OggS not really")
    (fx / "notes.txt").write_text("not audio")
    return [music, speech, fx]


def _build(sources, out, **kw):
    kw.setdefault("shard_mb", TINY_MB)
    kw.setdefault("valid_fraction", 0.25)
    kw.setdefault("test_fraction", 0.25)
    return build_corpus(sources, out, **kw)


@pytest.fixture(scope="module")
def built(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "c"
    return out, _build(sources, out)


def _by_name(manifest) -> dict:
    return {Path(f["relpath"]).name: f for f in manifest["files"]}


def test_bandwidth_stats_separate_real_and_upsampled_audio():
    x, sr = sf.read(DATA / "music.flac", dtype="float32")
    full = measure_bandwidth(x.mean(1), sr)
    assert full["above_11k_db"] > -30 and full["bandwidth_hz"] >= 20000
    assert not is_band_limited(full)
    narrow = soxr.resample(soxr.resample(x.mean(1), sr, 22050, "HQ"), 22050, sr, "HQ")
    stats = measure_bandwidth(narrow, sr)
    assert stats["above_11k_db"] < -90 and stats["bandwidth_hz"] <= 11025
    assert is_band_limited(stats)
    with pytest.raises(CorpusError):
        measure_bandwidth(np.array([np.nan], np.float32), sr)


def test_band_limited_file_is_excluded(built):
    _, man = built
    files = _by_name(man)
    bad = files["speech_16k_up.flac"]
    assert bad["band_limited"] and bad["excluded"] == "band_limited" and bad["segments"] == []
    assert bad["bandwidth"]["above_11k_db"] < -60
    for name in ["music.flac", "music48k.flac", "long_music.ogg", "speech.flac", "effects.flac", "boom.wav"]:
        assert files[name]["excluded"] is None and not files[name]["band_limited"], name
        assert files[name]["segments"], name
    assert sum(t["excluded"]["band_limited"] for t in man["totals"].values()) == 1


def test_band_limited_file_is_tagged_when_kept(sources, tmp_path):
    man = _build(sources, tmp_path / "c", exclude_band_limited=False, shard_mb=45)
    bad = _by_name(man)["speech_16k_up.flac"]
    assert bad["band_limited"] and bad["excluded"] is None and bad["segments"]
    assert sum(t["band_limited_kept"] for t in man["totals"].values()) == 1


def test_metadata_records_source_rate_and_licence(built, sources):
    _, man = built
    files = _by_name(man)
    m48 = files["music48k.flac"]
    assert (m48["sample_rate"], m48["channels"], m48["source"]) == (48000, 2, "music")
    assert m48["duration"] == pytest.approx(3.0, abs=1e-3)
    assert m48["licence"] is None  # no copyright file beside these copies
    boom = files["boom.wav"]
    assert boom["relpath"] == "sounds.pk3!sound/boom.wav" and boom["path"].endswith("sounds.pk3!sound/boom.wav")


def test_unreadable_file_is_skipped_with_a_warning(sources, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="meltok.train.corpus"):
        man = _build(sources, tmp_path / "c", shard_mb=45)
    assert any("broken.ogg" in r.getMessage() for r in caplog.records)
    broken = _by_name(man)["broken.ogg"]
    assert broken["excluded"] == "unreadable" and broken["segments"] == []
    assert "notes.txt" not in _by_name(man)


def test_splits_are_deterministic_per_file_and_disjoint(sources, built, tmp_path):
    _, man = built
    again = _build(sources, tmp_path / "again")
    assert again["files"] == man["files"] and again["totals"] == man["totals"]
    splits = {f["path"]: f["split"] for f in man["files"]}
    assert len(splits) == len(man["files"])  # each file exactly once
    assert set(splits.values()) >= {"train", "test"}
    for f in man["files"]:
        assert all(seg["shard"].startswith(f["split"] + "/") for seg in f["segments"])
    alone = _build(sources[:1], tmp_path / "alone")  # a file's split ignores the other files
    assert all(splits[f["path"]] == f["split"] for f in alone["files"])


def test_parallel_decoding_gives_the_same_corpus(sources, built, tmp_path):
    _, man = built
    assert _build(sources, tmp_path / "c", workers=2)["files"] == man["files"]
    few = _build(sources, tmp_path / "few", max_files_per_source=2)
    counts = {}
    for f in few["files"]:
        counts[f["source"]] = counts.get(f["source"], 0) + 1
    assert counts == {"music": 2, "speech": 2, "fx": 2}
    with pytest.raises(CorpusError, match="shard_mb"):
        _build(sources, tmp_path / "bad", shard_mb=0.01)


def test_holdout_sends_whole_sources_to_test(sources, tmp_path):
    man = _build(sources, tmp_path / "c", holdout=["speech", "fx"], shard_mb=45)
    for f in man["files"]:
        if f["source"] in ("speech", "fx"):
            assert f["split"] == "test", f["relpath"]
    with pytest.raises(CorpusError, match="holdout"):
        _build(sources, tmp_path / "d", holdout=["nope"])


def test_shards_are_small_flac_and_totals_add_up(built):
    out, man = built
    limit = TINY_MB * 2 ** 20
    assert max(len(v) for v in man["shards"].values()) >= 3
    for split, shards in man["shards"].items():
        for shard in shards:
            path = out / shard["path"]
            info = sf.info(path)
            assert path.stat().st_size == shard["bytes"] <= limit
            assert (info.samplerate, info.channels, info.subtype, info.format) == (SAMPLE_RATE, 1, "PCM_16", "FLAC")
            assert info.frames == shard["samples"]
        kept = [f for f in man["files"] if f["split"] == split and f["excluded"] is None]
        total = man["totals"][split]
        assert total["files"] == len(kept)
        assert total["samples"] == sum(s["samples"] for s in shards) == \
            sum(seg["length"] for f in kept for seg in f["segments"])
        assert total["hours"] == pytest.approx(total["samples"] / SAMPLE_RATE / 3600, abs=1e-4)
        for f in kept:  # resampled length, within a sample of the original duration
            assert sum(seg["length"] for seg in f["segments"]) == pytest.approx(f["duration"] * SAMPLE_RATE, abs=2)
    assert json.loads((out / "manifest.json").read_text()) == man


def test_segments_hold_the_resampled_audio(built):
    out, man = built
    f = _by_name(man)["music48k.flac"]
    stored = np.concatenate([sf.read(out / s["shard"], start=s["offset"], stop=s["offset"] + s["length"],
                                     dtype="float32")[0] for s in f["segments"]])
    x, sr = sf.read(DATA / "music48k.flac", dtype="float32")
    expected = soxr.resample(x.mean(1), sr, SAMPLE_RATE, "HQ")
    assert stored.shape == expected.shape
    assert np.abs(stored - expected).max() < 1.5 / 32767


def _stamps(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in out.glob("*/shard-*.flac")}


def test_interrupted_build_resumes_without_rewriting_shards(sources, built, tmp_path):
    _, reference = built
    out = tmp_path / "c"

    def stop_late(done, total):
        if done == total - 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _build(sources, out, progress=stop_late)
    assert not (out / "manifest.json").exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    first = _stamps(out)
    assert first
    seen = []
    man = _build(sources, out, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] and len(seen) < seen[-1][1]  # only the rest was decoded
    assert man["files"] == reference["files"] and man["totals"] == reference["totals"]
    after = _stamps(out)
    assert all(after[k] == v for k, v in first.items())
    assert _build(sources, out) == man  # a finished corpus: nothing rewritten
    assert _stamps(out) == after
    with pytest.raises(CorpusError, match="other files or options"):
        _build(sources, out, seed=7)


def test_foreign_output_folder_is_refused(sources, tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "mine.txt").write_text("x")
    with pytest.raises(CorpusError, match="not empty"):
        _build(sources, tmp_path / "c")


def test_folder_without_audio_fails_in_one_line(tmp_path):
    from click.testing import CliRunner

    from meltok.cli import main

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("no audio here")
    with pytest.raises(CorpusError, match="no audio file"):
        build_corpus([tmp_path / "docs"], tmp_path / "corpus")
    assert not (tmp_path / "corpus").exists()
    result = CliRunner().invoke(main, ["data", "build", str(tmp_path / "docs"), "-o", str(tmp_path / "corpus")])
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("files")]
    assert result.exit_code == 1 and len(lines) == 1 and "no audio file" in lines[0], result.stderr


def test_heldout_clips_read_the_manifest_with_its_version_check(built, tmp_path):
    from meltok.train.heldout import export_clips

    out, _ = built
    copy = Path(shutil.copytree(out, tmp_path / "corpus"))
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(CorpusError, match="version-1 meltok corpus manifest"):
        export_clips(copy, tmp_path / "clips")


def test_random_crops(built):
    out, man = built
    reader = CorpusReader(out, "train")
    assert reader.num_samples == man["totals"]["train"]["samples"]
    rng = np.random.default_rng(0)
    for _ in range(30):
        crop = reader.random_crop(rng)
        assert crop.shape == (24320,) and crop.dtype == np.float32
        assert -6.001 <= 20 * np.log10(np.abs(crop).max()) <= -0.999
    a = CorpusReader(out, "train").random_crop(np.random.default_rng(5), 1000)
    b = CorpusReader(out, "train").random_crop(np.random.default_rng(5), 1000)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(CorpusError):
        CorpusReader(out, "dev")
    with pytest.raises(CorpusError, match="build the corpus"):
        CorpusReader(out / "missing", "train")
