"""Run the app under uvicorn, with a shutdown that lets streams finish.

On SIGTERM (or SIGINT) the server stops accepting connections, refuses new requests and streams
(503 / close 1013), waits up to ``drain_seconds`` for open streams and in-flight requests to finish,
then lets uvicorn close what is left and exits 0.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time

import uvicorn

from meltok_runtime.serve.app import ServeConfig, create_app

log = logging.getLogger("meltok_runtime")


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose shutdown first waits for the app's streams and requests to end."""

    def __init__(self, config: uvicorn.Config, state, drain_seconds: float):
        super().__init__(config)
        self.state, self.drain_seconds = state, drain_seconds

    def handle_exit(self, sig, frame) -> None:
        """As uvicorn's, without recording the signal to raise it again after the shutdown: SIGTERM is this
        server's normal way to stop, and it exits 0 (a second SIGINT still forces the exit)."""
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True

    async def shutdown(self, sockets=None) -> None:
        for server in self.servers:  # stop accepting at once
            server.close()
        self.state.draining = True
        deadline = time.monotonic() + self.drain_seconds
        while (self.state.streams or self.state.pending) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.state.streams or self.state.pending:
            log.warning("shutting down with %d streams and %d requests still open", self.state.streams,
                        self.state.pending)
        await super().shutdown(sockets)


def run(config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000, drain_seconds: float = 30.0,
        log_level: str = "warning") -> None:
    """Serve ``config`` on ``host:port`` until SIGTERM/SIGINT (blocking)."""
    app = create_app(config)
    # uvicorn's own frame limit sits above the app's, which answers oversized frames with close 1009
    server_config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                                   ws_max_size=2 * config.max_frame_bytes, timeout_graceful_shutdown=drain_seconds)
    DrainingServer(server_config, app.state.serve, drain_seconds).run()
