"""Streaming: decode tokens as they arrive, encode audio as it is captured, with bounded state.

>>> dec = codec.stream_decoder(lookahead_seconds=0.2)   # codec: meltok_runtime.Codec or meltok.MelTok
>>> for tokens in token_source:                        # int [rows, k] or [1, rows, k], any k >= 0
...     play(dec.push(tokens))                         # float32 [n], n may be 0
>>> play(dec.flush())                                  # the rest; the stream is closed

>>> enc = codec.stream_encoder(lookahead_seconds=0.2)
>>> for block in microphone:                           # float32 [n] at codec.sample_rate, any n
...     send(enc.push(block))                          # int64 [rows, k], k may be 0
>>> send(enc.flush())

Both are built on a codec's two graph calls (audio ``[1, n]`` -> tokens ``[1, rows, T']``; tokens
``[1, rows, w]`` -> audio ``[1, (c * w - 1) * hop]``) and its ``StreamSpec``, so the torch model and
the runtime share this code. With ``S = hop * compression`` samples per token column:

- The encoder emits column ``j`` once ``S * (j + 1) + lookahead`` samples have arrived, computing it
  in a window that starts ``context`` before it (on the column grid, so strides line up); at
  ``flush`` the audio is zero-padded as ``encode(pad=True)`` pads it.
- The decoder emits sample ``n`` once the columns received cover ``n + lookahead + fade``: each call
  decodes only the new part with ``context`` of columns on its left and the lookahead on its right,
  and cross-fades over ``fade`` samples (complementary raised-cosine weights) into the previous call's
  output, so joins have no step. The prefix is never decoded again; the concatenated output has the
  length offline decoding gives.

Time-local models (``StreamSpec.encoder_dependency``/``decoder_influence`` set, from
``meltok.receptive_field`` or the bundle manifest) get at least the context and lookahead their
receptive field needs, so their streams equal offline results: tokens identical, audio within float
round-off. The reference architecture has no finite receptive field (GroupNorm, global attention): its
streams approximate offline results (README, "Streaming", has the figures).

State is a few windows whatever the stream's length (``state_nbytes``); a push longer than
``max_columns`` is processed in several calls. A stream is not shared between threads (each push
holds its lock); one codec serves many streams from many threads. Bad input raises a typed error
before any state changes, so the stream stays usable.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import AudioInputError, SettingsError, StreamClosedError, TokenInputError
from .framing import check_tokens, decoded_length, padded_length, token_columns
from .windowing import raised_cosine

DEFAULT_LOOKAHEAD_SECONDS = 0.2
DEFAULT_CONTEXT_SECONDS = 0.5
DEFAULT_FADE_SECONDS = 0.025


@dataclass(frozen=True)
class StreamSpec:
    """What streams need to know about a codec. Spans in samples around a column's first sample
    ``S * j``: ``encoder_dependency`` (audio a column depends on) and ``decoder_influence`` (decoded
    samples a column affects) are set for time-local models only."""

    sample_rate: int
    hop_length: int
    compression: int
    token_rows: int
    codebook_size: int
    max_columns: int  # the longest window one graph call may take
    encoder_dependency: tuple | None = None
    decoder_influence: tuple | None = None

    @classmethod
    def from_contract(cls, contract: dict, **numbers) -> "StreamSpec":
        """From a ``meltok.receptive_field.stream_contract`` dict (a manifest's ``streaming``)."""
        if not contract.get("time_local"):
            return cls(**numbers)
        return cls(**numbers, encoder_dependency=tuple(contract["encoder_dependency"]),
                   decoder_influence=tuple(contract["decoder_influence"]))

    @property
    def column(self) -> int:
        """Samples per token column."""
        return self.hop_length * self.compression

    @property
    def time_local(self) -> bool:
        return self.encoder_dependency is not None


def _samples(seconds: float, name: str, spec: StreamSpec) -> int:
    if not (isinstance(seconds, (int, float)) and seconds >= 0 and math.isfinite(seconds)):
        raise SettingsError(f"{name} must be a non-negative number of seconds, got {seconds!r}")
    return int(round(seconds * spec.sample_rate))


class _Stream:
    """Lock, closed flag and the window bound shared by both streams."""

    def __init__(self, spec: StreamSpec):
        self.spec = spec
        self._lock = threading.Lock()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StreamClosedError(f"this {type(self).__name__} was flushed and is closed; start a new stream")

    def _check_window(self, span: int) -> None:
        """Context + lookahead + fade (``span`` samples) must leave room for new columns in one call."""
        need = -(-span // self.spec.column) + 2
        if need > self.spec.max_columns:
            raise SettingsError(f"context, lookahead and fade need windows of {need} columns but this codec takes at "
                             f"most {self.spec.max_columns} per call; choose shorter ones")


class StreamDecoder(_Stream):
    """Tokens in, audio out; see the module docstring. ``decode_fn``: int64 ``[1, rows, w]`` ->
    float ``[1, (c * w - 1) * hop]``."""

    def __init__(self, decode_fn: Callable, spec: StreamSpec, *, lookahead_seconds: float = DEFAULT_LOOKAHEAD_SECONDS,
                 context_seconds: float = DEFAULT_CONTEXT_SECONDS, fade_seconds: float = DEFAULT_FADE_SECONDS):
        super().__init__(spec)
        self._decode_fn = decode_fn
        self.ahead = _samples(lookahead_seconds, "lookahead_seconds", spec)
        self.behind = _samples(context_seconds, "context_seconds", spec)
        self.fade = _samples(fade_seconds, "fade_seconds", spec)
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
            columns = _check_columns(tokens, self.spec)
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


class StreamEncoder(_Stream):
    """Audio in, tokens out; see the module docstring. ``encode_fn``: float32 ``[1, n]`` -> int
    ``[1, rows, token_columns(n)]``."""

    def __init__(self, encode_fn: Callable, spec: StreamSpec, *, lookahead_seconds: float = DEFAULT_LOOKAHEAD_SECONDS,
                 context_seconds: float = DEFAULT_CONTEXT_SECONDS):
        super().__init__(spec)
        self._encode_fn = encode_fn
        # column j is emitted once samples up to S * j + ``right`` have arrived; its window starts at or
        # before S * j + ``left``
        self.right = spec.column - 1 + _samples(lookahead_seconds, "lookahead_seconds", spec)
        self.left = -_samples(context_seconds, "context_seconds", spec)
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
            samples = _check_audio(audio)
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


def _check_columns(tokens, spec: StreamSpec) -> np.ndarray:
    """Token columns for one stream: int64 ``[rows, k]`` from ``[rows, k]`` or ``[1, rows, k]``."""
    array = np.asarray(tokens)
    if array.ndim == 3:
        if array.shape[0] != 1:
            raise TokenInputError(f"a stream takes one item: tokens [{spec.token_rows}, k] or "
                                  f"[1, {spec.token_rows}, k], got shape {list(array.shape)}; use one stream per item")
        array = array[0]
    if array.ndim == 2 and array.shape == (spec.token_rows, 0) and array.dtype.kind in "iu":
        return np.zeros((spec.token_rows, 0), dtype=np.int64)
    return check_tokens(array, spec.token_rows, spec.codebook_size)[0]


def _check_audio(audio) -> np.ndarray:
    """Float audio ``[n]`` (or ``[1, n]``) as float32 ``[n]``, finite."""
    array = np.asarray(audio)
    if array.dtype.kind != "f":
        raise AudioInputError(f"stream audio must be float samples in [-1, 1], got dtype {array.dtype}; "
                              "convert int16 PCM with samples / 32768")
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1:
        raise AudioInputError(f"stream audio must be mono [n] at the codec's sample rate, got shape "
                              f"{list(array.shape)}; mix channels down first")
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise AudioInputError(f"stream audio has a NaN or infinite sample at index {bad} of this push; "
                              "nothing of it was used: push finite samples")
    return array.astype(np.float32, copy=False)
