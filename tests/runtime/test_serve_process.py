"""``meltok-rt serve`` as a real process: the bearer token, and SIGTERM (stop accepting, finish in-flight
requests and streams, exit 0)."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from meltok_runtime import Codec
from meltok_runtime.serve.client import Client
from meltok_runtime.serve.protocol import token_frame

from .conftest import LONG_MUSIC
from .serve_helpers import free_port, wait_ready
from .test_serve import RATE, stream_reference

MELTOK_RT = Path(sys.executable).with_name("meltok-rt")
TOKEN = "s3cret-token"
CONTEXT, STEP = 1.0, 0.3


@pytest.fixture
def served():
    """A ``meltok-rt serve`` process with its token from the environment and stream settings of its own:
    ``(process, url)``."""
    port = free_port()
    process = subprocess.Popen([str(MELTOK_RT), "serve", "--port", str(port), "--backend", "ort-cpu", "--threads", "1",
                                "--stream-context-seconds", str(CONTEXT), "--stream-step-seconds", str(STEP),
                                "--concurrent-calls", "2"],
                               env={**os.environ, "MELTOK_SERVE_TOKEN": TOKEN}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)


def test_every_endpoint_but_health_needs_the_token(served):
    _, url = served
    health = httpx.get(f"{url}/health")
    assert health.status_code == 200 and health.json()["concurrent_calls"] == 2
    assert (health.json()["stream"]["context_seconds"], health.json()["stream"]["step_seconds"]) == (CONTEXT, STEP)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        assert httpx.get(f"{url}/metrics", headers=headers).status_code == 401
        refused = httpx.post(f"{url}/v1/decode", content=b"x", headers=headers)
        assert refused.status_code == 401 and "bearer token" in refused.json()["error"]
        with pytest.raises(InvalidStatus):
            connect(f"{url.replace('http', 'ws')}/v1/stream/decode", additional_headers=headers)
    with Client(url, token=TOKEN) as client:
        tokens = client.encode(np.zeros(RATE, np.float32), RATE).tokens
        assert client.stream_decode(tokens[0]).shape == ((8 * tokens.shape[2] - 1) * 256,)
    assert httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_sigterm_finishes_in_flight_work_then_exits_0(served, real_clips):
    process, url = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    speech = real_clips["speech"][:2 * RATE]
    with Codec.open(backend="ort-cpu", threads=1) as codec:
        tokens = codec.encode(speech)[0]
        expected = stream_reference(codec, tokens, context_seconds=CONTEXT, step_seconds=STEP)
    answer = {}

    def long_request():
        reply = httpx.post(f"{url}/v1/encode", content=LONG_MUSIC.read_bytes(), headers=auth, timeout=300)
        answer.update(status=reply.status_code, at=time.monotonic())

    with connect(f"{url.replace('http', 'ws')}/v1/stream/decode", additional_headers=auth) as ws:
        ws.send(json.dumps({"format": "f32le"}))
        ws.send(token_frame(tokens[:, :8]))
        request = threading.Thread(target=long_request)
        request.start()
        time.sleep(0.5)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):  # no new connections once draining
            httpx.get(f"{url}/health", timeout=5)
        ws.send(token_frame(tokens[:, 8:]))  # the open stream goes on to its end
        ws.send(json.dumps({"flush": True}))
        audio = b""
        while isinstance(message := ws.recv(timeout=120), bytes):
            audio += message
        assert json.loads(message)["done"] is True
    np.testing.assert_array_equal(np.frombuffer(audio, "<f4"), expected)
    request.join(300)
    assert answer["status"] == 200 and answer["at"] > signalled  # it was in flight at SIGTERM
    assert process.wait(60) == 0, process.stderr.read().decode()
