"""What ``meltok init``, ``convert``, ``data build`` and ``data clips`` write: never over an input,
an existing output only with ``--force``, an unwritable folder refused before the work; and
``meltok encode -m`` with an export bundle."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from meltok import MelTok
from meltok.cli import main
from meltok.train.corpus.manifest import MANIFEST_FORMAT, MANIFEST_VERSION
from meltok_runtime.io.tokenfile import read_tokens

SHIPPED_BUNDLE = Path(__file__).resolve().parents[2] / "runtime" / "models" / "default"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result, exit_code=1) -> str:
    assert result.exit_code == exit_code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_init_writes_a_preset_with_seeded_random_weights(tmp_path):
    result = run("init", "--preset", "tiny", "-o", tmp_path / "a.safetensors", "--seed", "3")
    assert result.exit_code == 0, result.output
    model = MelTok.load(tmp_path / "a.safetensors")
    assert model.config == MelTok.from_config("tiny").config
    assert model.model_id in result.output and "random weights" in result.output
    again = run("init", "--preset", "tiny", "-o", tmp_path / "b.safetensors", "--seed", "3")
    other = run("init", "--preset", "tiny", "-o", tmp_path / "c.safetensors", "--seed", "4")
    assert MelTok.load(tmp_path / "b.safetensors").model_id == model.model_id  # same seed, same weights
    assert MelTok.load(tmp_path / "c.safetensors").model_id != model.model_id, other.output
    assert "is a directory" in one_error_line(run("init", "--preset", "tiny", "-o", tmp_path), exit_code=2)


def test_init_refuses_an_existing_file_unless_forced(tmp_path):
    precious = tmp_path / "model.safetensors"
    precious.write_bytes(b"the user's own file")
    line = one_error_line(run("init", "--preset", "tiny", "-o", precious))
    assert "exists" in line and "--force" in line
    assert precious.read_bytes() == b"the user's own file"
    result = run("init", "--preset", "tiny", "-o", precious, "--force")
    assert result.exit_code == 0, result.output
    assert MelTok.load(precious).config == MelTok.from_config("tiny").config


def test_init_warns_on_a_suffix_that_is_not_safetensors(tmp_path, caplog):
    result = run("init", "--preset", "tiny", "-o", tmp_path / "model.wav")
    assert result.exit_code == 0, result.output
    assert "model.wav is written as a model file but its suffix '.wav' suggests otherwise" in caplog.text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc as an unwritable folder")
def test_unwritable_destination_is_refused_before_the_work(tmp_path, official_tiny_dir):
    line = one_error_line(run("init", "--preset", "paper", "-o", "/proc/model.safetensors"))
    assert "cannot write into the folder '/proc'" in line
    line = one_error_line(run("convert", official_tiny_dir / "stage1.pt", official_tiny_dir / "stage2.ckpt",
                              "-o", "/proc/official.safetensors"))
    assert "cannot write into the folder" in line


def test_convert_never_writes_over_its_inputs_or_an_existing_file(tmp_path, official_tiny_dir):
    stage1, stage2 = tmp_path / "stage1.pt", tmp_path / "stage2.ckpt"
    stage1.write_bytes((official_tiny_dir / "stage1.pt").read_bytes())
    stage2.write_bytes((official_tiny_dir / "stage2.ckpt").read_bytes())
    before = stage2.read_bytes()
    for target in (stage1, stage2):
        line = one_error_line(run("convert", stage1, stage2, "-o", target, "--force"))
        assert "is the input file" in line
    assert stage2.read_bytes() == before
    existing = tmp_path / "official.safetensors"
    existing.write_text("keep me")
    assert "exists; pass --force" in one_error_line(run("convert", stage1, stage2, "-o", existing))
    assert existing.read_text() == "keep me"
    result = run("convert", stage1, stage2, "-o", existing, "--force")
    assert result.exit_code == 0, result.output
    assert MelTok.load(existing).model_id in result.output


def test_data_build_refuses_an_output_inside_a_source(tmp_path, real_clip_paths):
    source = tmp_path / "music"
    source.mkdir()
    (source / "song.flac").write_bytes(real_clip_paths["effects"].read_bytes())
    line = one_error_line(run("data", "build", source, "-o", source / "corpus"))
    assert "lies inside or around the input" in line and not (source / "corpus").exists()
    assert "is the input" in one_error_line(run("data", "build", source, "-o", source))
    assert sorted(p.name for p in source.iterdir()) == ["song.flac"]


def test_data_clips_refuses_the_corpus_and_a_non_empty_folder(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
                                                      "files": []}))
    assert "is the input" in one_error_line(run("data", "clips", corpus, "-o", corpus))
    assert "lies inside or around" in one_error_line(run("data", "clips", corpus, "-o", corpus / "eval"))
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "notes.txt").write_text("mine")
    line = one_error_line(run("data", "clips", corpus, "-o", clips))
    assert "not empty" in line and "--force" in line
    assert [p.name for p in clips.iterdir()] == ["notes.txt"]
    # with --force the checks pass and the (empty) corpus is what stops it
    assert "no file" in one_error_line(run("data", "clips", corpus, "-o", clips, "--force"))


def test_encode_accepts_an_export_bundle_as_model(tmp_path, real_clip_paths):
    from meltok_runtime.cli.main import main as runtime_main

    result = run("encode", real_clip_paths["speech"], "-m", SHIPPED_BUNDLE, "-o", tmp_path / "s.mtok")
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(runtime_main, ["encode", str(real_clip_paths["speech"]), "-b", str(SHIPPED_BUNDLE),
                                               "-o", str(tmp_path / "rt.mtok"), "--backend", "ort-cpu"])
    assert result.exit_code == 0, result.output
    token_file, expected = read_tokens(tmp_path / "s.mtok"), read_tokens(tmp_path / "rt.mtok")
    assert token_file.model_id == expected.model_id
    np.testing.assert_array_equal(token_file.tokens, expected.tokens)
    result = run("decode", tmp_path / "s.mtok", "-m", SHIPPED_BUNDLE, "-o", tmp_path / "s.wav")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.wav").stat().st_size > 100_000


def test_eval_refuses_existing_reports_and_plot_folders_before_evaluating(tmp_path, real_clip_paths):
    clips = tmp_path / "clips" / "speech"
    clips.mkdir(parents=True)
    (clips / "speech.flac").write_bytes(real_clip_paths["speech"].read_bytes())
    model = tmp_path / "tiny.safetensors"
    assert run("init", "--preset", "tiny", "-o", model).exit_code == 0
    (tmp_path / "report.csv").write_text("mine")
    line = one_error_line(run("eval", model, tmp_path / "clips", "-o", tmp_path / "report", "--no-visqol"))
    assert "report.csv" in line and "--force" in line
    assert (tmp_path / "report.csv").read_text() == "mine" and not (tmp_path / "report.json").exists()
    (tmp_path / "anchors-anchors.json").write_text("mine")
    line = one_error_line(run("eval", model, tmp_path / "clips", "-o", tmp_path / "anchors.json", "--anchors",
                              "--no-visqol"))
    assert "anchors-anchors.json" in line and not (tmp_path / "anchors.csv").exists()
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "notes.txt").write_text("mine")
    line = one_error_line(run("eval", model, tmp_path / "clips", "--plots", plots, "--no-visqol"))
    assert "not empty" in line and [p.name for p in plots.iterdir()] == ["notes.txt"]
    assert run("eval", model, tmp_path / "clips", "-o", tmp_path / "report", "--no-visqol", "-y").exit_code == 0
    assert (tmp_path / "report.csv").read_text() != "mine"  # replaced only when asked
