"""The ASGI app of ``meltok-rt serve`` (Starlette): health, metrics, offline encode/decode, streams.

``create_app(ServeConfig(...))`` returns an app that opens one ``Codec`` when it starts (ASGI
lifespan; in a background thread, so ``/health`` answers "not ready" meanwhile), warms both graphs
up, and puts them behind batchers (``batcher.BatchedCodec``). Compute runs in worker threads; the
event loop only moves bytes. The same app runs under uvicorn (``server.run``) and Ray Serve
(``ray_serve``). Endpoints and their errors: the README's "Serving" section and ``protocol``.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from meltok_runtime.errors import MeltokError, SettingsError
from meltok_runtime.io.tokenfile import token_file_bytes
from meltok_runtime.manifest import file_sha256
from meltok_runtime.serve import protocol
from meltok_runtime.serve.batcher import BatchedCodec
from meltok_runtime.serve.metrics import ServeMetrics
from meltok_runtime.serve.offline import decode_body, encode_body, tokens_json
from meltok_runtime.serve.errors import Disconnected, ProtocolError, Refused
from meltok_runtime.serve.sessions import DecodeSession, EncodeSession

log = logging.getLogger("meltok_runtime")

RETRY_AFTER_SECONDS = "1"
# ONNX Runtime CPU: graph calls side by side use 2 cores better than one after the other (README, "Serving")
CPU_CONCURRENT_CALLS = 4


@dataclass(frozen=True)
class ServeConfig:
    """What one server process runs and its limits (``meltok-rt serve`` options)."""

    bundle: str | None = None  # None: the shipped bundle
    backend: str = "auto"
    threads: int | None = None
    max_batch: int = 16  # items per graph call (clamped to the bundle's max_batch)
    max_wait_ms: float = 5.0  # how long a graph call waits for others of its shape
    concurrent_calls: int | None = None  # graph calls run at once per graph; None: 4 on ort-cpu, else 1
    max_streams: int = 64  # open stream connections
    max_queue: int = 64  # offline requests being served at once; more get 503
    token: str | None = field(default=None, repr=False)  # bearer token for every endpoint but /health
    max_body_bytes: int = 64 * 2 ** 20
    max_frame_bytes: int = 2 ** 20
    idle_timeout_s: float = 60.0  # a stream connection silent this long is closed
    # streams' windows (README, "Serving": quality against compute); a stream may ask for less context or a
    # longer step, never more context or a shorter step
    stream_context_seconds: float = protocol.STREAM_CONTEXT_SECONDS
    stream_step_seconds: float = protocol.STREAM_STEP_SECONDS

    def __post_init__(self):
        for name in ("max_batch", "max_streams", "max_queue", "max_body_bytes", "max_frame_bytes", "concurrent_calls"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.idle_timeout_s <= 0:
            raise SettingsError("max_wait_ms must be >= 0 and idle_timeout_s > 0")
        if not (0 <= self.stream_context_seconds <= 60 and 0 < self.stream_step_seconds <= 60):
            raise SettingsError(f"stream_context_seconds must be from 0 to 60 and stream_step_seconds above 0 and at "
                                f"most 60, got {self.stream_context_seconds!r}, {self.stream_step_seconds!r}")

    def stream_defaults(self, kind: str) -> dict:
        """The options a ``kind`` ("decode", "encode") stream gets unless its options message says otherwise."""
        base = protocol.DECODE_OPTIONS if kind == "decode" else protocol.ENCODE_OPTIONS
        return {**base, "context_seconds": self.stream_context_seconds, "step_seconds": self.stream_step_seconds}


class ServeState:
    """The codec, batchers, counters and flags one app shares between its requests."""

    def __init__(self, config: ServeConfig):
        self.config, self.metrics = config, ServeMetrics()
        self.codec = self.batched = None
        self.ready, self.draining, self.error = False, False, None
        self.pending = self.streams = 0
        self.limiter = anyio.CapacityLimiter(config.max_queue + config.max_streams)
        self.identity: dict = {}

    def load(self) -> None:
        """Open the codec, put its graphs behind batchers, warm both up; then ready (or ``error``)."""
        from meltok_runtime.codec import Codec

        try:
            config = self.config
            self.codec = Codec.open(config.bundle, backend=config.backend, threads=config.threads)
            workers = config.concurrent_calls or (CPU_CONCURRENT_CALLS if self.codec.backend == "ort-cpu" else 1)
            self.batched = BatchedCodec(self.codec, max_batch=config.max_batch, max_wait_s=config.max_wait_ms / 1000,
                                        on_batch=self.metrics.observe_batch, workers=workers)
            self.metrics.watch_queue("encoder", lambda: self.batched.encoder.depth)
            self.metrics.watch_queue("decoder", lambda: self.batched.decoder.depth)
            codec = self.codec
            warm = codec.encode(np.zeros(codec.sample_rate, np.float32))  # both graphs, once
            codec.decode(warm)
            self.identity = {
                "model_id": codec.model_id, "model_name": codec.manifest.model_name, "backend": codec.backend,
                "bundle": str(codec.bundle), "bundle_sha256": file_sha256(Path(codec.bundle) / "manifest.json"),
                "sample_rate": codec.sample_rate,
                "token_layout": {"rows": codec.token_rows, "codebook_size": codec.codebook_size,
                                 "column_samples": codec.column_samples, "hop_length": codec.hop_length, "columns_per_second": codec.token_rate
                                 / codec.token_rows, "stream_frame": "little-endian uint16 [k, rows]"},
                "max_batch": self.batched.encoder.max_batch, "max_wait_ms": config.max_wait_ms,
                "concurrent_calls": workers,
                "max_streams": config.max_streams, "stream": self._stream_settings()}
            self.ready = True
            log.info("serving %s with backend %s", codec.model_id, codec.backend)
        except Exception as error:  # reported by /health; the process stays up to say why
            self.error = f"{type(error).__name__}: {error}"
            log.error("the codec could not be opened: %s", self.error)

    def _stream_settings(self) -> dict:
        """/health's ``stream``: the default stream settings, the bounds a stream's options must keep, and
        what a default decode stream costs (``compute_factor``: columns decoded per column kept) and waits
        (``decode_latency_seconds``: its algorithmic latency)."""
        config = self.config
        decoder = self.codec.stream_decoder(lookahead_seconds=protocol.DECODE_OPTIONS["lookahead_seconds"],
                                            context_seconds=config.stream_context_seconds,
                                            step_seconds=config.stream_step_seconds)
        return {"context_seconds": config.stream_context_seconds, "step_seconds": config.stream_step_seconds,
                "lookahead_seconds": protocol.DECODE_OPTIONS["lookahead_seconds"],
                "max_context_seconds": config.stream_context_seconds, "min_step_seconds": config.stream_step_seconds,
                "max_lookahead_seconds": protocol.MAX_LOOKAHEAD_SECONDS,
                "decode_columns": {"context": decoder.grid.left, "step": decoder.grid.step,
                                   "lookahead": decoder.grid.right},
                "compute_factor": round(decoder.grid.window / decoder.grid.step, 3),
                "decode_latency_seconds": round(decoder.latency_seconds, 4)}

    def close(self) -> None:
        if self.batched is not None:
            self.batched.close()
        if self.codec is not None:
            self.codec.close()

    def authorized(self, headers) -> bool:
        if self.config.token is None:
            return True
        expected = f"Bearer {self.config.token}".encode()
        return hmac.compare_digest(headers.get("authorization", "").encode(), expected)


def create_app(config: ServeConfig) -> Starlette:
    """The ASGI app serving ``config``'s bundle; ``app.state.serve`` is its ``ServeState``."""
    state = ServeState(config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=state.load, name="meltok-load", daemon=True).start()
        yield
        state.draining = True
        await anyio.to_thread.run_sync(state.close)

    async def health(request):
        return _health(state)

    async def metrics(request):
        return _metrics(state, request)

    async def encode(request):
        return await _offline(state, request, "encode")

    async def decode(request):
        return await _offline(state, request, "decode")

    async def stream_decode(websocket):
        await _stream(state, websocket, "decode")

    async def stream_encode(websocket):
        await _stream(state, websocket, "encode")

    routes = [Route("/health", health, methods=["GET"]), Route("/metrics", metrics, methods=["GET"]),
              Route("/v1/encode", encode, methods=["POST"]), Route("/v1/decode", decode, methods=["POST"]),
              WebSocketRoute("/v1/stream/decode", stream_decode), WebSocketRoute("/v1/stream/encode", stream_encode)]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.serve = state
    return app


# ---------------------------------------------------------------------------------------------- HTTP
def _health(state: ServeState) -> JSONResponse:
    body = {"ready": state.ready and not state.draining, **state.identity}
    if state.error:
        body["error"] = state.error
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


def _metrics(state: ServeState, request: Request) -> Response:
    if not state.authorized(request.headers):
        return _error_response("metrics", state, 401, "missing or wrong bearer token: send Authorization: Bearer TOKEN")
    state.metrics.pending.set(state.pending)
    state.metrics.active_streams.set(state.streams)
    return Response(state.metrics.text(), media_type="text/plain; version=0.0.4")


async def _offline(state: ServeState, request: Request, endpoint: str) -> Response:
    metrics, started = state.metrics, time.monotonic()
    metrics.requests.labels(endpoint=endpoint).inc()
    try:
        _admit(state, request)
        state.pending += 1
        try:
            body = await _read_body(request, state.config.max_body_bytes)
            params, content_type = dict(request.query_params), request.headers.get("content-type", "")
            wants_json = "application/json" in request.headers.get("accept", "")
            work = _encode_work if endpoint == "encode" else _decode_work

            def run():
                with state.batched.user("encoder" if endpoint == "encode" else "decoder"):
                    return work(state.batched, body, params, content_type, wants_json)

            content, media_type = await anyio.to_thread.run_sync(run, limiter=state.limiter)
        finally:
            state.pending -= 1
    except Refused as refused:
        return _error_response(endpoint, state, refused.status, str(refused), refused.headers)
    except MeltokError as error:
        return _error_response(endpoint, state, protocol.http_status(error), str(error))
    except Exception as error:  # a bug: logged with its traceback, answered, and the server goes on
        log.exception("%s failed", endpoint)
        return _error_response(endpoint, state, 500, f"internal error ({type(error).__name__}); see the server log")
    metrics.latency.labels(endpoint=endpoint).observe(time.monotonic() - started)
    if isinstance(content, dict):
        return JSONResponse(content)
    return Response(content, media_type=media_type)


def _encode_work(codec, body, params, content_type, wants_json):
    token_file = encode_body(codec, body, params)
    if wants_json:
        return tokens_json(token_file), "application/json"
    return token_file_bytes(token_file), "application/octet-stream"


def _decode_work(codec, body, params, content_type, wants_json):
    return decode_body(codec, body, content_type, params)


def _admit(state: ServeState, request: Request) -> None:
    """Refuse before any work: no token (401), not ready or shutting down, or too busy (503)."""
    if not state.authorized(request.headers):
        raise Refused(401, "missing or wrong bearer token: send Authorization: Bearer TOKEN")
    retry = {"Retry-After": RETRY_AFTER_SECONDS}
    if not state.ready or state.draining:
        raise Refused(503, "the server is " + ("shutting down" if state.draining else "not ready yet (warming up)")
                       + "; retry later", retry)
    if state.pending >= state.config.max_queue:
        raise Refused(503, f"the server is busy ({state.pending} requests in progress); retry later", retry)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"the body has {declared} bytes; this server takes at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"the body has more than {limit} bytes, the most this server takes")
        chunks.append(chunk)
    return b"".join(chunks)


def _error_response(endpoint: str, state: ServeState, status: int, message: str, headers=None) -> JSONResponse:
    state.metrics.errors.labels(endpoint=endpoint, kind=str(status)).inc()
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# ----------------------------------------------------------------------------------------- streams
async def _stream(state: ServeState, websocket: WebSocket, kind: str) -> None:
    endpoint = f"stream_{kind}"
    state.metrics.requests.labels(endpoint=endpoint).inc()
    if not state.authorized(websocket.headers):
        state.metrics.errors.labels(endpoint=endpoint, kind=str(protocol.CLOSE_POLICY)).inc()
        await websocket.close(protocol.CLOSE_POLICY)  # before accepting: the handshake gets 403
        return
    await websocket.accept()
    if not state.ready or state.draining or state.streams >= state.config.max_streams:
        why = "not ready or shutting down" if not state.ready or state.draining else \
            f"serving its limit of {state.config.max_streams} streams"
        await _close_with_error(state, websocket, endpoint, f"the server is {why}; retry later",
                                protocol.CLOSE_TRY_LATER)
        return
    state.streams += 1
    state.metrics.active_streams.set(state.streams)
    try:
        await _serve_streams(state, websocket, kind, endpoint)
    except ProtocolError as error:
        await _close_with_error(state, websocket, endpoint, str(error), error.close_code)
    except MeltokError as error:
        await _close_with_error(state, websocket, endpoint, str(error), protocol.CLOSE_BAD_DATA)
    except (Disconnected, WebSocketDisconnect, OSError):  # the client went away (OSError: while we sent)
        pass
    except Exception as error:
        log.exception("%s failed", endpoint)
        await _close_with_error(state, websocket, endpoint, f"internal error ({type(error).__name__}); see the "
                                "server log", protocol.CLOSE_SERVER_ERROR)
    finally:
        state.streams -= 1
        state.metrics.active_streams.set(state.streams)


async def _receive(state: ServeState, websocket: WebSocket) -> tuple[str | None, bytes | None]:
    """The next message as ``(text, None)`` or ``(None, data)``; closes idle, oversized, gone clients."""
    try:
        message = await asyncio.wait_for(websocket.receive(), state.config.idle_timeout_s)
    except asyncio.TimeoutError:
        raise ProtocolError(f"no message for {state.config.idle_timeout_s:g} s: closing the idle connection",
                            protocol.CLOSE_POLICY) from None
    if message["type"] == "websocket.disconnect":
        raise Disconnected()
    text, data = message.get("text"), message.get("bytes")
    size = len(text.encode()) if text is not None else len(data or b"")
    if size > state.config.max_frame_bytes:
        raise ProtocolError(f"a message of {size} bytes is over this server's limit of "
                            f"{state.config.max_frame_bytes}; send smaller frames", protocol.CLOSE_TOO_BIG)
    return text, data


async def _serve_streams(state: ServeState, websocket: WebSocket, kind: str, endpoint: str) -> None:
    """Streams one after the other on one connection: options, frames, flush, done."""
    defaults = state.config.stream_defaults(kind)
    codec = state.batched
    while True:
        text, data = await _receive(state, websocket)
        if text is None:
            raise ProtocolError("a binary frame before the options: send the options as a JSON text message first",
                                protocol.CLOSE_POLICY)
        if state.draining:
            raise ProtocolError("the server is shutting down; retry later", protocol.CLOSE_TRY_LATER)
        options = protocol.parse_options(text, {**defaults, **({"sample_rate": codec.sample_rate}
                                                              if kind == "encode" else {})})
        protocol.check_stream_bounds(options, state.config.stream_context_seconds, state.config.stream_step_seconds)
        if kind == "encode" and options["sample_rate"] != codec.sample_rate:
            raise ProtocolError(f"sample_rate is {options['sample_rate']!r}; this model streams at "
                                f"{codec.sample_rate} Hz: resample before sending")
        session_class = DecodeSession if kind == "decode" else EncodeSession
        session = await anyio.to_thread.run_sync(session_class, codec, options)

        def step(work, *args):
            with codec.user(session.graph):
                return work(*args)

        started, first_input, answered, fmt = time.monotonic(), None, False, options["format"]
        while True:
            text, data = await _receive(state, websocket)
            if text is not None:
                protocol.parse_control(text)
                out = await anyio.to_thread.run_sync(step, session.flush, limiter=state.limiter)
            else:
                first_input = first_input or time.monotonic()
                frame = protocol.parse_token_frame(data, codec.token_rows) if kind == "decode" else \
                    protocol.parse_pcm(data, fmt)
                out = await anyio.to_thread.run_sync(step, session.push, frame, limiter=state.limiter)
            if out.shape[-1]:
                await websocket.send_bytes(protocol.pcm_bytes(out, fmt) if kind == "decode" else
                                           protocol.token_frame(out))
                if not answered and first_input is not None:
                    state.metrics.first_audio.labels(endpoint=endpoint).observe(time.monotonic() - first_input)
                answered = True
            if text is not None:
                break
        done = {"done": True, "num_samples": session.samples}
        if kind == "encode":
            done["num_columns"] = session.columns
        await websocket.send_json(done)
        state.metrics.latency.labels(endpoint=endpoint).observe(time.monotonic() - started)


async def _close_with_error(state: ServeState, websocket: WebSocket, endpoint: str, message: str, code: int) -> None:
    state.metrics.errors.labels(endpoint=endpoint, kind=str(code)).inc()
    with contextlib.suppress(Exception):  # the client may be gone already
        await websocket.send_json({"error": message})
        await websocket.close(code, reason=message.encode()[:120].decode(errors="ignore"))  # a close reason: 123 bytes
