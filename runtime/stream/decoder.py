"""``StreamDecoder``: tokens in, audio out, cross-faded joins (see ``meltok_runtime.stream``)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from meltok_runtime.stream.spec import (DEFAULT_FADE_SECONDS, DEFAULT_LOOKAHEAD_SECONDS, DEFAULT_STEP_SECONDS, Stream,
                                        StreamSpec, check_columns, columns, samples)
from meltok_runtime.windowing import DEFAULT_CONTEXT_SECONDS, WindowedDecoder


class StreamDecoder(Stream):
    """Tokens in, audio out; see the module docstring. ``decode_fn``: int64 ``[1, rows, w]`` ->
    float ``[1, (c * w - 1) * hop]``, or a ``windowing.StatefulDecode`` (state carried window to window)."""

    def __init__(self, decode_fn: Callable, spec: StreamSpec, *, lookahead_seconds: float = DEFAULT_LOOKAHEAD_SECONDS,
                 context_seconds: float = DEFAULT_CONTEXT_SECONDS, fade_seconds: float = DEFAULT_FADE_SECONDS,
                 step_seconds: float = DEFAULT_STEP_SECONDS):
        super().__init__(spec)
        column = spec.column
        left = columns(context_seconds, "context_seconds", spec)
        right = max(1, columns(lookahead_seconds, "lookahead_seconds", spec))  # a window's last hop needs the next
        step = max(1, columns(step_seconds, "step_seconds", spec))
        half = samples(fade_seconds, "fade_seconds", spec) // 2
        if spec.decoder_influence is not None:  # exact: no missing column reaches an emitted sample
            low, high = spec.decoder_influence
            left = max(left, -(-(high + half + 1) // column) - 1)
            right = max(right, -(-(half - low) // column))
        self.grid = self._grid(left, step, right)
        self.fade = 2 * min(half, left * column, right * column - spec.hop_length)
        self._windows = WindowedDecoder(decode_fn, self.grid, spec.hop_length, spec.compression, self.fade // 2)

    @property
    def exact(self) -> bool:
        """Whether the output equals offline decoding (time-local models)."""
        return self.spec.time_local

    @property
    def latency_seconds(self) -> float:
        """Algorithmic latency, worst case: audio (as token columns, counted from a sample's position)
        that must arrive before the sample is emitted: a window's kept columns, its lookahead, half the fade."""
        return (self.spec.column * (self.grid.step + self.grid.right) + self.fade // 2) / self.spec.sample_rate

    @property
    def state_nbytes(self) -> int:
        """Bytes of buffered state (token columns and the last window's pending output)."""
        return 0 if self._windows is None else self._windows.nbytes

    def push(self, tokens) -> np.ndarray:
        """Add token columns (int ``[rows, k]`` or ``[1, rows, k]``, ``k >= 0``); returns the float32
        audio ``[n]`` that became final (``n`` may be 0)."""
        with self._lock:
            self._check_open()
            return self._audio(self._windows.push(check_columns(tokens, self.spec)[None]))

    def flush(self) -> np.ndarray:
        """Decode the rest and close the stream: the outputs joined have ``(c * T' - 1) * hop`` samples."""
        with self._lock:
            self._check_open()
            audio = self._audio(self._windows.push(np.zeros((1, self.spec.token_rows, 0), np.int64), final=True))
            self._closed = True
            self._windows = None
            return audio

    @staticmethod
    def _audio(audio: np.ndarray) -> np.ndarray:
        return audio[0].astype(np.float32, copy=False)
