"""``meltok-rt serve --ray``: the same app as a Ray Serve deployment on a local Ray instance, with a real
HTTP request and a real WebSocket stream through Ray Serve's proxy."""
import numpy as np
import pytest

from meltok_runtime import Codec
from meltok_runtime.serve.app import ServeConfig
from meltok_runtime.serve.client import Client

from .serve_helpers import free_port, wait_ready
from .test_serve import RATE, stream_reference

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


def test_ray_serve_deployment_answers_http_and_websocket(real_clips):
    from meltok_runtime.serve.ray_serve import start

    speech = real_clips["speech"][:RATE]
    with Codec.open(backend="ort-cpu", threads=1) as codec:
        tokens = codec.encode(speech)
        decoded = codec.decode(tokens, num_samples=RATE)[0]
        streamed = stream_reference(codec, tokens[0])
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        start(ServeConfig(backend="ort-cpu", threads=1), replicas=1, port=port, num_cpus=1)
        url = f"http://127.0.0.1:{port}"
        assert wait_ready(url)["backend"] == "ort-cpu"
        with Client(url) as client:
            np.testing.assert_array_equal(client.encode(speech, RATE).tokens, tokens)
            np.testing.assert_array_equal(client.decode(tokens, RATE), decoded)
            np.testing.assert_array_equal(client.stream_decode(tokens[0]), streamed)
    finally:
        serve.shutdown()
        ray.shutdown()
