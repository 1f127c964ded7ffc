"""A real ``meltok-rt serve`` app on loopback for the serving tests: uvicorn in a thread on a free port."""
import contextlib
import socket
import threading
import time

import httpx

from meltok_runtime.serve.app import ServeConfig, create_app
from meltok_runtime.serve.server import DrainingServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, timeout: float = 120.0) -> dict:
    """Poll ``/health`` until the server says ready; returns its answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            answer = httpx.get(f"{url}/health", timeout=5)
            if answer.status_code == 200 and answer.json()["ready"]:
                return answer.json()
            assert "error" not in answer.json(), answer.json()
        time.sleep(0.1)
    raise TimeoutError(f"{url} was not ready within {timeout} s")


@contextlib.contextmanager
def running_server(**options):
    """Yield ``(url, state)`` of a server of the shipped bundle on ONNX Runtime CPU, 1 thread, unless
    ``options`` (``ServeConfig`` fields) say otherwise."""
    import uvicorn

    config = ServeConfig(**{"backend": "ort-cpu", "threads": 1, **options})
    app = create_app(config)
    port = free_port()
    server = DrainingServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           ws_max_size=2 * config.max_frame_bytes), app.state.serve, 5.0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        yield url, app.state.serve
    finally:
        server.should_exit = True
        thread.join(60)
