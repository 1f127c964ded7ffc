"""``evaluate`` and ``meltok eval`` end to end on short real clips with a tiny random model."""
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from meltok import MelTok
from meltok.cli import eval_command
from meltok.evaluation import evaluate
from meltok.evaluation.inputs import clip_category
from meltok_runtime.errors import AudioInputError, BundleError, MeltokError
from meltok_runtime.pipeline import AudioCodec

CLIP_SECONDS = {"music": 1.0, "speech": 1.2, "effects": 0.75}


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory, real_clips):
    """music/, speech/, effects/ with one short real clip each (speech at 48 kHz stereo, to
    exercise resampling and mixdown), and a text file that is skipped."""
    root = tmp_path_factory.mktemp("audio")
    for category, seconds in CLIP_SECONDS.items():
        (root / category).mkdir()
        clip = real_clips[category][:int(seconds * 44100)]
        if category == "speech":
            import soxr

            stereo = soxr.resample(np.stack([clip, 0.5 * clip], axis=1), 44100, 48000)
            sf.write(root / category / "clip.wav", stereo, 48000, subtype="FLOAT")
        else:
            sf.write(root / category / "clip.flac", clip, 44100)
    (root / "README.txt").write_text("not audio\n")
    return root


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return MelTok.from_config("tiny").eval()


def test_evaluate_end_to_end(audio_dir, tiny_model, tmp_path):
    plots = _imports("matplotlib")
    report = evaluate(tiny_model, audio_dir, plot_dir=tmp_path / "plots" if plots else None,
                      output=tmp_path / "report", use_visqol=False)
    assert [clip.path for clip in report.clips] == ["effects/clip.flac", "music/clip.flac", "speech/clip.wav"]
    assert list(report.summary) == ["music", "speech", "effects", "all"]
    for clip in report.clips:
        assert clip.seconds == pytest.approx(CLIP_SECONDS[clip.category], abs=1e-3)
        assert clip.values["mel_distance"] > 0 and math.isfinite(clip.values["si_sdr"])
        assert 0 < clip.values["codebook_usage"] <= 1 and clip.values["perplexity"] >= 1
        assert clip.values["visqol"] is None
        speech = clip.category == "speech"
        assert (clip.values["pesq_wb"] is not None) == (speech and _imports("pesq"))
        assert (clip.values["stoi"] is not None) == (speech and _imports("pystoi"))
    assert report.unavailable["visqol"] == "disabled"
    everything = report.summary["all"]
    assert everything["clips"] == 3 and everything["seconds"] == pytest.approx(2.95, abs=1e-3)
    assert everything["mel_distance"]["mean"] == pytest.approx(
        np.mean([c.values["mel_distance"] for c in report.clips]))
    assert 0 < everything["codebook_usage"]["pooled"] <= 1

    table = report.table().splitlines()
    assert table[0].split()[:5] == ["category", "stat", "clips", "seconds", "mel"]
    assert [line.split()[0] for line in table[2:10:2]] == ["music", "speech", "effects", "all"]
    assert all(line.split()[0] == "median" for line in table[3:11:2])
    assert len({len(line) for line in table[:10]}) == 1  # aligned columns

    data = json.loads((tmp_path / "report.json").read_text())
    assert data["summary"]["speech"]["clips"] == 1 and len(data["clips"]) == 3
    with open(tmp_path / "report.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["category"] for row in rows] == ["effects", "music", "speech"]
    assert float(rows[1]["mel_distance"]) == pytest.approx(report.clips[1].values["mel_distance"])
    assert rows[0]["pesq_wb"] == ""  # not a speech clip
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary files left
    if plots:
        names = sorted(p.name for p in (tmp_path / "plots").iterdir())
        assert names == ["00_effects_clip.flac.png", "01_music_clip.flac.png", "02_speech_clip.wav.png"]
        assert all((tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in names)


def test_plots_without_matplotlib_fail_before_any_work(audio_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MeltokError, match="pip install matplotlib"):
        evaluate(_PassThrough(), audio_dir, plot_dir=tmp_path / "plots", output=tmp_path / "r")
    assert not list(tmp_path.iterdir())


def _imports(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


class _PassThrough:
    """A 'codec' whose tokens are the audio itself: a perfect reconstruction (an AudioCodec with no codebook)."""

    sample_rate, hop_length, frame_rate = 44100, 256, 44100 / 256
    token_rows, codebook_size, token_rate, model_id = 1, None, 44100.0, "pass-through"

    def encode(self, audio, sample_rate):
        return np.asarray(audio, dtype=np.float32).copy()

    def decode(self, tokens, num_samples=None):
        return tokens[:, :num_samples]


def test_perfect_codec_scores_zero_and_categories_mapping(audio_dir, tmp_path):
    categories = {"music/clip.flac": "music", "clip.flac": "effects", "clip": "speech"}
    report = evaluate(_PassThrough(), audio_dir, categories=categories, max_seconds=0.5, use_visqol=False,
                      output=tmp_path / "perfect.json")
    assert [clip.category for clip in report.clips] == ["effects", "music", "speech"]
    for clip in report.clips:
        assert clip.seconds == pytest.approx(0.5)
        assert clip.values["mel_distance"] == 0.0 and clip.values["lsd"] == 0.0
        assert clip.values["si_sdr"] == math.inf
        assert clip.values["codebook_usage"] is None  # no codebook_size
    assert report.summary["all"]["si_sdr"]["mean"] == math.inf
    data = json.loads((tmp_path / "perfect.json").read_text())  # valid JSON: no NaN/Infinity literals
    assert data["summary"]["all"]["si_sdr"]["mean"] == "inf"
    assert (tmp_path / "perfect.csv").is_file()


def test_evaluation_takes_audio_codecs_only(audio_dir):
    assert isinstance(_PassThrough(), AudioCodec)

    class EncodeDecodeOnly:  # encode/decode alone is not the codec contract
        encode = _PassThrough.encode
        decode = _PassThrough.decode

    with pytest.raises(TypeError, match="expected an AudioCodec"):
        evaluate(EncodeDecodeOnly(), audio_dir, max_seconds=0.5, use_visqol=False)


def test_model_file_path_and_cli(audio_dir, tiny_model, tmp_path):
    model_file = tmp_path / "tiny.safetensors"
    tiny_model.save(model_file)
    result = CliRunner().invoke(eval_command, [str(model_file), str(audio_dir), "-o", str(tmp_path / "cli"),
                                               "--max-seconds", "0.5", "--no-visqol"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("category")
    assert (tmp_path / "cli.json").is_file() and (tmp_path / "cli.csv").is_file()
    data = json.loads((tmp_path / "cli.json").read_text())
    assert data["model"] == str(model_file) and data["codebook_size"] == tiny_model.codebook_size


def test_cli_errors_are_one_line(audio_dir, tmp_path):
    (tmp_path / "not_a_bundle").mkdir()
    result = CliRunner().invoke(eval_command, [str(tmp_path / "not_a_bundle"), str(audio_dir)])
    assert result.exit_code == 1 and "manifest.json" in result.output and "Traceback" not in result.output
    with pytest.raises(BundleError):
        evaluate(tmp_path / "not_a_bundle", audio_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AudioInputError, match="no audio file"):
        evaluate(_PassThrough(), tmp_path / "empty")


@pytest.mark.parametrize("relative,expected", [
    ("music/a/b.flac", "music"), ("podcasts/x.wav", "podcasts"), ("long_music.ogg", "music"),
    ("music48k.flac", "music"), ("speech.flac", "speech"), ("effects.flac", "effects"), ("noise.wav", "other")])
def test_clip_category(relative, expected):
    assert clip_category(Path(relative)) == expected
