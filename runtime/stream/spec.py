"""What both streams share: defaults, ``StreamSpec`` (what a stream needs to know about a codec),
the lock/closed/window bound base, and the input checks of a push."""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from meltok_runtime.errors import AudioInputError, SettingsError, StreamClosedError, TokenInputError
from meltok_runtime.lengths import check_tokens
from meltok_runtime.windowing import WindowGrid

DEFAULT_LOOKAHEAD_SECONDS = 0.2
DEFAULT_STEP_SECONDS = 0.1  # audio between window starts: 2 token columns at 44.1 kHz
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


def samples(seconds: float, name: str, spec: StreamSpec) -> int:
    if not (isinstance(seconds, (int, float)) and seconds >= 0 and math.isfinite(seconds)):
        raise SettingsError(f"{name} must be a non-negative number of seconds, got {seconds!r}")
    return int(round(seconds * spec.sample_rate))


def columns(seconds: float, name: str, spec: StreamSpec) -> int:
    """Whole token columns nearest to ``seconds``."""
    return int(round(samples(seconds, name, spec) / spec.column))


class Stream:
    """Lock, closed flag and the window grid shared by both streams."""

    def __init__(self, spec: StreamSpec):
        self.spec = spec
        self._lock = threading.Lock()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StreamClosedError(f"this {type(self).__name__} was flushed and is closed; start a new stream")

    def _grid(self, left: int, step: int, right: int) -> WindowGrid:
        """The stream's windows: ``left`` columns of context, ``step`` kept, ``right`` of lookahead."""
        if left + step + right > self.spec.max_columns:
            raise SettingsError(f"context, step and lookahead need windows of {left + step + right} columns but this "
                                f"codec takes at most {self.spec.max_columns} per call; choose shorter ones")
        return WindowGrid(left + step + right, step, left, clipped_start=True)


def check_columns(tokens, spec: StreamSpec) -> np.ndarray:
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


def check_audio(audio) -> np.ndarray:
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
