"""Decoding through the log-mel (``mel_decode``): a decoder graph that gives the log-mel, finished by the
runtime's ``MelInverter`` whose running phase is carried from window to window and through streams.

The planner tests use a time-local stand-in graph (token column ``j`` -> frames ``[c j, c j + c)`` of the real
log-mel of ``tests/data/music.flac``), so that every window sees exactly the frames of the whole mel; the
bundle tests use the tiny ``mel_inversion`` bundle (``tiny_mel_inversion``)."""
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from meltok_runtime import Codec
from meltok_runtime.cli.main import main
from meltok_runtime.errors import BundleError
from meltok_runtime.io.tokenfile import read_tokens, write_tokens
from meltok_runtime.manifest import Manifest, load_manifest
from meltok_runtime.mel_decode import MelDecode, inverter_from_parameters
from meltok_runtime.mel_inversion import MelInverter
from meltok_runtime.windowing import decode_windowed

HOP, C = 256, 8


@pytest.fixture(scope="module")
def music_mel(real_clips) -> np.ndarray:
    """The front end's log-mel ``[1, 96, T]`` of 3 s of real music (T a multiple of 8)."""
    from meltok.config import FrontendConfig
    from meltok.frontend import MelFrontend
    import torch

    mel = MelFrontend(FrontendConfig())(torch.from_numpy(real_clips["music"][None, :3 * 44100])).numpy()
    return mel[..., :mel.shape[-1] // C * C]


def column_graph(mel: np.ndarray):
    """A time-local stand-in decoder graph: tokens ``[B, 12, w]`` whose row 0 holds column numbers -> those
    columns' frames of ``mel`` ``[B, 96, c w]``."""
    def graph(tokens):
        frames = (C * tokens[:, 0, :, None] + np.arange(C)).reshape(tokens.shape[0], -1)
        return mel[0][:, frames].transpose(1, 0, 2)
    return graph


def column_tokens(columns: int) -> np.ndarray:
    tokens = np.zeros((1, 12, columns), dtype=np.int64)
    tokens[:, 0] = np.arange(columns)
    return tokens


def test_carried_state_continues_the_running_phase(music_mel):
    """Frames ``s..`` decoded from ``running[..., s - 1]`` continue the decode of the whole mel: the running
    phase equals the whole decode's (float64 round-off), and so does the audio away from the piece's edges
    where no Griffin-Lim iteration runs within the piece (``consistency_iterations=0``); starting from
    zeros gives other audio."""
    inverter = MelInverter()
    _, running = inverter(music_mel)
    s = 100
    _, piece_running = inverter(music_mel[..., s:], running[..., s - 1])
    assert np.abs(np.angle(np.exp(1j * (piece_running - running[..., s:])))).max() < 1e-8  # float64 round-off
    vocoder_only = MelInverter(consistency_iterations=0)
    audio, running = vocoder_only(music_mel)
    piece, _ = vocoder_only(music_mel[..., s:], running[..., s - 1])
    inner = slice(4 * HOP, piece.shape[-1] - 4 * HOP)  # the ISTFT of the piece lacks the frames before s
    whole = audio[:, s * HOP:][:, inner]
    np.testing.assert_allclose(piece[:, inner], whole, rtol=0, atol=1e-6 * np.abs(audio).max())
    fresh, _ = vocoder_only(music_mel[..., s:])
    assert np.abs(fresh[:, inner] - whole).max() > 0.1 * np.abs(whole).max()


@pytest.mark.parametrize("consistency, tolerance", [(None, 1e-3), (0, 1e-6)])
def test_windowed_decoding_carries_the_phase_to_equal_the_whole_decode(music_mel, consistency, tolerance):
    """Windows of a time-local log-mel graph, the running phase carried window to window and cross-faded as
    ever, give the whole mel's inversion; without the carried state the joins break. The inverter's
    Griffin-Lim iterations run within each window, so its edges differ from the whole decode's, which
    context and cross-fade hide (measured here: 1e-4 of the peak; 3e-8 without the iterations)."""
    inverter = MelInverter() if consistency is None else MelInverter(consistency_iterations=consistency)
    columns = music_mel.shape[-1] // C
    whole, _ = inverter(music_mel)
    decode = MelDecode(column_graph(music_mel), inverter, C)
    windowed = decode_windowed(column_tokens(columns), decode, window_columns=14, context_columns=2, hop=HOP,
                               compression=C)
    peak = np.abs(whole).max()
    assert windowed.shape == whole.shape
    np.testing.assert_allclose(windowed, whole, rtol=0, atol=tolerance * peak)

    def stateless(tokens):
        return inverter(column_graph(music_mel)(tokens))[0]

    broken = decode_windowed(column_tokens(columns), stateless, window_columns=14, context_columns=2, hop=HOP,
                             compression=C)
    assert np.abs(broken - whole).max() > 0.1 * peak


def test_state_handed_on_is_the_running_phase_before_the_next_window(music_mel):
    inverter = MelInverter()
    decode = MelDecode(column_graph(music_mel), inverter, C)
    tokens = column_tokens(10)
    state = decode.initial_state(1)
    assert state.shape == (1, 513) and not state.any()
    audio, after = decode(tokens, state, carry=6)
    _, running = inverter(music_mel[..., :80])
    np.testing.assert_allclose(after, running[..., 6 * C - 1], rtol=0, atol=1e-9)
    assert audio.shape == (1, (10 * C - 1) * HOP)
    _, last = decode(tokens, state, carry=12)  # past the window: its last frame's
    np.testing.assert_allclose(last, running[..., -1], rtol=0, atol=1e-9)


@pytest.fixture(scope="module")
def mel_codec(tiny_mel_inversion):
    with Codec.open(tiny_mel_inversion[2], backend="ort-cpu", threads=1) as opened:
        yield opened


@pytest.fixture(scope="module")
def mel_tokens(mel_codec, real_clips):
    return mel_codec.encode(real_clips["speech"][:44100])  # 1 s: 22 columns


def test_manifest_names_the_log_mel_decoder_and_its_inverter(tiny_mel_inversion, mel_codec):
    model, _, bundle = tiny_mel_inversion
    manifest = load_manifest(bundle)
    assert manifest.decoder_output == "log_mel"
    assert manifest.mel_inversion == model.head.settings
    [output] = manifest.graphs["decoder"].outputs
    assert (output.name, output.dtype, output.shape) == ("log_mel", "float32", ("batch", 96, "frames"))
    assert vars(mel_codec.mel_inverter).keys() == vars(inverter_from_parameters(manifest.mel_inversion)).keys()
    assert mel_codec.mel_inverter.nnls_iterations == manifest.mel_inversion["nnls_iterations"]


@pytest.mark.parametrize("change, words", [
    ({"decoder_output": "spectrum"}, "decoder_output 'spectrum'"),
    ({"mel_inversion": {}}, "mel_inversion has keys []"),
    ({"mel_inversion_n_fft": -1}, "n_fft = -1"),
])
def test_bad_decoder_fields_are_one_line_bundle_errors(tiny_mel_inversion, change, words):
    import json

    data = json.loads((tiny_mel_inversion[2] / "manifest.json").read_text())
    if "mel_inversion_n_fft" in change:
        data["mel_inversion"]["n_fft"] = -1
    else:
        data.update(change)
    with pytest.raises(BundleError, match=words.replace("[", r"\[").replace("]", r"\]")):
        Manifest.from_json(json.dumps(data))


def test_stream_gives_the_same_audio_whatever_the_framing(mel_codec, mel_tokens):
    """The stream decoder carries the running phase: pushes of 1, 5 or all columns give identical audio."""
    results = []
    for size in (1, 5, mel_tokens.shape[-1]):
        stream = mel_codec.stream_decoder(context_seconds=0.1)
        parts = [stream.push(mel_tokens[0, :, i:i + size]) for i in range(0, mel_tokens.shape[-1], size)]
        results.append(np.concatenate(parts + [stream.flush()]))
    assert results[0].shape == (mel_codec.decoded_length(mel_tokens.shape[-1]),)
    assert np.isfinite(results[0]).all() and np.abs(results[0]).max() > 0
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


def test_stream_and_windows_equal_their_graph_and_inverter_by_hand(mel_codec, mel_tokens):
    """A single window: the codec's audio is the inverter on the graph's log-mel, from zero phase."""
    whole = mel_codec.decode(mel_tokens)
    expected, _ = mel_codec.mel_inverter(mel_codec._decode_graph(mel_tokens))
    np.testing.assert_array_equal(whole, expected)


def test_windowed_decoding_of_a_long_token_file(tiny_mel_inversion, tmp_path, real_clip_paths):
    """The whole speech clip through the command line (encode, decode: one window, the library's audio) and
    through 2 s windows (at least three, the running phase carried)."""
    _, _, bundle = tiny_mel_inversion
    runner = CliRunner()
    tokens_path, wav = tmp_path / "s.mtok", tmp_path / "s.wav"
    common = ["-b", str(bundle), "--backend", "ort-cpu", "--threads", "1"]
    result = runner.invoke(main, ["encode", str(real_clip_paths["speech"]), "-o", str(tokens_path), *common])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["decode", str(tokens_path), "-o", str(wav), *common])
    assert result.exit_code == 0, result.output
    token_file = read_tokens(tokens_path)
    with Codec.open(bundle, backend="ort-cpu", threads=1) as codec:
        offline = codec.decode(token_file.tokens, token_file.num_samples[0])[0]
    written, _ = sf.read(wav, dtype="float32")
    np.testing.assert_array_equal(written, offline)
    with Codec.open(bundle, backend="ort-cpu", threads=1, window_seconds=2.0, context_seconds=0.25) as small:
        assert small.decode_windows(token_file.tokens.shape[-1]) >= 3
        windowed = small.decode(token_file.tokens, token_file.num_samples[0])[0]
    assert np.isfinite(windowed).all() and windowed.shape == offline.shape and np.abs(windowed).max() > 0


def test_decode_stream_command_is_the_stream(tiny_mel_inversion, mel_codec, mel_tokens, tmp_path):
    """``meltok-rt decode --stream``: the stream's audio (running phase carried through the pushes)."""
    _, _, bundle = tiny_mel_inversion
    tokens_path = tmp_path / "one.mtok"
    write_tokens(tokens_path, mel_tokens, sample_rate=44100, num_samples=44100, model_id=mel_codec.model_id,
                 codebook_size=mel_codec.codebook_size)
    streamed = CliRunner().invoke(main, ["decode", str(tokens_path), "-o", "-", "--stream", "--stream-format", "f32le",
                                         "--push-columns", "3", "-b", str(bundle), "--backend", "ort-cpu",
                                         "--threads", "1"])
    assert streamed.exit_code == 0, streamed.output
    stream = mel_codec.stream_decoder()
    expected = np.concatenate([stream.push(mel_tokens[0]), stream.flush()])[:44100]
    np.testing.assert_array_equal(np.frombuffer(streamed.stdout_bytes, dtype="<f4"), expected)


def test_server_decodes_and_streams_like_the_codec(tiny_mel_inversion, mel_codec, mel_tokens):
    """``meltok-rt serve`` on the bundle: offline decoding batches the log-mel graph and inverts after the
    batcher; the stream session carries the running phase as the stream API does."""
    from meltok_runtime.serve.client import Client
    from meltok_runtime.serve.protocol import STREAM_CONTEXT_SECONDS, STREAM_STEP_SECONDS

    from .serve_helpers import running_server

    with running_server(bundle=str(tiny_mel_inversion[2])) as (url, _):
        with Client(url) as client:
            decoded = client.decode(mel_tokens[0], 44100)
            streamed = client.stream_decode(mel_tokens[0], columns_per_message=3)
    np.testing.assert_array_equal(decoded, mel_codec.decode(mel_tokens, 44100)[0])
    stream = mel_codec.stream_decoder(context_seconds=STREAM_CONTEXT_SECONDS, step_seconds=STREAM_STEP_SECONDS)
    expected = np.concatenate([stream.push(mel_tokens[0]), stream.flush()])  # the server's stream settings
    np.testing.assert_array_equal(streamed, expected)
