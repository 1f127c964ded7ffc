"""The codec pipeline: everything between a user's arrays and a model's two graph calls (numpy only).

``meltok.MelTok`` (PyTorch) and ``meltok_runtime.Codec`` (ONNX Runtime, TensorRT) are both a
``CodecPipeline``. Each supplies the contract as properties (``sample_rate``, ``hop_length``,
``compression``, ``token_rows``, ``codebook_size``, ``model_id``) and two graph calls:

- ``_encode_graph(audio)``: float32 ``[B, n]`` at ``sample_rate`` -> int tokens ``[B, rows, T']``
  with ``T' = framing.token_columns(n)``;
- ``_decode_graph(tokens)``: int64 ``[B, rows, w]`` -> float32 audio ``[B, (compression * w - 1) * hop]``,
  or, where ``mel_inverter`` is not None, the log-mel ``[B, n_mels, compression * w]`` that the pipeline
  finishes with that ``MelInverter``, its running phase carried from window to window (``mel_decode``).

This class does the rest, once for both: the input checks (audio shape, dtype, NaN, sample rate;
tokens dtype, rows, range; ``num_samples``), resampling and channel mixing, padding, the window
layout (``windowing``), batching by ``max_batch``, trimming, and the window settings checked and
clamped to the model's limits. ``AudioCodec`` is the contract for code that only needs "a codec"
(evaluation, benchmarks, the file pipeline).
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from meltok_runtime.errors import SettingsError, TokenInputError
from meltok_runtime.lengths import check_tokens, decoded_length, padded_length, token_columns
from meltok_runtime.mel_decode import MelDecode
from meltok_runtime.stream import (DEFAULT_FADE_SECONDS, DEFAULT_LOOKAHEAD_SECONDS, DEFAULT_STEP_SECONDS, StreamDecoder,
                                   StreamEncoder, StreamSpec)
from meltok_runtime.windowing import (DEFAULT_CONTEXT_SECONDS, DEFAULT_WINDOW_SECONDS, Progress, count_windows,
                                      decode_windowed, encode_windowed, seconds_to_columns)

log = logging.getLogger("meltok_runtime")


@runtime_checkable
class AudioCodec(Protocol):
    """What every codec offers: its contract as properties and an encode/decode pair."""

    @property
    def sample_rate(self) -> int: ...  # Hz of the model's audio

    @property
    def hop_length(self) -> int: ...  # samples per mel frame

    @property
    def frame_rate(self) -> float: ...  # mel frames per second

    @property
    def token_rows(self) -> int: ...  # token rows per column

    @property
    def codebook_size(self) -> int: ...

    @property
    def token_rate(self) -> float: ...  # tokens per second, all rows

    @property
    def model_id(self) -> str: ...  # identifies weights and architecture; recorded in token files

    def encode(self, audio, sample_rate: int = 44100, *, pad: bool = True, channels_last: bool = False,
               progress: Progress | None = None):
        """Audio ``[N]``, ``[B, N]`` or ``[B, C, N]`` -> int64 tokens ``[B, rows, T']``."""

    def decode(self, tokens, num_samples: int | None = None, *, sample_rate: int | None = None,
               progress: Progress | None = None):
        """Tokens ``[rows, T']`` or ``[B, rows, T']`` -> float32 audio ``[B, N]``."""


class CodecPipeline:
    """The shared user API around a subclass's graph calls (see the module docstring)."""

    max_batch: int | None = None  # largest batch per graph call; None: any
    fade_columns: float | None = None  # cross-fade of windowed decoding, in columns; None: the context

    # ----------------------------------------------------------------- contract
    @property
    def frame_rate(self) -> float:
        """Mel frames per second."""
        return self.sample_rate / self.hop_length

    @property
    def column_samples(self) -> int:
        """Samples per token column (2048 for the paper layout)."""
        return self.hop_length * self.compression

    def decoded_length(self, num_columns: int) -> int:
        """Samples that ``decode`` returns for ``num_columns`` token columns (no ``num_samples``)."""
        return decoded_length(num_columns, self.hop_length, self.compression)

    @property
    def accepts_tokens_of(self) -> tuple[str, ...]:
        """The model ids whose token files this codec decodes: its own (a bundle adds models with its tokenizer)."""
        return (self.model_id,)

    # ------------------------------------------------------------------ windows
    def window_limit(self) -> int | None:
        """Most token columns one graph call may take; None: no limit."""
        return None

    @property
    def windows(self) -> tuple[int, int]:
        """``(window_columns, context_columns)`` for calls that name no window."""
        return self.window_layout(DEFAULT_WINDOW_SECONDS, DEFAULT_CONTEXT_SECONDS)

    def window_layout(self, window_seconds: float, context_seconds: float) -> tuple[int, int]:
        """Window settings in seconds -> ``(window_columns, context_columns)``, checked up front.

        The window is clamped to ``window_limit``; it must exceed twice the context, and twice one
        column whatever the context (decoding always needs a column of context on each side).
        """
        if not _is_number(window_seconds) or not _is_number(context_seconds) or not (
                window_seconds > 0 and context_seconds >= 0):
            raise SettingsError(f"need window_seconds > 0 and context_seconds >= 0, got {window_seconds!r}, "
                                f"{context_seconds!r}")
        columns = functools.partial(seconds_to_columns, sample_rate=self.sample_rate, hop=self.hop_length,
                                    compression=self.compression)
        window, context = max(1, columns(window_seconds)), columns(context_seconds)
        limit = self.window_limit()
        if limit and window > limit:
            log.info("a window of %d columns exceeds the model's limit: using %d", window, limit)
            window = limit
        if window <= 2 * context:
            raise SettingsError(
                f"a window of {window} columns ({window_seconds} s) must exceed twice the context of {context} "
                f"columns ({context_seconds} s); choose a longer window or a shorter context")
        if window <= 2:
            raise SettingsError(
                f"a window of {window} columns ({window_seconds} s) is too short: decoding keeps one column of "
                f"context on each side, so a window needs at least 3 columns "
                f"({3 * self.column_samples / self.sample_rate:.2f} s)")
        return window, context

    def encode_windows(self, num_samples: int, batch: int = 1, *, pad: bool = True) -> int:
        """Graph calls ``encode`` makes for ``batch`` items of ``num_samples`` samples (at the model rate)."""
        length = padded_length(num_samples, self.hop_length, self.compression, pad=pad)
        columns = token_columns(length, self.hop_length, self.compression)
        return self._chunks(batch) * count_windows(columns, *self.windows)

    def decode_windows(self, num_columns: int, batch: int = 1) -> int:
        """Graph calls ``decode`` makes for ``batch`` items of ``num_columns`` token columns."""
        return self._chunks(batch) * count_windows(num_columns, *self.windows)

    # ------------------------------------------------------------------ encoding
    def prepare(self, audio, sample_rate: int = 44100, *, channels_last: bool = False) -> np.ndarray:
        """Check and convert audio (see ``audio.prepare_audio``) -> float32 ``[B, N]`` at ``sample_rate``."""
        from meltok_runtime.io.audio import prepare_audio  # soundfile and soxr only when audio is encoded

        batch, _ = prepare_audio(audio, sample_rate, self.sample_rate, channels_last=channels_last,
                                 hop_length=self.hop_length)
        return batch

    def encode_prepared(self, batch: np.ndarray, *, pad: bool = True, windows: tuple[int, int] | None = None,
                        progress: Progress | None = None) -> np.ndarray:
        """``prepare``'s float32 ``[B, N]`` -> int64 tokens ``[B, rows, T']``, padded and windowed."""
        target = padded_length(batch.shape[-1], self.hop_length, self.compression, pad=pad)
        batch = np.pad(batch, ((0, 0), (0, target - batch.shape[-1])))
        tokens = self._batched(batch, self._encode_graph, encode_windowed, windows or self.windows, progress)
        return tokens.astype(np.int64, copy=False)

    def _encode_numpy(self, audio, sample_rate, *, pad, channels_last, windows, progress) -> np.ndarray:
        return self.encode_prepared(self.prepare(audio, sample_rate, channels_last=channels_last), pad=pad,
                                    windows=windows, progress=progress)

    # ------------------------------------------------------------------ decoding
    def _decode_numpy(self, tokens, num_samples, *, sample_rate, windows, progress) -> np.ndarray:
        array = check_tokens(tokens, self.token_rows, self.codebook_size)
        rate = self.sample_rate if sample_rate is None else _check_output_rate(sample_rate)
        self._check_num_samples(num_samples, array.shape[-1], rate)
        windowed = functools.partial(decode_windowed, fade_columns=self.fade_columns)
        audio = self._batched(array, self._decode_step(), windowed, windows or self.windows, progress)
        audio = audio.astype(np.float32, copy=False)
        if rate != self.sample_rate:
            from meltok_runtime.io.audio import resample

            audio = resample(audio, self.sample_rate, rate)
        if num_samples is not None:
            audio = audio[:, :num_samples]
            if audio.shape[-1] < num_samples:
                audio = np.pad(audio, ((0, 0), (0, num_samples - audio.shape[-1])))
        return np.ascontiguousarray(audio)

    def _check_num_samples(self, num_samples, columns: int, rate: int) -> None:
        """``num_samples`` (at ``rate``) may exceed what ``columns`` decode to by at most one column."""
        if num_samples is None:
            return
        if not isinstance(num_samples, (int, np.integer)) or isinstance(num_samples, bool) or num_samples < 0:
            raise TokenInputError(f"num_samples must be a non-negative integer or None, got {num_samples!r}")
        covered = self.decoded_length(columns) + self.column_samples
        if math.ceil(num_samples * self.sample_rate / rate) > covered:
            raise TokenInputError(
                f"num_samples={num_samples} at {rate} Hz is more than {columns} token columns cover "
                f"({covered * rate // self.sample_rate} samples at most); pass the length the audio had when "
                "it was encoded, or None")

    @property
    def mel_inverter(self):
        """The ``MelInverter`` that turns ``_decode_graph``'s log-mel into audio; None where it gives audio."""
        return None

    def _decode_step(self):
        """What the windows call: ``_decode_graph``, or (a log-mel decoder) a ``MelDecode`` that carries the
        inverter's running phase from window to window."""
        inverter = self.mel_inverter
        return self._decode_graph if inverter is None else MelDecode(self._decode_graph, inverter, self.compression)

    # ----------------------------------------------------------------- streaming
    @property
    def stream_contract(self) -> dict:
        """Time-local models: their receptive field (``meltok.receptive_field.stream_contract``); else ``{}``."""
        return {}

    def stream_decoder(self, lookahead_seconds: float = DEFAULT_LOOKAHEAD_SECONDS,
                       context_seconds: float = DEFAULT_CONTEXT_SECONDS, fade_seconds: float = DEFAULT_FADE_SECONDS,
                       step_seconds: float = DEFAULT_STEP_SECONDS) -> StreamDecoder:
        """A stream that decodes tokens as they arrive (``stream``); exact for time-local models."""
        return StreamDecoder(self._decode_step(), self._stream_spec(), lookahead_seconds=lookahead_seconds,
                             context_seconds=context_seconds, fade_seconds=fade_seconds, step_seconds=step_seconds)

    def stream_encoder(self, lookahead_seconds: float = DEFAULT_LOOKAHEAD_SECONDS,
                       context_seconds: float = DEFAULT_CONTEXT_SECONDS,
                       step_seconds: float = DEFAULT_STEP_SECONDS) -> StreamEncoder:
        """A stream that encodes audio at ``sample_rate`` as it is captured (``stream``): its tokens depend
        only on the audio and these settings, not on how the audio is cut into pushes."""
        return StreamEncoder(self._encode_graph, self._stream_spec(), lookahead_seconds=lookahead_seconds,
                             context_seconds=context_seconds, step_seconds=step_seconds)

    def _stream_spec(self) -> StreamSpec:
        return StreamSpec.from_contract(self.stream_contract, sample_rate=self.sample_rate, hop_length=self.hop_length,
                                        compression=self.compression, token_rows=self.token_rows,
                                        codebook_size=self.codebook_size, max_columns=self.windows[0])

    # ------------------------------------------------------------------ internals
    def _chunks(self, batch: int) -> int:
        return 1 if not self.max_batch else -(-batch // self.max_batch)

    def _batched(self, array, graph: Callable, windowed: Callable, windows: tuple[int, int],
                 progress: Progress | None):
        """Split the batch by ``max_batch``, run each part windowed, join the results."""
        step = self.max_batch or array.shape[0]
        starts = range(0, array.shape[0], step)
        window_columns, context_columns = windows
        parts = []
        for index, start in enumerate(starts):
            report = None if progress is None else functools.partial(_chunk_progress, progress, index, len(starts))
            parts.append(windowed(array[start:start + step], graph, window_columns=window_columns,
                                  context_columns=context_columns, hop=self.hop_length,
                                  compression=self.compression, progress=report))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _chunk_progress(progress, index: int, chunks: int, done: int, total: int) -> None:
    """Report window ``done`` of ``total`` in batch part ``index`` as progress over all parts."""
    progress(index * total + done, chunks * total)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and \
        math.isfinite(value)


def _check_output_rate(rate) -> int:
    if not isinstance(rate, (int, np.integer)) or isinstance(rate, bool) or rate <= 0:
        raise SettingsError(f"sample_rate is {rate!r}; expected a positive whole number of Hz, e.g. 48000")
    return int(rate)
