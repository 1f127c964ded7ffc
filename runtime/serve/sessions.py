"""One served stream: a library stream with the settings of its options message, and what it emitted.

A ``StreamDecoder``/``StreamEncoder`` lays its windows on a grid of the input itself (``windowing.
WindowGrid``), so its output depends only on the input and its settings (lookahead, context, step),
never on how the client frames its messages: the server pushes each message as it arrives, and a
window runs as soon as its last column (or sample) is in. Streams of equal settings reach windows of
equal shape in their steady state, which the batcher runs in one call.
"""
from __future__ import annotations

import numpy as np

from meltok_runtime.pipeline import CodecPipeline


class DecodeSession:
    """Token columns in (any framing), float32 audio out."""

    graph = "decoder"

    def __init__(self, codec: CodecPipeline, options: dict):
        self.stream = codec.stream_decoder(lookahead_seconds=options["lookahead_seconds"],
                                           context_seconds=options["context_seconds"],
                                           step_seconds=options["step_seconds"])
        self.samples = 0  # samples emitted

    def push(self, columns: np.ndarray) -> np.ndarray:
        """Columns int ``[rows, k]`` (checked before any state changes) -> audio ``[n]`` now final."""
        return self._emit(self.stream.push(columns))

    def flush(self) -> np.ndarray:
        """The rest of the audio; the stream is closed."""
        return self._emit(self.stream.flush())

    def _emit(self, audio: np.ndarray) -> np.ndarray:
        self.samples += len(audio)
        return audio


class EncodeSession:
    """Mono float32 audio at the model's rate in (any framing), token columns out."""

    graph = "encoder"

    def __init__(self, codec: CodecPipeline, options: dict):
        self.stream = codec.stream_encoder(lookahead_seconds=options["lookahead_seconds"],
                                           context_seconds=options["context_seconds"],
                                           step_seconds=options["step_seconds"])
        self.samples = self.columns = 0  # samples received, columns emitted

    def push(self, audio: np.ndarray) -> np.ndarray:
        """float32 ``[n]`` -> int64 tokens ``[rows, k]`` now final."""
        tokens = self._emit(self.stream.push(audio))
        self.samples += len(audio)
        return tokens

    def flush(self) -> np.ndarray:
        """The remaining columns (the end zero-padded as ``encode`` pads it); the stream is closed."""
        return self._emit(self.stream.flush())

    def _emit(self, tokens: np.ndarray) -> np.ndarray:
        self.columns += tokens.shape[1]
        return tokens
