"""Python clients of ``meltok-rt serve``: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

>>> from meltok_runtime.serve.client import Client
>>> with Client("http://127.0.0.1:8000") as client:
...     token_file = client.encode(audio, 44100)              # TokenFile: tokens int64 [1, 12, T']
...     audio = client.decode(token_file.tokens, token_file.num_samples[0])   # float32 [N]
...     streamed = client.stream_decode(token_file.tokens[0])  # float32, over the WebSocket

Server errors raise ``ServeError`` with the server's one-line message and its HTTP status or
WebSocket close code.
"""
from __future__ import annotations

import json

import httpx
import numpy as np
from websockets.asyncio.client import connect as connect_async
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from meltok_runtime.io.tokenfile import TokenFile, tokens_from_bytes, tokens_to_bytes
from meltok_runtime.serve.errors import ServeError
from meltok_runtime.serve.protocol import parse_token_frame, token_frame

DEFAULT_TIMEOUT = 300.0
COLUMNS_PER_MESSAGE = 4
SAMPLES_PER_MESSAGE = 8192


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        try:
            message = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise ServeError(f"HTTP {response.status_code}: {message}", response.status_code)
    return response


def _pcm_body(audio) -> tuple[bytes, dict]:
    """float ``[N]`` or ``[C, N]`` -> interleaved f32le bytes and the ``channels`` parameter."""
    audio = np.asarray(audio, dtype=np.float32)
    frames = audio[None] if audio.ndim == 1 else audio
    return np.ascontiguousarray(frames.T, dtype="<f4").tobytes(), {"channels": frames.shape[0]}


def _token_body(tokens, num_samples: int, sample_rate: int, model_id: str, codebook_size: int) -> bytes:
    return tokens_to_bytes(np.asarray(tokens), sample_rate=sample_rate, num_samples=num_samples, model_id=model_id,
                           codebook_size=codebook_size)


def _decoded_length(info: dict, tokens: np.ndarray) -> int:
    """Samples the server decodes from ``tokens`` (``(c * T' - 1) * hop``)."""
    layout = info["token_layout"]
    return layout["column_samples"] * tokens.shape[-1] - layout["hop_length"]


def _stream_options(lookahead_seconds: float, fmt: str, context_seconds: float | None,
                    step_seconds: float | None, **more) -> dict:
    """A stream's options message; context and step only when given (else the server's defaults)."""
    settings = {"context_seconds": context_seconds, "step_seconds": step_seconds}
    return {"lookahead_seconds": lookahead_seconds, "format": fmt, **more,
            **{name: value for name, value in settings.items() if value is not None}}


def _ws_url(url: str, path: str) -> str:
    return "ws" + url[len("http"):].rstrip("/") + path


def _stream_error(closed: ConnectionClosed, last_text: str | None) -> ServeError:
    """The server's ``{"error": ...}`` message (else the close reason) and close code as a ServeError."""
    code = closed.rcvd.code if closed.rcvd is not None else None
    message = closed.rcvd.reason if closed.rcvd is not None else str(closed)
    if last_text and "error" in json.loads(last_text):
        message = json.loads(last_text)["error"]
    return ServeError(f"stream closed ({code}): {message}", code)


class _Connection:
    """The server's address, the bearer-token header and the HTTP client of ``http_class``."""

    http_class = httpx.Client

    def __init__(self, url: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = self.http_class(base_url=self.url, headers=self.headers, timeout=timeout)
        self._info: dict | None = None


class Client(_Connection):
    """Blocking client of one server at ``url`` (``http://host:port``); ``token``: its bearer token."""

    def health(self) -> dict:
        """``GET /health`` (ready, model id, backend, bundle hash, rate, token layout), whatever the status."""
        return self.http.get("/health").json()

    @property
    def info(self) -> dict:
        if self._info is None:
            self._info = self.health()
        return self._info

    def encode(self, audio, sample_rate: int) -> TokenFile:
        """float audio ``[N]`` or ``[C, N]`` at ``sample_rate`` -> the TokenFile ``meltok-rt encode`` would write."""
        body, params = _pcm_body(audio)
        response = self.http.post("/v1/encode", content=body,
                                  params={"format": "f32le", "sample_rate": sample_rate, **params})
        return tokens_from_bytes(_check(response).content, name="the server's answer")

    def encode_file_bytes(self, data: bytes) -> bytes:
        """An audio file's bytes -> token file bytes."""
        return _check(self.http.post("/v1/encode", content=data)).content

    def decode(self, tokens, num_samples: int | None = None, *, sample_rate: int | None = None) -> np.ndarray:
        """Tokens int ``[rows, T']`` or ``[1, rows, T']`` -> float32 audio ``[num_samples]`` (at ``sample_rate``)."""
        tokens = np.asarray(tokens)
        info = self.info
        num_samples = _decoded_length(info, tokens) if num_samples is None else num_samples
        body = _token_body(tokens, num_samples, info["sample_rate"], info["model_id"],
                           info["token_layout"]["codebook_size"])
        params = {"format": "f32le", **({"sample_rate": sample_rate} if sample_rate else {})}
        return np.frombuffer(_check(self.http.post("/v1/decode", content=body, params=params)).content, "<f4").copy()

    def decode_file_bytes(self, data: bytes, fmt: str = "wav") -> bytes:
        """Token file bytes -> audio file bytes (``wav`` or ``flac``) or raw PCM (``s16le``, ``f32le``)."""
        return _check(self.http.post("/v1/decode", content=data, params={"format": fmt})).content

    def stream_decode(self, tokens, *, lookahead_seconds: float = 0.2, columns_per_message: int = COLUMNS_PER_MESSAGE,
                      fmt: str = "f32le", chunks: list | None = None, context_seconds: float | None = None,
                      step_seconds: float | None = None) -> np.ndarray:
        """Tokens int ``[rows, T']`` through ``/v1/stream/decode``: float32 audio ``[(8T' - 1) * hop]``.
        ``chunks``, if given, receives each binary answer (bytes) as it arrives; ``context_seconds`` and
        ``step_seconds``: the stream's windows (None: the server's defaults, in ``/health``'s ``stream``)."""
        tokens = np.asarray(tokens)
        frames = (token_frame(tokens[:, start:start + columns_per_message])
                  for start in range(0, tokens.shape[-1], columns_per_message))
        options = _stream_options(lookahead_seconds, fmt, context_seconds, step_seconds)
        parts = self._stream("/v1/stream/decode", options, frames, None if chunks is None else chunks.append)
        return _pcm_array(b"".join(parts), fmt)

    def stream_encode(self, audio, *, lookahead_seconds: float = 0.2, samples_per_message: int = SAMPLES_PER_MESSAGE,
                      context_seconds: float | None = None, step_seconds: float | None = None) -> np.ndarray:
        """Mono float audio ``[N]`` at the model's rate through ``/v1/stream/encode``: int64 tokens ``[rows, T']``."""
        audio = np.asarray(audio, dtype="<f4")
        rows = self.info["token_layout"]["rows"]
        options = _stream_options(lookahead_seconds, "f32le", context_seconds, step_seconds,
                                  sample_rate=self.info["sample_rate"])
        frames = (audio[start:start + samples_per_message].tobytes()
                  for start in range(0, len(audio), samples_per_message))
        parts = [parse_token_frame(message, rows) for message in self._stream("/v1/stream/encode", options, frames)]
        return np.concatenate(parts, axis=1) if parts else np.zeros((rows, 0), np.int64)

    def _stream(self, path: str, options: dict, frames, on_answer=None) -> list[bytes]:
        """One stream over the WebSocket at ``path``: the options, the binary ``frames``, the flush; returns
        the server's binary answers in order, once it said done (its error message as a ``ServeError``);
        ``on_answer(bytes)`` is called with each as it arrives."""
        with connect(_ws_url(self.url, path), additional_headers=self.headers, max_size=None) as ws:
            parts, text = [], None
            try:
                ws.send(json.dumps(options))
                for frame in frames:
                    ws.send(frame)
                ws.send(json.dumps({"flush": True}))
                while True:
                    message = ws.recv()
                    if isinstance(message, str):
                        text = message
                        if json.loads(message).get("done"):
                            return parts
                        continue
                    parts.append(message)
                    if on_answer is not None:
                        on_answer(message)
            except ConnectionClosed as closed:
                raise _stream_error(closed, text) from None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class AsyncClient(_Connection):
    """The asyncio mirror of ``Client``: ``await client.encode(...)`` and so on."""

    http_class = httpx.AsyncClient

    async def health(self) -> dict:
        return (await self.http.get("/health")).json()

    async def _server_info(self) -> dict:
        if self._info is None:
            self._info = await self.health()
        return self._info

    async def encode(self, audio, sample_rate: int) -> TokenFile:
        body, params = _pcm_body(audio)
        response = await self.http.post("/v1/encode", content=body,
                                        params={"format": "f32le", "sample_rate": sample_rate, **params})
        return tokens_from_bytes(_check(response).content, name="the server's answer")

    async def decode(self, tokens, num_samples: int | None = None, *, sample_rate: int | None = None) -> np.ndarray:
        tokens = np.asarray(tokens)
        info = await self._server_info()
        num_samples = _decoded_length(info, tokens) if num_samples is None else num_samples
        body = _token_body(tokens, num_samples, info["sample_rate"], info["model_id"],
                           info["token_layout"]["codebook_size"])
        params = {"format": "f32le", **({"sample_rate": sample_rate} if sample_rate else {})}
        response = await self.http.post("/v1/decode", content=body, params=params)
        return np.frombuffer(_check(response).content, "<f4").copy()

    async def stream_decode(self, tokens, *, lookahead_seconds: float = 0.2,
                            columns_per_message: int = COLUMNS_PER_MESSAGE, fmt: str = "f32le",
                            pace_seconds: float = 0.0, on_chunk=None, on_send=None,
                            context_seconds: float | None = None, step_seconds: float | None = None) -> np.ndarray:
        """As ``Client.stream_decode``; ``pace_seconds`` waits between messages (real-time pacing),
        ``on_chunk(bytes)`` is called for each binary answer as it arrives, ``on_send(columns)`` after each
        message is sent with the columns sent so far."""
        import asyncio

        tokens = np.asarray(tokens)
        async with connect_async(_ws_url(self.url, "/v1/stream/decode"), additional_headers=self.headers,
                                 max_size=None) as ws:
            parts, text = [], None

            async def send():
                await ws.send(json.dumps(_stream_options(lookahead_seconds, fmt, context_seconds, step_seconds)))
                for start in range(0, tokens.shape[-1], columns_per_message):
                    await ws.send(token_frame(tokens[:, start:start + columns_per_message]))
                    if on_send is not None:
                        on_send(min(start + columns_per_message, tokens.shape[-1]))
                    if pace_seconds:
                        await asyncio.sleep(pace_seconds)
                await ws.send(json.dumps({"flush": True}))

            sender = asyncio.create_task(send())
            try:
                async for message in ws:
                    if isinstance(message, str):
                        text = message
                        if json.loads(message).get("done"):
                            break
                        continue
                    parts.append(message)
                    if on_chunk is not None:
                        on_chunk(message)
                await sender
            except ConnectionClosed as closed:
                raise _stream_error(closed, text) from None
            finally:
                sender.cancel()
        return _pcm_array(b"".join(parts), fmt)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()


def _pcm_array(data: bytes, fmt: str) -> np.ndarray:
    if fmt == "f32le":
        return np.frombuffer(data, "<f4").copy()
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
