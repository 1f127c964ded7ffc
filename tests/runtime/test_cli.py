"""``meltok-rt``: round trips, token files shared with ``meltok``, and one-line errors that leave no output."""
import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from meltok_runtime import codec as codec_module
from meltok_runtime.io.audio import load_audio, prepare_audio
from meltok_runtime.cli.main import main
from meltok_runtime.defaults import SHIPPED_DEFAULTS
from meltok_runtime.io.tokenfile import read_tokens, write_tokens

from .conftest import DATA


@pytest.fixture
def run():
    def invoke(*args, cli=main):
        return CliRunner().invoke(cli, [str(arg) for arg in args])

    return invoke


def assert_one_line_error(result, match):
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert match in lines[0], lines[0]


def test_encode_decode_round_trip(run, tiny_bundle, codec, tmp_path):
    tokens_path, audio_path = tmp_path / "music.mtok", tmp_path / "music.wav"
    result = run("encode", DATA / "music.flac", "-b", tiny_bundle, "-o", tokens_path, "--backend", "ort-cpu",
                 "--threads", 2)
    assert result.exit_code == 0, result.output
    assert "backend ort-cpu" in result.stdout
    samples, rate = load_audio(DATA / "music.flac")
    mono, _ = prepare_audio(samples[None], rate)
    token_file = read_tokens(tokens_path)
    assert token_file.model_id == codec.model_id and token_file.num_samples == [mono.shape[-1]]
    assert token_file.codebook_size == codec.codebook_size and token_file.sample_rate == 44100
    np.testing.assert_array_equal(token_file.tokens, codec.encode(mono))

    result = run("decode", tokens_path, "-b", tiny_bundle, "-o", audio_path)
    assert result.exit_code == 0, result.output
    decoded, decoded_rate = sf.read(audio_path, dtype="float32")
    assert decoded_rate == 44100 and decoded.shape == (mono.shape[-1],)
    np.testing.assert_array_equal(decoded, codec.decode(token_file.tokens, num_samples=mono.shape[-1])[0])


def test_long_input_shows_progress_and_resampling_warns(run, tiny_bundle, long_music, tmp_path, caplog):
    source = tmp_path / "long48k.wav"
    sf.write(source, prepare_audio(long_music[: 12 * 44100], 44100, 48000)[0][0], 48000)
    tokens_path = tmp_path / "long.mtok"
    result = run("encode", source, "-b", tiny_bundle, "-o", tokens_path)
    assert result.exit_code == 0, result.output
    # a logging warning: on stderr from the command line (pytest's log capture takes it here)
    assert any(r.levelname == "WARNING" and "from 48000 Hz to 44100 Hz" in r.getMessage() for r in caplog.records)
    assert "encoding" in result.stderr  # the progress bar (drawn in full on a terminal)
    assert read_tokens(tokens_path).num_samples == [12 * 44100]
    result = run("decode", tokens_path, "-b", tiny_bundle, "-o", tmp_path / "long.flac")
    assert result.exit_code == 0 and "decoding" in result.stderr
    assert sf.info(tmp_path / "long.flac").frames == 12 * 44100


def test_batch_token_file_writes_one_file_per_item(run, tiny_bundle, codec, tmp_path):
    tokens = np.random.default_rng(0).integers(0, codec.codebook_size, (2, 12, 4))
    write_tokens(tmp_path / "two.mtok", tokens, sample_rate=44100, num_samples=[5000, 3000], model_id=codec.model_id,
                 codebook_size=codec.codebook_size)
    result = run("decode", tmp_path / "two.mtok", "-b", tiny_bundle, "-o", tmp_path / "out.wav")
    assert result.exit_code == 0, result.output
    assert [sf.info(tmp_path / f"out-{i}.wav").frames for i in range(2)] == [5000, 3000]


def test_token_files_are_interchangeable_with_meltok(run, tiny_bundle, tiny_model_file, tmp_path):
    from meltok.cli import main as torch_main

    clip = tmp_path / "clip.wav"
    audio, rate = load_audio(DATA / "speech.flac")
    sf.write(clip, audio[:, : rate].T, rate)
    result = run("encode", clip, "-m", tiny_model_file, "-o", tmp_path / "torch.mtok", cli=torch_main)
    assert result.exit_code == 0, result.output
    result = run("decode", tmp_path / "torch.mtok", "-b", tiny_bundle, "-o", tmp_path / "rt.wav")
    assert result.exit_code == 0, result.output
    result = run("encode", clip, "-b", tiny_bundle, "-o", tmp_path / "rt.mtok")
    assert result.exit_code == 0, result.output
    result = run("decode", tmp_path / "rt.mtok", "-m", tiny_model_file, "-o", tmp_path / "torch.wav", cli=torch_main)
    assert result.exit_code == 0, result.output
    from_torch, from_runtime = read_tokens(tmp_path / "torch.mtok"), read_tokens(tmp_path / "rt.mtok")
    assert from_torch.model_id == from_runtime.model_id and from_torch.num_samples == from_runtime.num_samples
    assert np.mean(from_torch.tokens == from_runtime.tokens) >= 0.99
    assert sf.info(tmp_path / "rt.wav").frames == sf.info(tmp_path / "torch.wav").frames == rate


def test_info_describes_bundle_and_backends(run, tiny_bundle, codec):
    result = run("info", tiny_bundle)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model_id"] == codec.model_id and report["selected_backend"] == "ort-cpu"
    assert report["backends"]["ort-cpu"] == "available"
    assert report["backends"]["trt"].startswith("unavailable: ")
    result = run("info", tiny_bundle, "--backend", "trt")
    assert result.exit_code != 0 and json.loads(result.stdout)["selection_error"]


# ------------------------------------------------------------------------------ errors
def test_encode_errors(run, tiny_bundle, tmp_path):
    out = tmp_path / "out.mtok"
    (tmp_path / "notes.txt").write_text("not audio at all\n" * 50)
    (tmp_path / "empty.wav").write_bytes(b"")
    cases = [
        (tmp_path / "missing.wav", "does not exist"),
        (tmp_path, "is a directory"),
        (tmp_path / "notes.txt", "cannot read"),
        (tmp_path / "empty.wav", "empty"),
    ]
    for source, match in cases:
        assert_one_line_error(run("encode", source, "-b", tiny_bundle, "-o", out), match)
    assert_one_line_error(run("encode", DATA / "speech.flac", "-b", tiny_bundle, "-o", tmp_path / "no" / "out.mtok"),
                          "does not exist")
    assert_one_line_error(run("encode", DATA / "speech.flac", "-b", tmp_path / "no-bundle", "-o", out),
                          "not a folder")
    assert_one_line_error(run("encode", DATA / "speech.flac", "-b", tiny_bundle, "-o", out, "--backend", "trt"),
                          "no TensorRT engine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.wav", "notes.txt"]  # nothing written


def test_decode_errors(run, tiny_bundle, codec, tmp_path):
    out = tmp_path / "out.wav"
    good = tmp_path / "good.mtok"
    write_tokens(good, np.zeros((1, 12, 3), np.int64), sample_rate=44100, num_samples=5000, model_id=codec.model_id,
                 codebook_size=codec.codebook_size)
    (tmp_path / "garbage.mtok").write_bytes(b"\x00\x01garbage" * 20)
    (tmp_path / "truncated.mtok").write_bytes(good.read_bytes()[:-3])
    write_tokens(tmp_path / "other.mtok", np.zeros((1, 12, 3), np.int64), sample_rate=44100, num_samples=5000,
                 model_id="meltok-paper:0123456789ab", codebook_size=codec.codebook_size)
    write_tokens(tmp_path / "big.mtok", np.full((1, 12, 3), 5000), sample_rate=44100, num_samples=5000,
                 model_id=codec.model_id, codebook_size=8192)
    write_tokens(tmp_path / "v1.mtok", np.zeros((1, 12, 3), np.int64), sample_rate=44100, num_samples=5000,
                 model_id=SHIPPED_DEFAULTS[0].model_id, codebook_size=codec.codebook_size)
    cases = [
        ("missing.mtok", "does not exist"),
        ("garbage.mtok", "not a meltok token file"),
        ("truncated.mtok", "cut short"),
        ("other.mtok", "made by model 'meltok-paper:0123456789ab'"),
        ("big.mtok", "outside the codebook"),
        ("v1.mtok", f"made by meltok's default model v1 ({SHIPPED_DEFAULTS[0].model_id}, meltok 0.1.0) but this model "
                    f"is '{codec.model_id}'; decode it with that default: pip install meltok==0.1.0"),
    ]
    for name, match in cases:
        assert_one_line_error(run("decode", tmp_path / name, "-b", tiny_bundle, "-o", out), match)
    assert_one_line_error(run("decode", good, "-b", tiny_bundle, "-o", tmp_path / "no" / "out.wav"), "does not exist")
    assert_one_line_error(run("decode", good, "-b", tiny_bundle, "-o", tmp_path / "out.mp4"), "suffix")
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


def test_missing_default_bundle_says_to_pass_one(run, monkeypatch, tmp_path):
    monkeypatch.setattr(codec_module, "DEFAULT_BUNDLE", tmp_path / "models" / "default")
    assert_one_line_error(run("encode", DATA / "speech.flac", "-o", tmp_path / "x.mtok"), "-b BUNDLE")
    assert_one_line_error(run("info"), "-b BUNDLE")


# ------------------------------------------------------------------------------ the user's files are safe
@pytest.fixture(params=["meltok-rt", "meltok"])
def cli(request, tiny_bundle, tiny_model_file):
    """``(main, model options)`` of either command line; both go through one file pipeline."""
    if request.param == "meltok":
        from meltok.cli import main as torch_main

        return torch_main, ["-m", tiny_model_file]
    return main, ["-b", tiny_bundle]


@pytest.fixture
def precious(tmp_path):
    """A user's audio file (speech, 1 s, 16-bit WAV) and its bytes."""
    audio, rate = load_audio(DATA / "speech.flac")
    path = tmp_path / "precious.wav"
    sf.write(path, audio[0, :rate], rate, subtype="PCM_16")
    return path, path.read_bytes()


def test_outputs_never_replace_inputs_or_existing_files(run, cli, precious, tmp_path, caplog):
    main_cli, model = cli
    source, original = precious
    for output in (source, tmp_path / "sub" / ".." / "precious.wav"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        for force in ([], ["--force"], ["-y"]):
            assert_one_line_error(run("encode", source, *model, "-o", output, *force, cli=main_cli), "input file")
    assert source.read_bytes() == original
    tokens = tmp_path / "kept.mtok"
    tokens.write_bytes(b"the user's own notes")
    assert_one_line_error(run("encode", source, *model, "-o", tokens, cli=main_cli), "--force (-y)")
    assert tokens.read_bytes() == b"the user's own notes"
    assert run("encode", source, *model, "-o", tokens, "-y", cli=main_cli).exit_code == 0
    token_bytes = tokens.read_bytes()
    assert read_tokens(tokens).num_samples == [44100]
    assert_one_line_error(run("decode", tokens, *model, "-o", source, cli=main_cli), "--force (-y)")
    assert source.read_bytes() == original and tokens.read_bytes() == token_bytes
    misnamed = tmp_path / "tokens.wav"
    result = run("encode", source, *model, "-o", misnamed, cli=main_cli)  # a token file named .wav: a warning
    assert result.exit_code == 0, result.output
    assert any("token file" in r.getMessage() and "'.wav'" in r.getMessage() for r in caplog.records)
    misnamed_bytes = misnamed.read_bytes()
    assert_one_line_error(run("decode", misnamed, *model, "-o", misnamed, "-y", cli=main_cli), "input file")
    assert misnamed.read_bytes() == misnamed_bytes


def test_unwritable_folder_is_found_before_the_work(run, cli, precious, tmp_path, monkeypatch):
    import errno

    from meltok_runtime import pipeline
    from meltok_runtime.io import atomic

    main_cli, model = cli
    calls = []
    monkeypatch.setattr(pipeline.CodecPipeline, "encode_prepared", lambda *args, **kwargs: calls.append(args))

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(atomic, "_create_temporary", read_only)
    assert_one_line_error(run("encode", precious[0], *model, "-o", tmp_path / "x.mtok", cli=main_cli),
                          "cannot write into the folder")
    assert calls == [] and not (tmp_path / "x.mtok").exists()


def test_full_destination_is_found_before_the_work(run, cli, precious, tmp_path, monkeypatch):
    from collections import namedtuple

    from meltok_runtime import pipeline
    from meltok_runtime.io import atomic

    main_cli, model = cli
    assert run("encode", precious[0], *model, "-o", tmp_path / "t.mtok", cli=main_cli).exit_code == 0
    calls = []
    monkeypatch.setattr(pipeline.CodecPipeline, "_decode_numpy", lambda *args, **kwargs: calls.append(args))
    usage = namedtuple("usage", "total used free")
    # room for the token file but not for one second of float audio (44100 x 4 bytes) plus the reserve
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda folder: usage(10**9, 10**9, atomic.MIN_FREE_BYTES + 1000))
    assert_one_line_error(run("decode", tmp_path / "t.mtok", *model, "-o", tmp_path / "x.wav", cli=main_cli),
                          "MB free")
    assert calls == [] and not (tmp_path / "x.wav").exists()
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda folder: usage(10**9, 10**9, 0))
    assert_one_line_error(run("encode", precious[0], *model, "-o", tmp_path / "y.mtok", cli=main_cli), "MB free")
    assert not (tmp_path / "y.mtok").exists()


def test_original_rate_is_restored_on_request(run, cli, tmp_path, caplog):
    main_cli, model = cli
    frames = sf.info(DATA / "music48k.flac").frames
    assert run("encode", DATA / "music48k.flac", *model, "-o", tmp_path / "m.mtok", cli=main_cli).exit_code == 0
    token_file = read_tokens(tmp_path / "m.mtok")
    assert (token_file.source_sample_rate, token_file.source_num_samples) == (48000, [frames])
    result = run("decode", tmp_path / "m.mtok", *model, "-o", tmp_path / "model-rate.wav", cli=main_cli)
    assert result.exit_code == 0 and "writing 44100 Hz" in result.stderr and "restores 48000 Hz" in result.stderr
    assert sf.info(tmp_path / "model-rate.wav").samplerate == 44100
    result = run("decode", tmp_path / "m.mtok", *model, "-o", tmp_path / "original.flac", "--original-rate",
                 "--subtype", "PCM_16", cli=main_cli)
    assert result.exit_code == 0 and "writing 48000 Hz" in result.stderr, result.output
    info = sf.info(tmp_path / "original.flac")
    assert (info.samplerate, info.frames, info.subtype) == (48000, frames, "PCM_16")


def test_stereo_input_is_mixed_down_with_a_note(run, cli, tmp_path, caplog):
    main_cli, model = cli
    audio, rate = load_audio(DATA / "speech.flac")
    sf.write(tmp_path / "stereo.wav", np.stack([audio[0, :rate], audio[0, :rate] * 0.5], axis=1), rate)
    assert run("encode", tmp_path / "stereo.wav", *model, "-o", tmp_path / "s.mtok", cli=main_cli).exit_code == 0
    notes = [r.getMessage() for r in caplog.records if "mixing" in r.getMessage()]
    assert len(notes) == 1 and "2 channels" in notes[0]


def test_progress_outside_a_terminal_is_a_line_every_few_seconds(capsys):
    """One progress display for every command: no carriage returns when stderr is not a terminal."""
    from meltok_runtime.cli.shared import progress_bar

    with progress_bar("encoding", terminal=False, interval=0.0) as progress:
        for done in range(1, 6):
            progress(done, 5, f"{done} items")
    assert capsys.readouterr().err.splitlines() == [f"encoding: {n}/5 ({n} items)" for n in range(1, 6)]
    with progress_bar("decoding", terminal=False, interval=3600.0) as progress:
        for done in range(1, 100):
            progress(done, 99)
    assert capsys.readouterr().err == "decoding: 99/99\n"  # only the last, at the end
    with progress_bar("encoding", terminal=False, interval=3600.0) as progress:
        progress(1, 1)
    assert capsys.readouterr().err == ""  # a one-step job says nothing
