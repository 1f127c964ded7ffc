"""``meltok-rt decode --stream ... -o -`` and ``meltok-rt encode - ...`` as real processes with pipes:
audio on standard output only (an open-ended WAV header or raw PCM), progress on standard error, raw
PCM read from standard input."""
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from meltok_runtime import Codec, read_tokens
from meltok_runtime.io.pcm import to_s16

MELTOK_RT = Path(sys.executable).with_name("meltok-rt")
RATE = 44100


def meltok_rt(*args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(MELTOK_RT), *map(str, args)], input=stdin, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def speech_pcm(real_clips) -> np.ndarray:
    """Three seconds of real speech as the int16 samples a pipe carries."""
    return to_s16(real_clips["speech"][:3 * RATE])


def test_encode_from_stdin_then_stream_decode_to_stdout_equal_offline(tiny_local_bundle, speech_pcm, tmp_path):
    """With the time-local bundle both stream commands reproduce offline processing exactly."""
    _, bundle = tiny_local_bundle
    tokens_path = tmp_path / "speech.mtok"
    done = meltok_rt("encode", "-", "-b", bundle, "-o", tokens_path, "--input-format", "s16le", "--rate", RATE,
                     "--threads", 2, stdin=speech_pcm.tobytes())
    assert done.returncode == 0, done.stderr.decode()
    assert b"encoded 1 s" in done.stderr
    token_file = read_tokens(tokens_path)
    audio = speech_pcm.astype(np.float32) / 32768
    with Codec.open(bundle, backend="ort-cpu", threads=2) as codec:
        np.testing.assert_array_equal(token_file.tokens, codec.encode(audio))
        offline = codec.decode(token_file.tokens, num_samples=len(audio))[0]
    assert token_file.num_samples == [len(audio)]

    done = meltok_rt("decode", "--stream", tokens_path, "-b", bundle, "-o", "-", "--format", "f32le",
                     "--push-columns", 3, "--threads", 2)
    assert done.returncode == 0, done.stderr.decode()
    streamed = np.frombuffer(done.stdout, dtype="<f4")
    assert streamed.shape == offline.shape
    np.testing.assert_allclose(streamed, offline, rtol=0, atol=1e-5 * np.abs(offline).max())
    assert b"decoded" in done.stderr and b"wrote -" in done.stderr


def test_stream_decode_writes_an_open_ended_wav_of_the_shipped_model(speech_pcm, tmp_path):
    tokens_path = tmp_path / "speech.mtok"
    done = meltok_rt("encode", "-", "-o", tokens_path, "--threads", 2, stdin=speech_pcm.tobytes())
    assert done.returncode == 0, done.stderr.decode()
    done = meltok_rt("decode", "--stream", tokens_path, "-o", "-", "--threads", 2)
    assert done.returncode == 0, done.stderr.decode()
    header, data = done.stdout[:44], done.stdout[44:]
    assert header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt " and header[36:40] == b"data"
    assert struct.unpack("<I", header[4:8])[0] == struct.unpack("<I", header[40:44])[0] == 0xFFFFFFFF
    channels, rate = struct.unpack("<HI", header[22:28])
    assert (channels, rate, struct.unpack("<H", header[34:36])[0]) == (1, RATE, 16)
    streamed = np.frombuffer(data, dtype="<i2")
    assert len(streamed) == len(speech_pcm)  # trimmed to the encoded length
    with Codec.open(backend="ort-cpu", threads=2) as codec:
        tokens = read_tokens(tokens_path).tokens[0]
        decoder = codec.stream_decoder()
        api = np.concatenate([decoder.push(tokens[:, i:i + 4]) for i in range(0, tokens.shape[1], 4)]
                             + [decoder.flush()])[:len(speech_pcm)]
    assert np.abs(streamed.astype(np.int32) - to_s16(api)).max() <= 1  # the same stream as the API's


def test_stream_commands_refuse_bad_input_with_one_line(tmp_path, speech_pcm):
    done = meltok_rt("encode", "-", "-o", tmp_path / "x.mtok", "--rate", 48000, stdin=speech_pcm.tobytes())
    assert done.returncode == 1 and b"Error: standard input at 48000 Hz" in done.stderr
    done = meltok_rt("encode", "-", "-o", tmp_path / "x.mtok", stdin=speech_pcm.tobytes()[:-1])
    assert done.returncode == 1 and b"stray bytes" in done.stderr and not (tmp_path / "x.mtok").exists()
    done = meltok_rt("decode", tmp_path / "x.mtok", "-o", "-")
    assert done.returncode != 0 and b"--stream writes to standard output" in done.stderr and not done.stdout
