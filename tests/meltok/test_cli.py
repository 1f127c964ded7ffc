"""The ``meltok`` command line on real audio: convert, encode, decode, info, and its refusals."""
import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from meltok import MelTok
from meltok.cli import main
from meltok_runtime.io.tokenfile import read_tokens


@pytest.fixture(scope="module")
def converted(official_tiny_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    result = CliRunner().invoke(main, ["convert", str(official_tiny_dir / "stage1.pt"),
                                       str(official_tiny_dir / "stage2.ckpt"), "-o", str(path)])
    assert result.exit_code == 0, result.output
    return path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_encode_decode_round_trip_on_real_file(converted, tmp_path, real_clip_paths):
    source = real_clip_paths["music"]
    info = sf.info(source)
    result = run("encode", source, "-m", converted, "-o", tmp_path / "music.mtok")
    assert result.exit_code == 0, result.output
    token_file = read_tokens(tmp_path / "music.mtok")
    model = MelTok.load(converted)
    assert token_file.model_id == model.model_id
    assert token_file.num_samples == [info.frames]  # music.flac is natively 44.1 kHz
    assert token_file.tokens.shape[:2] == (1, 12)
    result = run("decode", tmp_path / "music.mtok", "-m", converted, "-o", tmp_path / "music.wav")
    assert result.exit_code == 0, result.output
    audio, rate = sf.read(tmp_path / "music.wav", dtype="float32")
    assert rate == 44100 and audio.shape == (info.frames,)
    expected = model.decode(token_file.tokens, num_samples=info.frames)[0]
    np.testing.assert_allclose(audio, expected, atol=1e-6)


def test_resampled_input_is_encoded_at_44k(converted, tmp_path, real_clip_paths):
    result = run("encode", real_clip_paths["music48k"], "-m", converted, "-o", tmp_path / "r.mtok")
    assert result.exit_code == 0, result.output
    frames = sf.info(real_clip_paths["music48k"]).frames
    assert read_tokens(tmp_path / "r.mtok").num_samples == [round(frames * 44100 / 48000)]


def test_info_describes_models_and_tokens(converted, tmp_path, golden_io):
    model = MelTok.load(converted)
    sf.write(tmp_path / "a.wav", golden_io["audio"][0], 44100)
    assert run("encode", tmp_path / "a.wav", "-m", converted, "-o", tmp_path / "a.mtok").exit_code == 0
    tokens = json.loads(run("info", tmp_path / "a.mtok").output)
    assert tokens["kind"] == "tokens" and tokens["model_id"] == model.model_id and tokens["num_samples"] == [44100]
    described = json.loads(run("info", converted).output)
    assert described["kind"] == "model" and described["config"]["tokenizer"]["codebook_size"] == 512


@pytest.mark.parametrize("case", ["missing", "directory", "not-audio", "empty", "no-output-folder"])
def test_encode_refusals_are_one_line(case, converted, tmp_path, real_clip_paths):
    source = {"missing": tmp_path / "nope.wav", "directory": tmp_path,
              "not-audio": tmp_path / "notes.wav", "empty": tmp_path / "empty.wav",
              "no-output-folder": real_clip_paths["speech"]}[case]
    (tmp_path / "notes.wav").write_text("these are not samples")
    (tmp_path / "empty.wav").write_bytes(b"")
    output = tmp_path / ("missing-folder/x.mtok" if case == "no-output-folder" else "x.mtok")
    result = run("encode", source, "-m", converted, "-o", output)
    assert result.exit_code != 0
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output
    assert not output.exists()


def test_decode_refuses_tokens_of_another_model(converted, tmp_path, golden_io):
    other = MelTok.from_config("tiny")
    other.save(tmp_path / "other.safetensors")
    sf.write(tmp_path / "a.wav", golden_io["audio"][0], 44100)
    assert run("encode", tmp_path / "a.wav", "-m", tmp_path / "other.safetensors", "-o", tmp_path / "a.mtok").exit_code == 0
    result = run("decode", tmp_path / "a.mtok", "-m", converted, "-o", tmp_path / "a-out.wav")
    assert result.exit_code != 0 and "made by model" in result.output
    assert not (tmp_path / "a-out.wav").exists()


def test_convert_refuses_non_checkpoints(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    result = run("convert", tmp_path / "junk.pt", tmp_path / "junk.pt", "-o", tmp_path / "m.safetensors")
    assert result.exit_code != 0 and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "m.safetensors").exists()
