"""``meltok-rt decode --stream ... -o -`` and ``meltok-rt encode - ...`` as real processes with pipes:
audio on standard output only (an open-ended WAV header or raw PCM), progress on standard error; a
finished pipe encoded as its file is, a WAV on it recognised, live capture explicit and recorded."""
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

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
    done = meltok_rt("encode", "-", "--live", "-b", bundle, "-o", tokens_path, "--input-format", "s16le", "--rate",
                     RATE, "--threads", 2, stdin=speech_pcm.tobytes())
    assert done.returncode == 0, done.stderr.decode()
    assert b"encoding: (3 s encoded)" in done.stderr and b"\r" not in done.stderr  # no terminal: lines
    token_file = read_tokens(tokens_path)
    assert token_file.streamed and token_file.lookahead_seconds == 0.2
    audio = speech_pcm.astype(np.float32) / 32768
    with Codec.open(bundle, backend="ort-cpu", threads=2) as codec:
        np.testing.assert_array_equal(token_file.tokens, codec.encode(audio))
        offline = codec.decode(token_file.tokens, num_samples=len(audio))[0]
    assert token_file.num_samples == [len(audio)]

    done = meltok_rt("decode", "--stream", tokens_path, "-b", bundle, "-o", "-", "--stream-format", "f32le",
                     "--push-columns", 3, "--threads", 2)
    assert done.returncode == 0, done.stderr.decode()
    streamed = np.frombuffer(done.stdout, dtype="<f4")
    assert streamed.shape == offline.shape
    np.testing.assert_allclose(streamed, offline, rtol=0, atol=1e-5 * np.abs(offline).max())
    assert b"decoding: " in done.stderr and b"wrote -" in done.stderr


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
    done = meltok_rt("encode", "-", "-o", tmp_path / "x.mtok", stdin=speech_pcm.tobytes()[:-1])
    assert done.returncode == 1 and b"stray bytes" in done.stderr and not (tmp_path / "x.mtok").exists()
    done = meltok_rt("decode", tmp_path / "x.mtok", "-o", "-")
    assert done.returncode != 0 and b"--stream writes to standard output" in done.stderr and not done.stdout


def info(path) -> dict:
    done = meltok_rt("info", path)
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def test_a_finished_pipe_gives_the_tokens_of_the_file_and_live_capture_is_recorded(speech_pcm, tmp_path):
    """The shipped model: raw PCM piped in equals the same samples read from a WAV file; --live is a
    stream, marked in the token file and by ``info``."""
    wav = tmp_path / "speech.wav"
    sf.write(wav, speech_pcm, RATE, subtype="PCM_16")
    assert meltok_rt("encode", wav, "-o", tmp_path / "file.mtok", "--threads", 2).returncode == 0
    done = meltok_rt("encode", "-", "-o", tmp_path / "pipe.mtok", "--threads", 2, stdin=speech_pcm.tobytes())
    assert done.returncode == 0, done.stderr.decode()
    from_file, from_pipe = read_tokens(tmp_path / "file.mtok"), read_tokens(tmp_path / "pipe.mtok")
    np.testing.assert_array_equal(from_pipe.tokens, from_file.tokens)
    assert info(tmp_path / "pipe.mtok")["streamed"] is False
    done = meltok_rt("encode", "-", "--live", "--lookahead", 0.3, "-o", tmp_path / "live.mtok", "--threads", 2,
                     stdin=speech_pcm.tobytes())
    assert done.returncode == 0, done.stderr.decode()
    described = info(tmp_path / "live.mtok")
    assert described["streamed"] is True and described["lookahead_seconds"] == 0.3
    assert read_tokens(tmp_path / "live.mtok").tokens.shape == from_file.tokens.shape


def test_a_wav_on_standard_input_is_read_as_wav_and_raw_pcm_at_any_rate_is_resampled(real_clip_paths, tmp_path):
    audio, rate = sf.read(real_clip_paths["music48k"], dtype="int16", always_2d=True)
    audio = audio[:3 * rate]
    if audio.shape[1] == 1:
        audio = np.repeat(audio, 2, axis=1)
    wav = tmp_path / "music48k.wav"
    sf.write(wav, audio, rate, subtype="PCM_16")
    assert (rate, audio.shape[1]) == (48000, 2)
    assert meltok_rt("encode", wav, "-o", tmp_path / "file.mtok", "--threads", 2).returncode == 0
    want = read_tokens(tmp_path / "file.mtok")
    for name, data, args in (("wav", wav.read_bytes(), ()),
                             ("raw", audio.tobytes(), ("--rate", rate, "--channels", 2))):
        done = meltok_rt("encode", "-", "-o", tmp_path / f"{name}.mtok", "--threads", 2, *args, stdin=data)
        assert done.returncode == 0, done.stderr.decode()
        np.testing.assert_array_equal(read_tokens(tmp_path / f"{name}.mtok").tokens, want.tokens, err_msg=name)
    source = {"sample_rate": 48000, "num_samples": [3 * rate], "seconds": [3.0], "channels": 2}
    assert info(tmp_path / "wav.mtok")["source"] == source
    done = meltok_rt("encode", "-", "--live", "-o", tmp_path / "live.mtok", "--threads", 2, stdin=wav.read_bytes())
    assert done.returncode == 0, done.stderr.decode()
    assert info(tmp_path / "live.mtok")["source"] == source  # the live reader parsed the header too
    assert read_tokens(tmp_path / "live.mtok").tokens.shape == want.tokens.shape

    # decode --stream's open-ended WAV piped back in: the header is not taken for samples
    decoded = meltok_rt("decode", "--stream", tmp_path / "file.mtok", "-o", "-", "--threads", 2)
    assert decoded.returncode == 0, decoded.stderr.decode()
    done = meltok_rt("encode", "-", "-o", tmp_path / "again.mtok", "--threads", 2, stdin=decoded.stdout)
    assert done.returncode == 0, done.stderr.decode()
    assert read_tokens(tmp_path / "again.mtok").num_samples == want.num_samples


def test_stream_decode_honours_original_rate_refuses_what_it_cannot_and_stops_quietly_on_a_closed_pipe(
        speech_pcm, tmp_path):
    tokens = tmp_path / "speech.mtok"
    sf.write(tmp_path / "speech48k.wav", np.repeat(speech_pcm[:, None], 2, axis=1), 48000, subtype="PCM_16")
    assert meltok_rt("encode", tmp_path / "speech48k.wav", "-o", tokens).returncode == 0
    done = meltok_rt("decode", "--stream", tokens, "-o", "-", "--original-rate", "--stream-format", "s16le")
    assert done.returncode == 0, done.stderr.decode()
    assert len(done.stdout) == 2 * len(speech_pcm) and b"writing 48000 Hz" in done.stderr
    for option, says in (("--subtype", b"--subtype sets the sample format of files"), ("-y", b"nothing to replace")):
        done = meltok_rt("decode", "--stream", tokens, "-o", "-", *([option, "FLOAT"] if option == "--subtype" else
                                                                     [option]))
        assert done.returncode == 2 and not done.stdout and says in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    piped = subprocess.run(["bash", "-c", f"'{MELTOK_RT}' decode --stream '{tokens}' -o - | head -c 1000 | wc -c; "
                                          "echo ${PIPESTATUS[0]}"], capture_output=True, text=True, timeout=300)
    count, status = piped.stdout.split()
    assert count == "1000" and status in ("0", "141") and "Traceback" not in piped.stderr, piped.stderr


def test_float_wav_has_the_header_sox_wants_and_peaks_above_full_scale_are_said(tmp_path, caplog):
    from meltok_runtime.io.audio import write_audio

    tone = (1.12 * np.sin(np.arange(RATE) * 2 * np.pi * 440 / RATE)).astype(np.float32)
    with caplog.at_level("WARNING", logger="meltok_runtime"):
        write_audio(tmp_path / "loud.wav", tone, RATE)
    assert "peaks at 1.12" in caplog.text and "lower the gain" in caplog.text
    np.testing.assert_array_equal(sf.read(tmp_path / "loud.wav", dtype="float32")[0], tone)  # kept, not clipped
    caplog.clear()
    with caplog.at_level("WARNING", logger="meltok_runtime"):
        write_audio(tmp_path / "quiet.wav", tone / 2, RATE)
    assert caplog.text == ""
    if shutil.which("sox") is None:
        pytest.skip("sox is not installed: the header check below needs it")
    checked = subprocess.run(["sox", "--i", str(tmp_path / "loud.wav")], capture_output=True, text=True)
    assert checked.returncode == 0 and "WARN" not in checked.stderr and "32-bit Floating Point" in checked.stdout
