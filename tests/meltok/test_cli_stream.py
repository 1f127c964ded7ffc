"""``meltok encode -`` and ``meltok decode --stream -o -`` (PyTorch path) as processes with pipes: with a
time-local model file both equal offline processing; audio alone on standard output."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from meltok_runtime import read_tokens
from meltok_runtime.io.pcm import to_s16

MELTOK = Path(sys.executable).with_name("meltok")


def test_stdin_encode_and_stream_decode_equal_offline(tiny_local_model, real_clips, tmp_path):
    model_path = tmp_path / "tiny-local.safetensors"
    tiny_local_model.save(model_path)
    pcm = to_s16(real_clips["speech"][:44100])
    tokens_path = tmp_path / "speech.mtok"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(MELTOK), "encode", "-", "--live", "-m", str(model_path), "-o", str(tokens_path)],
                          input=pcm.tobytes(), capture_output=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr.decode()
    token_file = read_tokens(tokens_path)
    assert token_file.streamed  # a time-local model's live tokens still equal offline ones
    audio = pcm.astype(np.float32) / 32768
    np.testing.assert_array_equal(token_file.tokens, tiny_local_model.encode(audio))
    assert token_file.num_samples == [len(pcm)]

    done = subprocess.run([str(MELTOK), "decode", "--stream", str(tokens_path), "-m", str(model_path), "-o", "-",
                           "--stream-format", "f32le", "--push-columns", "5"], capture_output=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr.decode()
    assert b"wrote -" in done.stderr
    offline = tiny_local_model.decode(token_file.tokens, num_samples=len(pcm))[0]
    streamed = np.frombuffer(done.stdout, dtype="<f4")
    np.testing.assert_allclose(streamed, offline, rtol=0, atol=1e-5 * np.abs(offline).max())
