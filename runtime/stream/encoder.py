"""``StreamEncoder``: audio in, tokens out (see ``meltok_runtime.stream``)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from meltok_runtime.lengths import padded_length, token_columns
from meltok_runtime.stream.spec import (DEFAULT_CONTEXT_SECONDS, DEFAULT_LOOKAHEAD_SECONDS, Stream, StreamSpec,
                                        check_audio, samples)


class StreamEncoder(Stream):
    """Audio in, tokens out; see the module docstring. ``encode_fn``: float32 ``[1, n]`` -> int
    ``[1, rows, token_columns(n)]``."""

    def __init__(self, encode_fn: Callable, spec: StreamSpec, *, lookahead_seconds: float = DEFAULT_LOOKAHEAD_SECONDS,
                 context_seconds: float = DEFAULT_CONTEXT_SECONDS):
        super().__init__(spec)
        self._encode_fn = encode_fn
        # column j is emitted once samples up to S * j + ``right`` have arrived; its window starts at or
        # before S * j + ``left``
        self.right = spec.column - 1 + samples(lookahead_seconds, "lookahead_seconds", spec)
        self.left = -samples(context_seconds, "context_seconds", spec)
        if spec.encoder_dependency is not None:
            self.left = min(self.left, spec.encoder_dependency[0])
            self.right = max(self.right, spec.encoder_dependency[1])
        self._check_window(self.right + 1 - self.left)
        self._audio = np.zeros(0, dtype=np.float32)  # samples [_first, _received)
        self._first = self._received = 0
        self._next = 0  # next column to emit

    @property
    def exact(self) -> bool:
        """Whether the tokens equal offline encoding's (time-local models)."""
        return self.spec.time_local

    @property
    def latency_seconds(self) -> float:
        """Algorithmic latency: audio that must arrive, counted from a column's first sample, before the
        column can be emitted (one column plus the lookahead)."""
        return (self.right + 1) / self.spec.sample_rate

    @property
    def state_nbytes(self) -> int:
        """Bytes of buffered audio."""
        return self._audio.nbytes

    def push(self, audio) -> np.ndarray:
        """Add float audio ``[n]`` at ``spec.sample_rate`` (any ``n``); returns the int64 tokens
        ``[rows, k]`` that became final (``k`` may be 0)."""
        with self._lock:
            self._check_open()
            samples = check_audio(audio)
            self._audio = np.concatenate([self._audio, samples])
            self._received += len(samples)
            return self._run(final=False)

    def flush(self) -> np.ndarray:
        """Zero-pad the end as ``encode(pad=True)`` does, emit the remaining columns, close the stream."""
        with self._lock:
            self._check_open()
            if self._received:
                target = padded_length(self._received, self.spec.hop_length, self.spec.compression)
                self._audio = np.concatenate([self._audio, np.zeros(target - self._received, np.float32)])
                self._received = target
            tokens = self._run(final=True)
            self._closed = True
            self._audio = np.zeros(0, dtype=np.float32)
            return tokens

    def _run(self, final: bool) -> np.ndarray:
        column, spec, parts = self.spec.column, self.spec, []
        total = token_columns(self._received, spec.hop_length, spec.compression) if self._received else 0
        final_columns = max(0, (self._received - self.right - 1) // column + 1)  # columns with all their audio
        window_columns = spec.max_columns - (self.right + 1 + column - 1) // column + 1
        while True:
            start = max(0, (column * self._next + self.left) // column)
            last = final and total - start <= spec.max_columns
            stop = total if last else min(final_columns, start + window_columns)
            if stop <= self._next:
                break
            hi = self._received if last else min(self._received, column * (stop - 1) + self.right + 1)
            tokens = np.asarray(self._encode_fn(self._audio[None, column * start - self._first:hi - self._first]))
            if tokens.ndim != 3 or tokens.shape[:2] != (1, spec.token_rows) or tokens.shape[2] < stop - start:
                raise ValueError(f"encode_fn returned shape {list(tokens.shape)} for {hi - column * start} samples; "
                                 f"expected [1, {spec.token_rows}, >= {stop - start}]")
            parts.append(tokens[0, :, self._next - start:stop - start].astype(np.int64))
            self._next = stop
            first = min(column * max(0, (column * self._next + self.left) // column), self._received)
            self._audio = self._audio[first - self._first:]
            self._first = first
            if last:
                break
        return np.concatenate(parts, axis=1) if parts else np.zeros((spec.token_rows, 0), dtype=np.int64)
