"""The input matrix of issue 6 through both command lines: ``meltok`` (torch, a tiny model file) and
``meltok-rt`` (runtime, the same model's bundle).

Accepted: every WAV sample format (8/16/24/32-bit PCM, 32/64-bit float), FLAC, OGG, MP3, other
sample rates (resampled, with a warning on stderr), stereo and 6 channels (mixed down), audio
shorter than one token column, digital silence and full-scale clipped audio. Refused, each with
exit code != 0, one line ``Error: ...``, no traceback and no output file: the cases of
``REFUSALS`` below.

Already covered elsewhere, so left out here: the encode refusals missing file, directory, empty
file, non-audio file and missing output folder (both CLIs: ``tests/runtime/test_cli.py::
test_encode_errors``, ``tests/meltok/test_cli.py::test_encode_refusals_are_one_line``), and the
``meltok-rt decode`` refusals of ``COVERED``.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from meltok.cli import main as torch_cli
from meltok_runtime.io.audio import mixdown
from meltok_runtime.cli.main import main as runtime_cli
from meltok_runtime.io.tokenfile import read_tokens, write_tokens

from . import tiny_assets

RATE = 44100
HALF_SECOND = RATE // 2
CLIS = ("meltok", "meltok-rt")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """As in tests/meltok/test_train.py: on this busy 2-core machine two spinning OpenMP threads make
    the tiny model about 100x slower than one."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def music(real_clips) -> np.ndarray:
    """Half a second of real music, mono float32."""
    return real_clips["music"][RATE: RATE + HALF_SECOND]


def _model_args(cli: str, tiny, model=None) -> list:
    if cli == "meltok":
        return ["-m", str(model or tiny.model_file)]
    return ["-b", str(model or tiny.bundle), "--backend", "ort-cpu", "--threads", "1"]


def run(cli: str, tiny, command: str, *args, model=None):
    """``meltok``/``meltok-rt`` COMMAND ARGS with the tiny model file or bundle (or ``model``), in process."""
    main = torch_cli if cli == "meltok" else runtime_cli
    return CliRunner().invoke(main, [command, *map(str, args), *_model_args(cli, tiny, model)])


def run_command(cli: str, tiny, command: str, *args):
    """The same as a real command line: a new process, its own stderr."""
    module = "meltok.cli" if cli == "meltok" else "meltok_runtime.cli.main"
    script = f"import sys; from {module} import main; sys.argv[0] = {cli!r}; main()"
    return subprocess.run([sys.executable, "-c", script, command, *map(str, args), *_model_args(cli, tiny)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def encode_decode(cli, tiny, source, folder):
    """Encode ``source`` and decode its tokens; returns the token file and the decoded audio."""
    tokens_path, audio_path = folder / f"{source.stem}.mtok", folder / f"{source.stem}.decoded.wav"
    result = run(cli, tiny, "encode", source, "-o", tokens_path)
    assert result.exit_code == 0, result.output
    result = run(cli, tiny, "decode", tokens_path, "-o", audio_path)
    assert result.exit_code == 0, result.output
    decoded, rate = sf.read(audio_path, dtype="float32", always_2d=True)
    assert rate == RATE and decoded.shape[1] == 1 and np.isfinite(decoded).all()
    return read_tokens(tokens_path), decoded[:, 0]


# ------------------------------------------------------------------------------ accepted
FORMATS = {  # name: (suffix, format, subtype)
    "wav-pcm8": (".wav", "WAV", "PCM_U8"), "wav-pcm16": (".wav", "WAV", "PCM_16"),
    "wav-pcm24": (".wav", "WAV", "PCM_24"), "wav-pcm32": (".wav", "WAV", "PCM_32"),
    "wav-float32": (".wav", "WAV", "FLOAT"), "wav-float64": (".wav", "WAV", "DOUBLE"),
    "flac": (".flac", "FLAC", "PCM_16"), "ogg": (".ogg", "OGG", "VORBIS"), "mp3": (".mp3", "MP3", "MPEG_LAYER_III"),
}


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("cli", CLIS)
def test_every_file_format_is_encoded(cli, name, tiny, music, tmp_path):
    suffix, container, subtype = FORMATS[name]
    if container not in sf.available_formats() or subtype not in sf.available_subtypes(container):
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} cannot write {container}/{subtype} (MP3 needs >= 1.1)")
    source = tmp_path / f"music{suffix}"
    sf.write(source, music, RATE, format=container, subtype=subtype)
    frames = sf.read(source, dtype="float32")[0].shape[0]  # what libsndfile decodes (MP3 may pad)
    token_file, decoded = encode_decode(cli, tiny, source, tmp_path)
    assert token_file.num_samples == [frames] and token_file.tokens.shape[:2] == (1, tiny.token_rows)
    assert decoded.shape == (frames,)


@pytest.mark.parametrize("rate", [22050, 96000])
def test_other_rates_are_resampled_with_a_warning_on_stderr(rate, tiny, music, tmp_path):
    """The real ``meltok-rt`` command: its stderr holds the warning, the token file the resampled length."""
    from meltok_runtime.io.audio import prepare_audio

    source, tokens_path = tmp_path / f"music{rate}.wav", tmp_path / "music.mtok"
    sf.write(source, prepare_audio(music, RATE, rate)[0][0], rate, subtype="FLOAT")
    assert sf.info(source).frames == HALF_SECOND * rate // RATE
    result = run_command("meltok-rt", tiny, "encode", source, "-o", tokens_path)
    assert result.returncode == 0, result.stderr
    assert f"WARNING: resampling {source} from {rate} Hz to 44100 Hz" in result.stderr.splitlines()
    assert read_tokens(tokens_path).num_samples == [HALF_SECOND]


@pytest.mark.parametrize("rate", [22050, 96000])
def test_other_rates_are_resampled_by_meltok_too(rate, tiny, music, tmp_path, caplog):
    from meltok_runtime.io.audio import prepare_audio

    source = tmp_path / f"music{rate}.wav"
    sf.write(source, prepare_audio(music, RATE, rate)[0][0], rate, subtype="FLOAT")
    token_file, decoded = encode_decode("meltok", tiny, source, tmp_path)
    assert token_file.num_samples == [HALF_SECOND] and decoded.shape == (HALF_SECOND,)
    # from the command line this warning is the stderr line checked above; pytest's log capture takes it here
    assert any(f"from {rate} Hz to 44100 Hz" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


@pytest.mark.parametrize("channels", [2, 6])
@pytest.mark.parametrize("cli", CLIS)
def test_channels_are_mixed_down(cli, channels, tiny, real_clips, tmp_path):
    """A multi-channel file gives exactly the tokens of its channel mean."""
    clip = real_clips["speech"][:HALF_SECOND]
    gains = np.linspace(1.0, -0.6, channels, dtype=np.float32)[:, None]
    multi = gains * clip + 0.05 * np.random.default_rng(channels).standard_normal((channels, len(clip)), np.float32)
    sf.write(tmp_path / "multi.wav", multi.T, RATE, subtype="FLOAT")
    sf.write(tmp_path / "mono.wav", mixdown(multi), RATE, subtype="FLOAT")
    multi_tokens, decoded = encode_decode(cli, tiny, tmp_path / "multi.wav", tmp_path)
    mono_tokens, _ = encode_decode(cli, tiny, tmp_path / "mono.wav", tmp_path)
    np.testing.assert_array_equal(multi_tokens.tokens, mono_tokens.tokens)
    assert multi_tokens.num_samples == [HALF_SECOND] and decoded.shape == (HALF_SECOND,)


def _square(n: int) -> np.ndarray:
    return np.where(np.sin(2 * np.pi * 441 * np.arange(n) / RATE) >= 0, 1.0, -1.0).astype(np.float32)


SIGNALS = {  # name: (samples from the music clip, subtype)
    "100-samples": (lambda music: music[:100], "FLOAT"),  # shorter than one token column
    "digital-silence": (lambda music: np.zeros(HALF_SECOND, np.float32), "PCM_16"),
    "square-full-scale": (lambda music: _square(HALF_SECOND), "FLOAT"),
    "music-x10-clipped": (lambda music: np.clip(10 * music, -1, 1), "PCM_16"),
}


@pytest.mark.parametrize("name", SIGNALS)
@pytest.mark.parametrize("cli", CLIS)
def test_short_silent_and_clipped_audio(cli, name, tiny, music, tmp_path):
    make, subtype = SIGNALS[name]
    audio = make(music)
    sf.write(tmp_path / f"{name}.wav", audio, RATE, subtype=subtype)
    token_file, decoded = encode_decode(cli, tiny, tmp_path / f"{name}.wav", tmp_path)
    assert token_file.num_samples == [len(audio)] and decoded.shape == (len(audio),)
    if name == "100-samples":  # padded to one column (1792 samples); decoded back to exactly 100
        assert token_file.tokens.shape == (1, tiny.token_rows, 1)
    if name == "music-x10-clipped":
        assert np.mean(np.abs(sf.read(tmp_path / f"{name}.wav")[0]) > 0.999) > 0.1  # really clipped


# ------------------------------------------------------------------------------ refused
def _wav(path, audio, rate=RATE):
    sf.write(path, np.asarray(audio, np.float32), rate, subtype="FLOAT")
    return path


def _nan_wav(path, value, rate=RATE):
    audio = np.zeros(HALF_SECOND, np.float32)
    audio[1000] = value
    return _wav(path, audio, rate)


def _tokens(tiny, path, **changes):
    values = {"tokens": np.zeros((1, tiny.token_rows, 3), np.int64), "sample_rate": RATE, "num_samples": 5000,
              "model_id": tiny.model_id, "codebook_size": tiny.codebook_size, **changes}
    write_tokens(path, values.pop("tokens"), **values)
    return path


def _edited(path, edit):
    data = bytearray(path.read_bytes())
    edit(data)
    path.write_bytes(bytes(data))
    return path


def _set_version_2(data):
    data[6:8] = (2).to_bytes(2, "little")


def _cut_3_bytes(data):
    del data[-3:]


def _flip_middle_byte(data):
    data[len(data) // 2] ^= 0xFF


def _bundle(tiny, folder, edit):
    import shutil

    bundle = Path(shutil.copytree(tiny.bundle, folder / "bundle"))
    edit(bundle)
    return bundle


# case: (command, CLIs, build(tiny, folder) -> (input file, model file or bundle; None: the good one), match)
REFUSALS = {
    "zero-length-wav": ("encode", CLIS, lambda t, d: (_wav(d / "zero.wav", []), None), "contains no samples"),
    "nan-samples": ("encode", CLIS, lambda t, d: (_nan_wav(d / "nan.wav", np.nan), None), "NaN or infinite"),
    "inf-samples": ("encode", CLIS, lambda t, d: (_nan_wav(d / "inf.wav", -np.inf), None), "NaN or infinite"),
    "nan-samples-at-48k": ("encode", CLIS, lambda t, d: (_nan_wav(d / "nan48.wav", np.nan, 48000), None),
                           "NaN or infinite"),
    "tokens-bad-magic": ("decode", CLIS, lambda t, d: (_wav(d / "audio.wav", np.zeros(100)), None),
                         "not a meltok token file"),
    "tokens-wrong-version": ("decode", CLIS, lambda t, d: (_edited(_tokens(t, d / "v2.mtok"), _set_version_2), None),
                             "format version 2"),
    "tokens-truncated": ("decode", CLIS, lambda t, d: (_edited(_tokens(t, d / "cut.mtok"), _cut_3_bytes), None),
                         "cut short"),
    "tokens-codes-out-of-range": ("decode", CLIS, lambda t, d: (_tokens(
        t, d / "big.mtok", tokens=np.full((1, t.token_rows, 3), t.codebook_size + 7), codebook_size=8192), None),
        "outside the codebook"),
    "tokens-of-another-model": ("decode", CLIS, lambda t, d: (_tokens(
        t, d / "other.mtok", model_id="meltok-paper:0123456789ab"), None), "made by model 'meltok-paper:0123456789ab'"),
    "tokens-output-folder-missing": ("decode", ("meltok",), lambda t, d: (_tokens(t, d / "good.mtok"), None),
                                     "output folder"),
    "bundle-manifest-missing": ("encode", ("meltok-rt",), lambda t, d: (
        _wav(d / "ok.wav", np.zeros(4000)), _bundle(t, d, lambda b: (b / "manifest.json").unlink())),
        "has no manifest.json"),
    "bundle-manifest-corrupt": ("encode", ("meltok-rt",), lambda t, d: (
        _wav(d / "ok.wav", np.zeros(4000)),
        _bundle(t, d, lambda b: (b / "manifest.json").write_text('{"format_version": 1, "graphs'))),
        "not valid JSON"),
    "bundle-graph-missing": ("encode", ("meltok-rt",), lambda t, d: (
        _wav(d / "ok.wav", np.zeros(4000)), _bundle(t, d, lambda b: (b / "decoder.onnx").unlink())),
        "decoder graph"),
    "bundle-graph-corrupt": ("encode", ("meltok-rt",), lambda t, d: (
        _wav(d / "ok.wav", np.zeros(4000)), _bundle(t, d, lambda b: _edited(b / "encoder.onnx", _flip_middle_byte))),
        "does not match the hash"),
    "model-file-missing": ("encode", ("meltok",), lambda t, d: (_wav(d / "ok.wav", np.zeros(4000)),
                                                                d / "nowhere.safetensors"), "does not exist"),
    "model-file-not-a-model": ("encode", ("meltok",), lambda t, d: (
        _wav(d / "ok.wav", np.zeros(4000)), _wav(d / "audio.wav", np.zeros(100)).rename(d / "m.safetensors")),
        "not a meltok model file"),
}
# (case, CLI) pairs tested already in tests/runtime/test_cli.py::test_decode_errors
COVERED = {("tokens-bad-magic", "meltok-rt"), ("tokens-truncated", "meltok-rt"),
           ("tokens-codes-out-of-range", "meltok-rt"), ("tokens-of-another-model", "meltok-rt")}


def assert_refused(result, output, match):
    assert result.exit_code not in (0, None), result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # a traceback otherwise
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert match in lines[0] and "Traceback" not in result.output, lines[0]
    assert not output.exists()
    assert not list(output.parent.glob(f".{output.name}.*")), "a temporary was left behind"


@pytest.mark.parametrize("cli,case", [(cli, case) for case, (_, clis, _, _) in REFUSALS.items() for cli in clis
                                      if (case, cli) not in COVERED])
def test_refusals_are_one_line_without_output(cli, case, tiny, tmp_path):
    command, _, build, match = REFUSALS[case]
    source, model = build(tiny, tmp_path)
    folder = tmp_path / "missing" if case.endswith("output-folder-missing") else tmp_path
    output = folder / ("out.mtok" if command == "encode" else "out.wav")
    assert_refused(run(cli, tiny, command, source, "-o", output, model=model), output, match)


@pytest.mark.parametrize("cli", CLIS)
def test_refusal_from_the_real_command_is_one_stderr_line(cli, tiny, tmp_path):
    """Outside CliRunner: nothing else (the resampling warning, library logs) reaches stderr."""
    source, output = _nan_wav(tmp_path / "nan48.wav", np.nan, 48000), tmp_path / "out.mtok"
    result = run_command(cli, tiny, "encode", source, "-o", output)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ") and "NaN" in result.stderr, \
        result.stderr
    assert not output.exists()
