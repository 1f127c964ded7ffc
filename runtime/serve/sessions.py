"""One served stream: a library stream fed in fixed-size pushes, so streams share window shapes.

A ``StreamDecoder`` decodes each push in one window of context + new columns; two streams whose
pushes have the same size reach the same window shape, which the batcher can run in one call. So
the server regroups whatever the client sends into pushes of exactly ``PUSH_COLUMNS`` columns
(decoding) or ``PUSH_COLUMNS`` columns of samples (encoding), holding the remainder until it fills a
push or the stream is flushed. The result is the library stream's, pushed that way: it does not
depend on how the client frames its messages (``meltok-rt decode --stream`` pushes 4 columns too).
The regrouping adds at most ``PUSH_COLUMNS - 1`` columns (139 ms) of latency.
"""
from __future__ import annotations

import numpy as np

from meltok_runtime.pipeline import CodecPipeline
from meltok_runtime.stream.spec import check_columns

PUSH_COLUMNS = 4


class DecodeSession:
    """Token columns in (any framing), float32 audio out; see the module docstring."""

    def __init__(self, codec: CodecPipeline, lookahead_seconds: float):
        self.stream = codec.stream_decoder(lookahead_seconds=lookahead_seconds)
        self._held = np.zeros((codec.token_rows, 0), dtype=np.int64)
        self.samples = 0  # samples emitted

    def push(self, columns: np.ndarray) -> np.ndarray:
        """Columns int ``[rows, k]`` (checked before any state changes) -> audio ``[n]`` now final."""
        held = np.concatenate([self._held, check_columns(columns, self.stream.spec)], axis=1)
        full = held.shape[1] - held.shape[1] % PUSH_COLUMNS
        self._held = held[:, full:]
        return self._emit([self.stream.push(held[:, i:i + PUSH_COLUMNS]) for i in range(0, full, PUSH_COLUMNS)])

    def flush(self) -> np.ndarray:
        """The rest of the audio; the stream is closed."""
        parts = [self.stream.push(self._held)] if self._held.shape[1] else []
        return self._emit(parts + [self.stream.flush()])

    def _emit(self, parts: list) -> np.ndarray:
        audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        self.samples += len(audio)
        return audio


class EncodeSession:
    """Mono float32 audio at the model's rate in (any framing), token columns out."""

    def __init__(self, codec: CodecPipeline, lookahead_seconds: float):
        self.stream = codec.stream_encoder(lookahead_seconds=lookahead_seconds)
        self.block = PUSH_COLUMNS * codec.column_samples
        self._held = np.zeros(0, dtype=np.float32)
        self.samples = self.columns = 0  # samples received, columns emitted

    def push(self, audio: np.ndarray) -> np.ndarray:
        """float32 ``[n]`` -> int64 tokens ``[rows, k]`` now final."""
        held = np.concatenate([self._held, audio])
        self.samples += len(audio)
        full = len(held) - len(held) % self.block
        self._held = held[full:]
        return self._emit([self.stream.push(held[i:i + self.block]) for i in range(0, full, self.block)])

    def flush(self) -> np.ndarray:
        """The remaining columns (the end zero-padded as ``encode`` pads it); the stream is closed."""
        parts = [self.stream.push(self._held)] if len(self._held) else []
        return self._emit(parts + [self.stream.flush()])

    def _emit(self, parts: list) -> np.ndarray:
        rows = self.stream.spec.token_rows
        tokens = np.concatenate(parts, axis=1) if parts else np.zeros((rows, 0), np.int64)
        self.columns += tokens.shape[1]
        return tokens
