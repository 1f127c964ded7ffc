"""Dynamic batching: one ``Batcher`` per graph gathers the calls of concurrent requests and streams.

A caller (a worker thread serving a request or a stream push) calls the batcher like the graph
itself: ``batcher(inputs)`` with ``inputs [b, ...]`` blocks until the graph has run and returns its
``[b, ...]`` rows. A worker thread takes the oldest waiting call, waits at most ``max_wait_s``
after its arrival for more calls of **exactly the same shape** (under the reference architecture
zero-padding changes an item's result, so only equal shapes share a graph call), and runs at most
``max_batch`` rows in one call. Calls of other shapes wait for the next round, oldest first.
``workers`` threads do this at once, so up to ``workers`` graph calls run together: on a CPU a batch
of B costs about B calls alone, and calls that run side by side use the cores better than one after
the other (``workers=1``: one call at a time; ``max_batch=1, workers=1``: every call alone, in turn).
Callers that register as users (``with batcher.user():`` around the work that may call it) spare the
others the wait: once every registered user has a call waiting, no other call can come, so the batch
runs at once (one request alone on the server never waits ``max_wait_s``).

On ONNX Runtime CPU a batch of equal-shape items gives each item exactly the result it gets alone
(``tests/runtime/test_serve_batching.py`` holds that), so batched serving equals the CLI bit for bit.

``BatchedCodec`` puts a codec's two graphs behind batchers: it is a ``CodecPipeline`` with the
codec's contract and windows, so offline requests and streams (``stream_decoder``/``stream_encoder``)
run the same pipeline code as the library, only their graph calls are shared.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from typing import Callable

import numpy as np

from meltok_runtime.errors import SettingsError
from meltok_runtime.pipeline import CodecPipeline


class _Call:
    __slots__ = ("inputs", "arrived", "done", "result", "error")

    def __init__(self, inputs: np.ndarray):
        self.inputs, self.arrived = inputs, time.monotonic()
        self.done = threading.Event()
        self.result = self.error = None


class Batcher:
    """Gathers concurrent calls of ``graph`` (``[B, ...] -> [B, ...]``) into batched calls."""

    def __init__(self, graph: Callable[[np.ndarray], np.ndarray], *, max_batch: int, max_wait_s: float,
                 name: str = "graph", on_batch: Callable[[int], None] | None = None, workers: int = 1):
        if max_batch < 1 or max_wait_s < 0 or workers < 1:
            raise SettingsError(f"need max_batch >= 1, max_wait_s >= 0 and workers >= 1, got {max_batch}, "
                                f"{max_wait_s}, {workers}")
        self.graph, self.max_batch, self.max_wait_s, self.name = graph, max_batch, max_wait_s, name
        self._on_batch = on_batch
        self._calls: deque[_Call] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._users = 0  # callers inside ``user()``: each makes one call at a time
        self._threads = [threading.Thread(target=self._loop, name=f"batcher-{name}-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    @property
    def depth(self) -> int:
        """Calls waiting for the graph."""
        return len(self._calls)

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """Run ``inputs [b, ...]`` in some batch; returns its ``[b, ...]`` outputs (blocks until then)."""
        call = _Call(np.ascontiguousarray(inputs))
        with self._ready:
            if self._closed:
                raise RuntimeError(f"the {self.name} batcher is closed")
            self._calls.append(call)
            self._ready.notify_all()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    @contextlib.contextmanager
    def user(self):
        """Register the calling thread as a user while it does work that may call this batcher (one call
        at a time): a batch stops waiting for more calls once every registered user has one waiting."""
        with self._ready:
            self._users += 1
        try:
            yield self
        finally:
            with self._ready:
                self._users -= 1
                self._ready.notify_all()

    def close(self) -> None:
        """Run what is waiting, then stop the worker threads."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()

    def _take(self) -> list[_Call] | None:
        """The next batch: the oldest call and later ones of its shape (``max_batch`` rows at most)."""
        with self._ready:
            while True:
                if not self._calls:
                    if self._closed:
                        return None
                    self._ready.wait()
                    continue
                first = self._calls[0]  # again after each wait: another worker may have taken it
                left = first.arrived + self.max_wait_s - time.monotonic()
                if self._closed or left <= 0 or self._rows(first) >= self.max_batch or self._all_users_waiting():
                    break
                self._ready.wait(left)
            batch, rows, kept = [], 0, deque()
            for call in self._calls:
                size = call.inputs.shape[0]
                if call.inputs.shape[1:] == first.inputs.shape[1:] and (not batch or rows + size <= self.max_batch):
                    batch.append(call)
                    rows += size
                else:
                    kept.append(call)
            self._calls = kept
            return batch

    def _all_users_waiting(self) -> bool:
        """Whether every registered user has a call waiting, so no other call can come (the server
        registers every caller; with none registered, a batch waits its ``max_wait_s`` as before)."""
        return 0 < self._users <= len(self._calls)

    def _rows(self, first: _Call) -> int:
        return sum(call.inputs.shape[0] for call in self._calls if call.inputs.shape[1:] == first.inputs.shape[1:])

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            try:
                inputs = batch[0].inputs if len(batch) == 1 else np.concatenate([c.inputs for c in batch])
                outputs = np.asarray(self.graph(inputs))
                start = 0
                for call in batch:
                    call.result = outputs[start:start + call.inputs.shape[0]]
                    start += call.inputs.shape[0]
                if self._on_batch is not None:
                    self._on_batch(int(inputs.shape[0]))
            except BaseException as error:  # the callers re-raise it; the batcher keeps serving
                for call in batch:
                    call.error = error
            for call in batch:
                call.done.set()


class BatchedCodec(CodecPipeline):
    """``codec``'s contract, windows and pipeline, with its two graph calls shared through batchers."""

    def __init__(self, codec: CodecPipeline, *, max_batch: int, max_wait_s: float,
                 on_batch: Callable[[str, int], None] | None = None, workers: int = 1):
        self.codec = codec
        self.max_batch = codec.max_batch
        limit = min(max_batch, codec.max_batch or max_batch)

        def report(name):
            return None if on_batch is None else (lambda size: on_batch(name, size))

        self.encoder = Batcher(codec._encode_graph, max_batch=limit, max_wait_s=max_wait_s, name="encoder",
                               on_batch=report("encoder"), workers=workers)
        self.decoder = Batcher(codec._decode_graph, max_batch=limit, max_wait_s=max_wait_s, name="decoder",
                               on_batch=report("decoder"), workers=workers)

    sample_rate = property(lambda self: self.codec.sample_rate)
    hop_length = property(lambda self: self.codec.hop_length)
    compression = property(lambda self: self.codec.compression)
    token_rows = property(lambda self: self.codec.token_rows)
    codebook_size = property(lambda self: self.codec.codebook_size)
    model_id = property(lambda self: self.codec.model_id)
    token_rate = property(lambda self: self.codec.token_rate)
    windows = property(lambda self: self.codec.windows)
    stream_contract = property(lambda self: self.codec.stream_contract)
    mel_inverter = property(lambda self: self.codec.mel_inverter)  # log-mel decoders: finished after the batcher

    def window_limit(self) -> int | None:
        return self.codec.window_limit()

    def encode(self, audio, sample_rate: int = 44100, *, pad: bool = True):
        """As ``Codec.encode``, through the batchers."""
        return self._encode_numpy(audio, sample_rate, pad=pad, channels_last=False, windows=None, progress=None)

    def decode(self, tokens, num_samples: int | None = None, *, sample_rate: int | None = None):
        """As ``Codec.decode``, through the batchers."""
        return self._decode_numpy(tokens, num_samples, sample_rate=sample_rate, windows=None, progress=None)

    def user(self, graph: str):
        """``with batched.user("encoder" | "decoder"):`` around work that calls that graph (``Batcher.user``)."""
        return (self.encoder if graph == "encoder" else self.decoder).user()

    def _encode_graph(self, audio: np.ndarray) -> np.ndarray:
        return self.encoder(audio)

    def _decode_graph(self, tokens: np.ndarray) -> np.ndarray:
        return self.decoder(tokens)

    def close(self) -> None:
        """Stop the batchers (after what is waiting); the codec stays open."""
        self.encoder.close()
        self.decoder.close()
