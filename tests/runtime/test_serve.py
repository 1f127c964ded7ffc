"""``meltok-rt serve`` over real loopback connections: offline endpoints against the CLI, streams against
the stream API, and the protection (errors, limits, idle and oversized frames, disconnects, fuzz)."""
import contextlib
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from meltok_runtime import Codec
from meltok_runtime.io.pcm import to_s16
from meltok_runtime.io.tokenfile import read_tokens, tokens_from_bytes, tokens_to_bytes
from meltok_runtime.manifest import file_sha256
from meltok_runtime.serve.client import Client
from meltok_runtime.serve.errors import ServeError
from meltok_runtime.serve.protocol import STREAM_CONTEXT_SECONDS, STREAM_STEP_SECONDS, token_frame

from .serve_helpers import running_server

MELTOK_RT = Path(sys.executable).with_name("meltok-rt")
RATE = 44100
LIMITS = {"max_body_bytes": 4 * 2 ** 20, "max_frame_bytes": 64 * 2 ** 10, "idle_timeout_s": 3.0, "max_streams": 3}


@pytest.fixture(scope="module")
def server():
    with running_server(**LIMITS) as running:
        yield running


@pytest.fixture(scope="module")
def url(server):
    return server[0]


@pytest.fixture(scope="module")
def codec():
    with Codec.open(backend="ort-cpu", threads=1) as opened:
        yield opened


@pytest.fixture(scope="module")
def speech(real_clips) -> np.ndarray:
    return real_clips["speech"][:3 * RATE]


def meltok_rt(*args):
    done = subprocess.run([str(MELTOK_RT), *map(str, args), "--backend", "ort-cpu", "--threads", "1"],
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()


def stream_reference(codec, tokens, context_seconds=STREAM_CONTEXT_SECONDS, step_seconds=STREAM_STEP_SECONDS,
                     push=5) -> np.ndarray:
    """What the stream API gives with the server's default settings (unless named), pushed ``push`` columns at
    a time (any framing gives the same)."""
    stream = codec.stream_decoder(lookahead_seconds=0.2, context_seconds=context_seconds, step_seconds=step_seconds)
    parts = [stream.push(tokens[:, i:i + push]) for i in range(0, tokens.shape[1], push)]
    return np.concatenate(parts + [stream.flush()])


def encode_reference(codec, audio) -> np.ndarray:
    stream = codec.stream_encoder(lookahead_seconds=0.2, context_seconds=STREAM_CONTEXT_SECONDS,
                                  step_seconds=STREAM_STEP_SECONDS)
    block = 3 * codec.column_samples
    parts = [stream.push(audio[i:i + block]) for i in range(0, len(audio), block)]
    return np.concatenate(parts + [stream.flush()], axis=1)


def closed_with(ws) -> tuple[str | None, int]:
    """Read until the server closes: ``(its error message, close code)``."""
    error = None
    try:
        while True:
            message = ws.recv(timeout=30)
            if isinstance(message, str) and "error" in json.loads(message):
                error = json.loads(message)["error"]
    except ConnectionClosed as closed:
        return error, closed.rcvd.code


# ------------------------------------------------------------------------------------------ offline
def test_health_names_model_backend_bundle_and_layout(url, codec):
    health = httpx.get(f"{url}/health").json()
    assert health["ready"] is True and health["backend"] == "ort-cpu"
    assert health["model_id"] == codec.model_id and health["sample_rate"] == RATE
    assert health["bundle_sha256"] == file_sha256(codec.bundle / "manifest.json")
    assert health["token_layout"]["rows"] == 12 and health["token_layout"]["column_samples"] == 2048
    assert health["concurrent_calls"] == 4  # ort-cpu's default
    stream = health["stream"]
    assert (stream["context_seconds"], stream["step_seconds"]) == (STREAM_CONTEXT_SECONDS, STREAM_STEP_SECONDS)
    decoder = codec.stream_decoder(lookahead_seconds=0.2, context_seconds=STREAM_CONTEXT_SECONDS,
                                   step_seconds=STREAM_STEP_SECONDS)
    assert stream["decode_columns"] == {"context": decoder.grid.left, "step": decoder.grid.step,
                                        "lookahead": decoder.grid.right}
    assert stream["compute_factor"] == round(decoder.grid.window / decoder.grid.step, 3) < 14
    assert stream["decode_latency_seconds"] == round(decoder.latency_seconds, 4)


@pytest.mark.parametrize("clip", ["speech", "music48k"])
def test_encode_answers_the_token_file_meltok_rt_encode_writes(url, real_clip_paths, clip, tmp_path):
    meltok_rt("encode", real_clip_paths[clip], "-o", tmp_path / "cli.mtok")
    answer = httpx.post(f"{url}/v1/encode", content=real_clip_paths[clip].read_bytes(), timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.content == (tmp_path / "cli.mtok").read_bytes()
    as_json = httpx.post(f"{url}/v1/encode", content=real_clip_paths[clip].read_bytes(),
                         headers={"Accept": "application/json"}, timeout=120).json()
    written = read_tokens(tmp_path / "cli.mtok")
    assert as_json["tokens"] == written.tokens[0].tolist() and as_json["num_samples"] == written.num_samples[0]
    assert as_json["model_id"] == written.model_id and as_json["source_sample_rate"] == written.source_sample_rate


def test_raw_pcm_encodes_as_the_library_encodes_it(url, codec, speech):
    stereo = np.stack([to_s16(speech), to_s16(speech[::-1])])  # int16 [2, N]
    answer = httpx.post(f"{url}/v1/encode", content=stereo.T.tobytes(),
                        params={"format": "s16le", "sample_rate": RATE, "channels": 2}, timeout=120)
    assert answer.status_code == 200, answer.text
    np.testing.assert_array_equal(tokens_from_bytes(answer.content).tokens, codec.encode(stereo[None], RATE))


def test_decode_answers_the_audio_meltok_rt_decode_writes(url, real_clip_paths, tmp_path):
    tokens = tmp_path / "music.mtok"
    meltok_rt("encode", real_clip_paths["music48k"], "-o", tokens)
    meltok_rt("decode", tokens, "-o", tmp_path / "cli.wav")
    meltok_rt("decode", tokens, "-o", tmp_path / "original.wav", "--original-rate")
    cli, cli_rate = sf.read(tmp_path / "cli.wav", dtype="float32")
    wav = httpx.post(f"{url}/v1/decode", content=tokens.read_bytes(), timeout=120)
    assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
    # the same samples in the same container; only the WAV PEAK chunk's timestamp may differ
    assert sf.info(tmp_path / "cli.wav").subtype == sf.info(io.BytesIO(wav.content)).subtype == "FLOAT"
    served, rate = sf.read(io.BytesIO(wav.content), dtype="float32")
    assert rate == cli_rate == RATE
    np.testing.assert_array_equal(served, cli)
    raw = httpx.post(f"{url}/v1/decode", content=tokens.read_bytes(), params={"format": "f32le"}, timeout=120)
    np.testing.assert_array_equal(np.frombuffer(raw.content, "<f4"), cli)
    original, original_rate = sf.read(tmp_path / "original.wav", dtype="float32")
    at_48k = httpx.post(f"{url}/v1/decode", content=tokens.read_bytes(),
                        params={"format": "f32le", "sample_rate": 48000}, timeout=120)
    assert original_rate == 48000
    np.testing.assert_array_equal(np.frombuffer(at_48k.content, "<f4"), original)
    token_file = read_tokens(tokens)
    body = {"tokens": token_file.tokens[0].tolist(), "num_samples": token_file.num_samples[0],
            "model_id": token_file.model_id}
    from_json = httpx.post(f"{url}/v1/decode", json=body, params={"format": "f32le"}, timeout=120)
    np.testing.assert_array_equal(np.frombuffer(from_json.content, "<f4"), cli)


def test_client_encode_and_decode_match_the_library(url, codec, speech):
    with Client(url) as client:
        token_file = client.encode(speech, RATE)
        np.testing.assert_array_equal(token_file.tokens, codec.encode(speech))
        decoded = client.decode(token_file.tokens, len(speech))
    np.testing.assert_array_equal(decoded, codec.decode(token_file.tokens, num_samples=len(speech))[0])
    with Client(url) as client:
        token_bytes = client.encode_file_bytes(sf_bytes(speech))
        flac, rate = sf.read(io.BytesIO(client.decode_file_bytes(token_bytes, "flac")), dtype="float32")
    assert rate == RATE and flac.shape == speech.shape
    np.testing.assert_allclose(flac, decoded, atol=2 ** -22)  # 24-bit FLAC of the same samples


def sf_bytes(audio) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, RATE, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


@pytest.mark.parametrize("endpoint,body,params,status,words", [
    ("encode", b"# not audio at all\n" * 50, {}, 415, "cannot read the request body as audio"),
    ("encode", b"", {}, 415, "is empty"),
    ("encode", b"\x00\x01\x02", {"format": "s16le", "sample_rate": "44100"}, 422, "not whole s16le frames"),
    ("encode", b"\x00\x00", {"format": "s16le"}, 400, "needs sample_rate"),
    ("encode", np.full(4096, np.nan, "<f4").tobytes(), {"format": "f32le", "sample_rate": "44100"}, 422, "NaN"),
    ("decode", b"RIFF....WAVEfmt ", {}, 415, "not a meltok token file"),
    ("decode", b"MELTOK\x01\x00\xff\x00\x00\x00{", {}, 400, "cut short"),
    ("decode", "tokens", {"format": "mp3"}, 400, "format='mp3'"),
    ("decode", "other-model", {}, 422, "was made by model 'other'"),
])
def test_bad_requests_get_one_line_errors(url, codec, endpoint, body, params, status, words):
    if isinstance(body, str):  # a good token file, of this model or of another
        body = tokens_to_bytes(np.zeros((1, 12, 8), np.int64), sample_rate=RATE, num_samples=14000,
                               model_id=codec.model_id if body == "tokens" else "other")
    answer = httpx.post(f"{url}/v1/{endpoint}", content=body, params=params, timeout=60)
    assert answer.status_code == status, answer.text
    message = answer.json()["error"]
    assert words in message and "\n" not in message


def test_bodies_over_the_limit_get_413(url):
    answer = httpx.post(f"{url}/v1/encode", content=b"\0" * (LIMITS["max_body_bytes"] + 1), timeout=60)
    assert answer.status_code == 413 and "at most" in answer.json()["error"]


def test_metrics_count_requests_errors_and_batches(url, real_clip_paths):
    httpx.post(f"{url}/v1/encode", content=b"not audio", timeout=60)
    text = httpx.get(f"{url}/metrics").text
    assert 'meltok_errors_total{endpoint="encode",kind="415"}' in text
    assert 'meltok_requests_total{endpoint="encode"}' in text
    for name in ("meltok_request_seconds_bucket", "meltok_batch_size_bucket", "meltok_queue_depth",
                 "meltok_active_streams"):
        assert name in text


# ------------------------------------------------------------------------------------------ streams
def test_stream_decode_equals_the_stream_api_whatever_the_framing(url, codec, speech):
    tokens = codec.encode(speech)[0]
    reference = stream_reference(codec, tokens)
    with Client(url) as client:
        chunks = []
        streamed = client.stream_decode(tokens, columns_per_message=3, chunks=chunks)
        np.testing.assert_array_equal(streamed, reference)
        assert len(chunks) > 3  # audio came as it became final, not at the end
        assert len(streamed) == codec.decoded_length(tokens.shape[1])
        as_s16 = client.stream_decode(tokens, columns_per_message=7, fmt="s16le")
    np.testing.assert_array_equal(as_s16, to_s16(reference).astype(np.float32) / 32768)


def test_stream_settings_within_the_bounds_reach_the_stream(url, codec, speech):
    tokens = codec.encode(speech[:2 * RATE])[0]
    with Client(url) as client:
        cheaper = client.stream_decode(tokens, columns_per_message=6, context_seconds=0.25, step_seconds=0.6)
    np.testing.assert_array_equal(cheaper, stream_reference(codec, tokens, context_seconds=0.25, step_seconds=0.6))
    assert not np.array_equal(cheaper, stream_reference(codec, tokens))  # the settings made a difference


def test_server_stream_settings_reach_health_and_streams_and_a_lone_stream_never_waits(codec, speech):
    tokens = codec.encode(speech[:RATE])[0]
    reference = stream_reference(codec, tokens, context_seconds=0.25, step_seconds=0.2)
    decoder = codec.stream_decoder(lookahead_seconds=0.2, context_seconds=0.25, step_seconds=0.2)
    windows = len(decoder.grid.plan(tokens.shape[1]))
    with running_server(stream_context_seconds=0.25, stream_step_seconds=0.2, max_wait_ms=3000) as (url, _):
        stream = httpx.get(f"{url}/health").json()["stream"]
        assert (stream["context_seconds"], stream["step_seconds"]) == (0.25, 0.2)
        assert stream["compute_factor"] == round(decoder.grid.window / decoder.grid.step, 3)
        with Client(url) as client:
            started = time.monotonic()
            streamed = client.stream_decode(tokens, columns_per_message=3)
            elapsed = time.monotonic() - started
            with pytest.raises(ServeError, match="context_seconds is 0.5; this server allows at most 0.25"):
                client.stream_decode(tokens, context_seconds=0.5)
    np.testing.assert_array_equal(streamed, reference)
    assert windows >= 5 and elapsed < 3.0 * windows / 2  # the only user's window calls skip the 3 s batching wait


@pytest.mark.parametrize("kind,options,words", [
    ("decode", {"context_seconds": STREAM_CONTEXT_SECONDS + 0.5}, "context_seconds is"),
    ("decode", {"step_seconds": STREAM_STEP_SECONDS / 2}, "step_seconds is"),
    ("encode", {"step_seconds": 0}, "step_seconds is 0; this server allows at least"),
])
def test_stream_settings_beyond_the_servers_bounds_are_refused_with_1008(url, kind, options, words):
    with connect(f"{url.replace('http', 'ws')}/v1/stream/{kind}") as ws:
        ws.send(json.dumps(options))
        error, code = closed_with(ws)
    assert code == 1008 and words in error and "\n" not in error


def test_stream_encode_equals_the_stream_api(url, codec, speech):
    with Client(url) as client:
        tokens = client.stream_encode(speech, samples_per_message=5000)
    np.testing.assert_array_equal(tokens, encode_reference(codec, speech))
    assert tokens.shape[1] == codec.encode(speech).shape[2]


def test_one_connection_carries_streams_in_turn(url, codec, speech):
    tokens = codec.encode(speech[:RATE])[0]
    reference = stream_reference(codec, tokens)
    with connect(f"{url.replace('http', 'ws')}/v1/stream/decode") as ws:
        for fmt in ("f32le", "s16le"):
            ws.send(json.dumps({"lookahead_seconds": 0.2, "format": fmt}))
            ws.send(token_frame(tokens))
            ws.send(json.dumps({"flush": True}))
            audio = b""
            while isinstance(message := ws.recv(timeout=60), bytes):
                audio += message
            assert json.loads(message) == {"done": True, "num_samples": len(reference)}
            expected = reference.astype("<f4").tobytes() if fmt == "f32le" else to_s16(reference).tobytes()
            assert audio == expected


@pytest.mark.parametrize("messages,code,words", [
    ([b"\x00\x00"], 1008, "before the options"),
    (['{"format": "mp3"}'], 1003, "format is 'mp3'"),
    (['{"lookahead": 1}'], 1003, "unknown options"),
    (["{}", b"\x01\x02\x03"], 1003, "not k >= 1 columns"),
    (["{}", np.full((1, 12), 8192, "<u2").tobytes()], 1003, "outside the codebook"),
    (["{}", b"\0" * (LIMITS["max_frame_bytes"] + 24)], 1009, "over this server's limit"),
    (["{}", '{"hello": 1}'], 1008, "only text message"),
])
def test_bad_stream_messages_close_with_the_right_code(url, messages, code, words):
    with connect(f"{url.replace('http', 'ws')}/v1/stream/decode", max_size=None) as ws:
        for message in messages:
            ws.send(message)
        error, closed = closed_with(ws)
    assert closed == code and words in error and "\n" not in error


def test_idle_connections_are_closed(url):
    with connect(f"{url.replace('http', 'ws')}/v1/stream/encode") as ws:
        ws.send("{}")
        started = time.monotonic()
        error, code = closed_with(ws)
    assert code == 1008 and "idle" in error and time.monotonic() - started >= LIMITS["idle_timeout_s"] - 0.5


def active_streams(url) -> float:
    line = next(line for line in httpx.get(f"{url}/metrics").text.splitlines()
                if line.startswith("meltok_active_streams "))
    return float(line.split()[1])


def test_streams_beyond_the_limit_try_later_and_disconnects_free_their_state(url, server, codec, speech):
    tokens = codec.encode(speech[:RATE])[0]
    ws_url = f"{url.replace('http', 'ws')}/v1/stream/decode"
    with contextlib.ExitStack() as stack:
        opened = [stack.enter_context(connect(ws_url)) for _ in range(LIMITS["max_streams"])]
        for ws in opened:  # mid-stream: options and a few columns, no flush
            ws.send("{}")
            ws.send(token_frame(tokens[:, :6]))
        assert active_streams(url) == LIMITS["max_streams"]
        with connect(ws_url) as extra:
            error, code = closed_with(extra)
        assert code == 1013 and "limit of 3 streams" in error
        for ws in opened:  # clients that vanish mid-stream, without a close frame
            ws.socket.close()
    deadline = time.monotonic() + 10
    while active_streams(url) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert active_streams(url) == 0 and server[1].streams == 0


def test_a_burst_of_fuzzed_bodies_and_frames_leaves_the_server_serving(url, codec, speech):
    rng = np.random.default_rng(0)
    good = tokens_to_bytes(codec.encode(speech[:RATE]), sample_rate=RATE, num_samples=RATE, model_id=codec.model_id)
    bodies = [rng.bytes(int(rng.integers(0, 3000))) for _ in range(12)]
    bodies += [good[:int(rng.integers(0, len(good)))] for _ in range(6)]  # truncated token files
    bodies += [bytes(b ^ 0xFF if i == int(rng.integers(12, len(good))) else b for i, b in enumerate(good))
               for _ in range(4)]  # one byte flipped
    bodies += [b"RIFF" + rng.bytes(200), b"fLaC" + rng.bytes(200), b"OggS" + rng.bytes(200), b'{"tokens": [[1e9]]}']
    for body in bodies:
        for endpoint in ("encode", "decode"):
            answer = httpx.post(f"{url}/v1/{endpoint}", content=body, timeout=60,
                                headers={"content-type": "application/json"} if body.startswith(b"{") else {})
            assert answer.status_code in (200, 400, 413, 415, 422), (endpoint, body[:20], answer.text)
            assert answer.status_code == 200 or "error" in answer.json()
    ws_url = f"{url.replace('http', 'ws')}/v1/stream/decode"
    for _ in range(8):
        with connect(ws_url, max_size=None) as ws:
            messages = [rng.choice(["{}", '{"format": "f32le"}', "not json", "[1, 2]"]),
                        rng.bytes(int(rng.integers(1, 100))), json.dumps({"flush": True})]
            try:
                for message in messages:
                    ws.send(message)
            except ConnectionClosed:  # the server closed on a bad message before the client sent the rest
                pass
            closed_with(ws)
    assert active_streams(url) == 0
    tokens = codec.encode(speech[:RATE])
    with Client(url) as client:
        np.testing.assert_array_equal(client.decode(tokens, RATE), codec.decode(tokens, num_samples=RATE)[0])
        np.testing.assert_array_equal(client.stream_decode(tokens[0]), stream_reference(codec, tokens[0]))


def test_client_raises_the_servers_message(url):
    with Client(url) as client, pytest.raises(ServeError, match="outside the codebook") as caught:
        client.stream_decode(np.full((12, 4), 9000))
    assert caught.value.status == 1003


def test_a_full_queue_answers_503_with_retry_after():
    from .conftest import LONG_MUSIC

    with running_server(max_queue=1) as (url, state):
        answers = {}

        def long_request():
            answers["first"] = httpx.post(f"{url}/v1/encode", content=LONG_MUSIC.read_bytes(), timeout=300)

        first = threading.Thread(target=long_request)
        first.start()
        deadline = time.monotonic() + 30
        while state.pending == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = httpx.post(f"{url}/v1/decode", content=b"MELTOK", timeout=60)
        first.join(300)
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1" and "busy" in busy.json()["error"]
    assert answers["first"].status_code == 200
