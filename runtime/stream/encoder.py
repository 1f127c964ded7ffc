"""``StreamEncoder``: audio in, tokens out (see ``meltok_runtime.stream``)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from meltok_runtime.lengths import padded_length
from meltok_runtime.stream.spec import (DEFAULT_LOOKAHEAD_SECONDS, DEFAULT_STEP_SECONDS, Stream, StreamSpec,
                                        check_audio, columns)
from meltok_runtime.windowing import DEFAULT_CONTEXT_SECONDS, WindowedEncoder


class StreamEncoder(Stream):
    """Audio in, tokens out; see the module docstring. ``encode_fn``: float32 ``[1, n]`` -> int
    ``[1, rows, token_columns(n)]``."""

    def __init__(self, encode_fn: Callable, spec: StreamSpec, *, lookahead_seconds: float = DEFAULT_LOOKAHEAD_SECONDS,
                 context_seconds: float = DEFAULT_CONTEXT_SECONDS, step_seconds: float = DEFAULT_STEP_SECONDS):
        super().__init__(spec)
        left = columns(context_seconds, "context_seconds", spec)
        right = columns(lookahead_seconds, "lookahead_seconds", spec)
        step = max(1, columns(step_seconds, "step_seconds", spec))
        if spec.encoder_dependency is not None:  # exact: every kept column sees all the audio it depends on
            low, high = spec.encoder_dependency
            left = max(left, -(-max(0, -low) // spec.column))
            right = max(right, (high + spec.hop_length) // spec.column)
        self.grid = self._grid(left, step, right)
        self._windows = WindowedEncoder(encode_fn, self.grid, spec.hop_length, spec.compression)

    @property
    def exact(self) -> bool:
        """Whether the tokens equal offline encoding's (time-local models)."""
        return self.spec.time_local

    @property
    def latency_seconds(self) -> float:
        """Algorithmic latency, worst case: audio that must arrive, counted from a column's first sample,
        before the column is emitted (its window's kept columns, its lookahead, one sample more)."""
        grid, spec = self.grid, self.spec
        return (spec.column * (grid.step + grid.right) - spec.hop_length + 1) / spec.sample_rate

    @property
    def state_nbytes(self) -> int:
        """Bytes of buffered audio."""
        return 0 if self._windows is None else self._windows.nbytes

    def push(self, audio) -> np.ndarray:
        """Add float audio ``[n]`` at ``spec.sample_rate`` (any ``n``); returns the int64 tokens
        ``[rows, k]`` that became final (``k`` may be 0)."""
        with self._lock:
            self._check_open()
            return self._tokens(self._windows.push(check_audio(audio)[None]))

    def flush(self) -> np.ndarray:
        """Zero-pad the end as ``encode(pad=True)`` does, emit the remaining columns, close the stream."""
        with self._lock:
            self._check_open()
            received = self._windows.received
            pad = padded_length(received, self.spec.hop_length, self.spec.compression) - received if received else 0
            tokens = self._tokens(self._windows.push(np.zeros((1, pad), np.float32), final=True))
            self._closed = True
            self._windows = None
            return tokens

    def _tokens(self, tokens: np.ndarray) -> np.ndarray:
        if not tokens.shape[-1]:
            return np.zeros((self.spec.token_rows, 0), dtype=np.int64)
        if tokens.shape[:2] != (1, self.spec.token_rows):
            raise ValueError(f"encode_fn returned tokens of shape {list(tokens.shape)}; expected "
                             f"[1, {self.spec.token_rows}, k]")
        return tokens[0].astype(np.int64)
