"""``StreamDecoder``: tokens in, audio out, cross-faded joins (see ``meltok_runtime.stream``)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from meltok_runtime.lengths import decoded_length
from meltok_runtime.stream.spec import (DEFAULT_CONTEXT_SECONDS, DEFAULT_FADE_SECONDS, DEFAULT_LOOKAHEAD_SECONDS, Stream,
                                        StreamSpec, check_columns, samples)
from meltok_runtime.windowing import raised_cosine


class StreamDecoder(Stream):
    """Tokens in, audio out; see the module docstring. ``decode_fn``: int64 ``[1, rows, w]`` ->
    float ``[1, (c * w - 1) * hop]``."""

    def __init__(self, decode_fn: Callable, spec: StreamSpec, *, lookahead_seconds: float = DEFAULT_LOOKAHEAD_SECONDS,
                 context_seconds: float = DEFAULT_CONTEXT_SECONDS, fade_seconds: float = DEFAULT_FADE_SECONDS):
        super().__init__(spec)
        self._decode_fn = decode_fn
        self.ahead = samples(lookahead_seconds, "lookahead_seconds", spec)
        self.behind = samples(context_seconds, "context_seconds", spec)
        self.fade = samples(fade_seconds, "fade_seconds", spec)
        if spec.decoder_influence is not None:  # exact: no later column reaches an emitted sample, no earlier one
            self.ahead = max(self.ahead, -spec.decoder_influence[0])  # reaches the window's first sample
            self.behind = max(self.behind, spec.decoder_influence[1])
        self._check_window(self.behind + self.ahead + self.fade)
        self._tokens = np.zeros((spec.token_rows, 0), dtype=np.int64)  # columns [_first, _received)
        self._first = self._received = 0
        self._done = 0  # samples emitted
        self._pending = np.zeros(0, dtype=np.float32)  # last call's output over [_done, _done + len)

    @property
    def exact(self) -> bool:
        """Whether the output equals offline decoding (time-local models)."""
        return self.spec.time_local

    @property
    def latency_seconds(self) -> float:
        """Algorithmic latency: audio (as token columns, counted from a sample's position) that must
        arrive before that sample can be emitted, worst case: lookahead + fade + one column."""
        return (self.ahead + self.fade + self.spec.column) / self.spec.sample_rate

    @property
    def state_nbytes(self) -> int:
        """Bytes of buffered state (token columns and the pending cross-fade)."""
        return self._tokens.nbytes + self._pending.nbytes

    def push(self, tokens) -> np.ndarray:
        """Add token columns (int ``[rows, k]`` or ``[1, rows, k]``, ``k >= 0``); returns the float32
        audio ``[n]`` that became final (``n`` may be 0)."""
        with self._lock:
            self._check_open()
            columns = check_columns(tokens, self.spec)
            if columns.shape[1]:
                self._tokens = np.concatenate([self._tokens, columns], axis=1)
                self._received += columns.shape[1]
            return self._run(final=False)

    def flush(self) -> np.ndarray:
        """Decode the rest and close the stream: the outputs joined have ``(c * T' - 1) * hop`` samples."""
        with self._lock:
            self._check_open()
            audio = self._run(final=True)
            self._closed = True
            self._tokens = np.zeros((self.spec.token_rows, 0), dtype=np.int64)
            return audio

    def _start(self) -> int:
        """First column of the next window: ``behind`` samples of context before ``_done`` (and at least
        the column holding ``_done``)."""
        column = self.spec.column
        return max(0, min(-(-(self._done - self.behind) // column), self._done // column))

    def _run(self, final: bool) -> np.ndarray:
        column, parts = self.spec.column, []
        total = decoded_length(self._received, self.spec.hop_length, self.spec.compression) if self._received else 0
        while True:
            start = self._start()
            stop = min(self._received, start + self.spec.max_columns)
            last = final and stop == self._received
            ready = total if last else min(total, column * stop - self.ahead)
            keep = 0 if last else self.fade
            if ready - keep <= self._done:
                break
            audio = np.asarray(self._decode_fn(self._tokens[None, :, start - self._first:stop - self._first]))
            expected = decoded_length(stop - start, self.spec.hop_length, self.spec.compression)
            if audio.shape != (1, expected):
                raise ValueError(f"decode_fn returned shape {list(audio.shape)} for {stop - start} columns; "
                                 f"expected [1, {expected}]")
            segment = audio[0, self._done - column * start:ready - column * start].astype(np.float32)
            overlap = len(self._pending)
            if overlap:  # ``old + w * (new - old)``: exactly ``old`` wherever both calls agree
                segment[:overlap] = self._pending + raised_cosine(overlap) * (segment[:overlap] - self._pending)
            self._pending = segment[len(segment) - keep:].copy()
            parts.append(segment[:len(segment) - keep])
            self._done = ready - keep
            first = min(self._start(), self._received)
            self._tokens = self._tokens[:, first - self._first:]
            self._first = first
            if last:
                break
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
