"""The one window planner: offline windowed encoding and decoding, and the streams (numpy only).

Windows lie on a fixed grid of the token columns (``WindowGrid``): window ``k`` covers columns
``[k step, k step + window)`` and keeps the ``step`` columns after its ``left`` context (window 0
keeps from column 0; the last one, the first to reach the end, keeps up to the end). Where a window
falls depends only on the input, never on how it arrived, so a stream given its input in any pieces
computes exactly the windows offline processing computes with the same grid. ``WindowedEncoder``
and ``WindowedDecoder`` run a grid incrementally (a stream pushes as input arrives; offline
processing pushes everything at once with ``final=True``) and a failed graph call leaves them as
before the push. A decode graph may carry state from window to window (``StatefulDecode``: e.g. a
vocoder's running phase), threaded through the planner.

The model works on a grid of token columns: one column is ``compression * hop`` samples (2048 at
44.1 kHz, 46 ms). Every window starts on a column boundary, so its mel frames and token columns
are exactly the frames and columns of whole-input processing. What differs is what the model
sees: convolutions near a window's edges see padding instead of neighbours, so each window is
processed with ``context_columns`` extra columns on both sides and only its central part is kept:

- encoding keeps the central token columns of every window (tokens are discrete: no blending);
- decoding keeps the central samples and cross-fades neighbouring windows over ``fade_columns``
  columns centred on each join with complementary raised-cosine weights, so the output has no step.

``window_columns`` is the whole span a backend sees in one call, context included; so a window
never exceeds an engine's optimisation profile and peak memory does not grow with the input.
Inputs of at most ``window_columns`` columns go through in one call, identical to whole-input
processing. The callables make this usable with any backend (ONNX Runtime, TensorRT, torch).

Defaults, chosen by measurement (40 s of real music, tiny preset, ONNX Runtime CPU; the test
``test_windowed_encode_and_decode_agree_with_whole_input`` prints the figures, measured with
10 s windows): 12 s windows (258 columns, so a padded 10 s clip still goes through in one call)
with 1 s (22 columns) of context on each side and a 1 s cross-fade.

==========  ===============  ===========================  ===================
window      token agreement  decoded audio vs whole: SNR  peak RSS (CPU)
==========  ===============  ===========================  ===================
5 s         76.6%            18.1 dB                      185 MB
10 s        84.4%            22.1 dB                      355 MB
20 s        89.6%            31.5 dB                      1.05 GB
30 s        92.4%            30.3 dB                      2.1 GB
==========  ===============  ===========================  ===================

Context beyond 0.5 s changes these by less than 1%: the residual does not come from the edges.
The reference architecture is not time-local: GroupNorm statistics and attention span the whole
input, so no window reproduces whole-input results exactly, and whole-input processing itself
changes 2.5-10% of the tokens when the input is 1-20 s longer. With GroupNorm fed whole-input
statistics and attention removed, windowed tokens equal whole-input tokens exactly (GroupNorm is
the larger part: 85% -> 93% for 10 s windows). Memory grows quadratically with the window
(attention), hence about 10 s. One second of context covers the convolutional receptive field of the
paper-size decoder (about 0.9 s).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from meltok_runtime.lengths import decoded_length, token_columns

DEFAULT_WINDOW_SECONDS = 12.0
DEFAULT_CONTEXT_SECONDS = 1.0  # offline windows and streams: context on the left of the kept columns

Progress = Callable[[int, int], None]  # (windows done, windows in all)


@dataclass(frozen=True)
class Window:
    """Columns ``[start, stop)`` go through the model; columns ``[keep_start, keep_stop)`` are kept."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int


@dataclass(frozen=True)
class WindowGrid:
    """Windows of ``window`` columns starting at multiples of ``step``, each keeping ``step`` columns
    after ``left`` columns of context (so ``right = window - step - left`` columns follow them).

    ``clipped_start`` (streams): window ``k`` keeps columns ``[k step, (k + 1) step)`` and starts
    ``left`` columns before them, clipped at column 0, so the first windows run as soon as their own
    columns and lookahead are there (the first audio or tokens of a stream do not wait for a whole
    window of context that does not exist); its last window is clipped at the end, never shifted.
    Otherwise (offline) window 0 keeps from column 0 through ``left + step`` columns."""

    window: int
    step: int
    left: int
    clipped_start: bool = False

    def __post_init__(self):
        if self.step < 1 or self.left < 0 or self.right < 0:
            raise ValueError(f"a window of {self.window} columns cannot keep {self.step} >= 1 columns after "
                             f"{self.left} >= 0 columns of context")

    @classmethod
    def centred(cls, window_columns: int, context_columns: int) -> "WindowGrid":
        """The offline layout: ``context_columns`` on both sides of the kept columns."""
        if window_columns <= 2 * context_columns:
            raise ValueError(f"window_columns ({window_columns}) must exceed twice context_columns "
                             f"({context_columns}) so each window keeps at least one column")
        return cls(window_columns, window_columns - 2 * context_columns, context_columns)

    @property
    def right(self) -> int:
        """Columns of context after the kept ones (a stream's lookahead)."""
        return self.window - self.step - self.left

    def at(self, k: int) -> Window:
        """Window ``k`` when it is not the last."""
        if self.clipped_start:
            keep = k * self.step
            return Window(max(0, keep - self.left), keep + self.step + self.right, keep, keep + self.step)
        start = k * self.step
        return Window(start, start + self.window, start + self.left if k else 0, start + self.left + self.step)

    def last_index(self, columns: int) -> int:
        """Index of the last window of ``columns`` columns: the first that reaches the end."""
        span = self.step + self.right if self.clipped_start else self.window
        return max(0, -(-(columns - span) // self.step))

    def last(self, columns: int, shift: bool = True) -> Window:
        """The last window: keeps up to ``columns``; ``shift`` moves it left to span a whole window
        (more context, same kept columns), else it is clipped at the end."""
        k = self.last_index(columns)
        if self.clipped_start:
            return Window(self.at(k).start, columns, k * self.step, columns)
        start = max(0, columns - self.window) if shift else k * self.step
        return Window(start, columns, k * self.step + self.left if k else 0, columns)

    def first_needed(self, k: int) -> int:
        """The first column a window after window ``k`` can use (what input may be dropped)."""
        return min(self.at(k).start + 1, self.at(k + 1).start)

    def plan(self, columns: int, shift: bool = True) -> list[Window]:
        """Every window of ``columns`` columns; their kept parts tile ``[0, columns)``."""
        last = self.last_index(columns)
        return [self.at(k) for k in range(last)] + [self.last(columns, shift)]


def seconds_to_columns(seconds: float, sample_rate: int, hop: int, compression: int) -> int:
    """Whole token columns in ``seconds`` of audio (at least 0)."""
    return max(0, int(round(seconds * sample_rate / (hop * compression))))


def plan_windows(num_columns: int, window_columns: int, context_columns: int) -> list[Window]:
    """The offline plan: windows of ``window_columns`` columns whose kept parts tile ``[0, num_columns)``.

    Every window but a short input's single one spans exactly ``window_columns`` columns (the
    last is shifted left to end at ``num_columns``, so it gets more left context, never less).
    """
    if window_columns < 1 or context_columns < 0:
        raise ValueError(f"need window_columns >= 1 and context_columns >= 0, got {window_columns}, "
                         f"{context_columns}")
    if num_columns <= window_columns:
        return [Window(0, num_columns, 0, num_columns)]
    return WindowGrid.centred(window_columns, context_columns).plan(num_columns)


def count_windows(num_columns: int, window_columns: int, context_columns: int) -> int:
    """How many backend calls ``encode_windowed``/``decode_windowed`` make for ``num_columns``."""
    return len(plan_windows(num_columns, window_columns, context_columns))


def raised_cosine(length: int) -> np.ndarray:
    """Fade-in weights ``w`` (float32, 0 -> 1) with ``w[n] + w[length - 1 - n] == 1``."""
    phase = (np.arange(length, dtype=np.float64) + 0.5) / max(length, 1)
    return (0.5 - 0.5 * np.cos(np.pi * phase)).astype(np.float32)


@runtime_checkable
class StatefulDecode(Protocol):
    """A decode graph whose output depends on state carried from the window before (e.g. the running
    phase of a vocoder head); ``WindowedDecoder`` threads it from window to window."""

    def initial_state(self, batch: int):
        """The state at column 0 of ``batch`` items."""

    def __call__(self, tokens: np.ndarray, state, carry: int) -> tuple:
        """Tokens ``[B, R, w]`` and the state at the window's first column -> (audio
        ``[B, (c w - 1) hop]``, the state at column ``carry`` of the window: the next window's first;
        past the last window it is not used). Return a new state object; never change ``state`` in place."""


class _Incremental:
    """What both runners share: the grid, lengths, and a push that fails without a trace."""

    def __init__(self, grid: WindowGrid, hop: int, compression: int):
        self.grid, self.hop, self.column = grid, hop, hop * compression
        self.compression = compression
        self._first = self._received = 0  # the buffer holds input from _first to _received
        self._next = 0  # the next window's index

    def push(self, chunk: np.ndarray, final: bool = False, progress: Progress | None = None) -> np.ndarray:
        """Add ``chunk`` and return what became final; ``final``: the input is complete. A graph call
        that fails leaves this runner as before the push (push the same chunk again)."""
        saved = copy.copy(self.__dict__)  # arrays are replaced, never changed in place
        try:
            return self._push(chunk, final, progress)
        except BaseException:
            self.__dict__.update(saved)
            raise

    def _append(self, buffer: np.ndarray | None, chunk: np.ndarray) -> np.ndarray:
        return chunk if buffer is None else np.concatenate([buffer, chunk], axis=-1)


class WindowedEncoder(_Incremental):
    """Audio ``[B, n]`` in any pieces -> the tokens ``[B, R, k]`` of ``grid``'s windows as they become
    final. ``encode_fn``: audio ``[B, n]`` -> tokens ``[B, R, token_columns(n)]``. Window ``k`` runs once
    the sample after its audio has arrived (so it cannot be the last), the rest at ``final``."""

    def __init__(self, encode_fn: Callable, grid: WindowGrid, hop: int, compression: int):
        super().__init__(grid, hop, compression)
        self._encode_fn = encode_fn
        self._audio = None  # [B, samples from _first]

    @property
    def nbytes(self) -> int:
        return 0 if self._audio is None else self._audio.nbytes

    @property
    def received(self) -> int:
        return self._received

    def _push(self, audio, final, progress):
        self._audio = self._append(self._audio, audio)
        self._received += audio.shape[-1]
        columns = token_columns(self._received, self.hop, self.compression) if self._received else 0
        last = self.grid.last_index(columns)
        parts = []
        while not (final and (columns == 0 or self._next > last)):
            k = self._next
            window = self.grid.last(columns) if final and k == last else self.grid.at(k)
            lo = self.column * window.start
            hi = self._received if final and k == last else self.column * window.stop - self.hop
            if not final and self._received <= hi:
                break
            piece = np.ascontiguousarray(self._audio[:, lo - self._first:hi - self._first])
            tokens = np.asarray(self._encode_fn(piece))
            if tokens.ndim != 3 or tokens.shape[-1] != window.stop - window.start:
                raise ValueError(f"encode_fn returned shape {list(tokens.shape)} for {hi - lo} samples; expected "
                                 f"[B, R, {window.stop - window.start}]")
            parts.append(tokens[:, :, window.keep_start - window.start:window.keep_stop - window.start])
            self._next = k + 1
            first = self.column * self.grid.first_needed(k)  # later windows (the last shifted one too) start there
            self._audio = self._audio[:, max(0, first - self._first):]
            self._first = max(first, self._first)
            if progress is not None and final:
                progress(k + 1, last + 1)
        if not parts:
            return np.zeros((audio.shape[0], 0, 0), dtype=np.int64)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)


class WindowedDecoder(_Incremental):
    """Token columns ``[B, R, k]`` in any pieces -> the audio ``[B, n]`` of ``grid``'s windows as it
    becomes final, neighbouring windows cross-faded over ``2 * half`` samples centred on each join
    (complementary raised-cosine weights). ``decode_fn``: tokens ``[B, R, w]`` -> audio
    ``[B, (c w - 1) hop]``, or a ``StatefulDecode``. Window ``k`` runs once its columns have arrived;
    the rest of the last window's output is kept until ``final``."""

    def __init__(self, decode_fn: Callable, grid: WindowGrid, hop: int, compression: int, half: int):
        super().__init__(grid, hop, compression)
        if half < 0 or (half and half > min(grid.left * self.column, grid.right * self.column - hop)):
            raise ValueError(f"a cross-fade of 2 * {half} samples does not fit the context of {grid}")
        self._decode_fn, self.half = decode_fn, half
        self.stateful = isinstance(decode_fn, StatefulDecode)
        self._tokens = None  # [B, R, columns from _first]
        self._tail = None  # [B, n]: the last window's output from the first sample not emitted
        self._state = None

    @property
    def nbytes(self) -> int:
        return sum(0 if a is None else a.nbytes for a in (self._tokens, self._tail))

    def _push(self, tokens, final, progress):
        self._tokens = self._append(self._tokens, tokens)
        self._received += tokens.shape[-1]
        columns, column, half = self._received, self.column, self.half
        total = decoded_length(columns, self.hop, self.compression) if columns else 0
        last = self.grid.last_index(columns)
        parts = []
        while True:
            k = self._next
            if final and (columns == 0 or k > last):  # the last window ran before ``final``: its tail is the rest
                if self._tail is not None and self._tail.shape[-1]:
                    parts.append(self._tail)
                    self._tail = self._tail[:, :0]
                break
            window = self.grid.last(columns, shift=not self.stateful) if final and k == last else self.grid.at(k)
            if window.stop > columns:
                break
            piece = np.ascontiguousarray(self._tokens[:, :, window.start - self._first:window.stop - self._first])
            if self.stateful:
                if self._state is None:
                    self._state = self._decode_fn.initial_state(piece.shape[0])
                audio, state = self._decode_fn(piece, self._state, self.grid.at(k + 1).start - window.start)
            else:
                audio, state = self._decode_fn(piece), None
            audio = np.asarray(audio)
            expected = decoded_length(window.stop - window.start, self.hop, self.compression)
            if audio.ndim != 2 or audio.shape[-1] != expected:
                raise ValueError(f"decode_fn returned shape {list(audio.shape)} for {window.stop - window.start} "
                                 f"columns; expected [B, {expected}]")
            lo = column * window.keep_start - half if k else 0
            segment = audio[:, lo - column * window.start:]
            if k and half:  # ``old + w * (new - old)``: exactly ``old`` wherever both windows agree
                old = self._tail[:, :2 * half]
                segment = np.concatenate([old + raised_cosine(2 * half) * (segment[:, :2 * half] - old),
                                          segment[:, 2 * half:]], axis=-1)
            end = total if final and k == last else column * window.keep_stop - half
            parts.append(segment[:, :end - lo])
            self._tail = segment[:, end - lo:]
            self._next, self._state = k + 1, state
            first = self.grid.first_needed(k)  # later windows (the last shifted one too) start there
            self._tokens = self._tokens[:, :, max(0, first - self._first):]
            self._first = max(first, self._first)
            if progress is not None and final:
                progress(k + 1, last + 1)
            if final and k == last:
                break
        if not parts:
            return np.zeros((tokens.shape[0], 0), dtype=np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)


def encode_windowed(audio, encode_fn: Callable, *, window_columns: int, context_columns: int, hop: int,
                    compression: int, progress: Progress | None = None) -> np.ndarray:
    """``audio [B, N]`` -> tokens ``[B, R, T']`` with ``T' = token_columns(N)``, window by window.

    ``encode_fn`` maps audio ``[B, n]`` to tokens ``[B, R, token_columns(n)]``. ``N`` is normally
    already padded (``lengths.padded_length``); any ``N`` of at least one column works.
    """
    audio = np.asarray(audio)
    if audio.ndim != 2:
        raise ValueError(f"encode_windowed expects audio [B, N], got shape {list(audio.shape)}")
    columns = token_columns(audio.shape[-1], hop, compression)
    return WindowedEncoder(encode_fn, _offline_grid(columns, window_columns, context_columns), hop,
                           compression).push(audio, final=True, progress=progress)


def decode_windowed(tokens, decode_fn: Callable, *, window_columns: int, context_columns: int, hop: int,
                    compression: int, fade_columns: float | None = None,
                    progress: Progress | None = None) -> np.ndarray:
    """tokens ``[B, R, T']`` -> audio ``[B, (compression * T' - 1) * hop]``, window by window.

    ``decode_fn`` maps tokens ``[B, R, w]`` to audio ``[B, (compression * w - 1) * hop]`` (or is a
    ``StatefulDecode``); a window's sample 0 is whole-output sample ``start * compression * hop``.
    Neighbouring windows are cross-faded over ``fade_columns`` columns centred on the join (default:
    the context), capped so both windows stay inside their context there. The context is at least
    one column.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 3:
        raise ValueError(f"decode_windowed expects tokens [B, R, T'], got shape {list(tokens.shape)}")
    # A window of w columns decodes to (c * w - 1) * hop samples: its last hop before the next
    # column is produced only by its right neighbour, so decoding needs at least one column of context.
    context_columns = max(1, context_columns)
    grid = _offline_grid(tokens.shape[-1], window_columns, context_columns)
    column = hop * compression
    fade = context_columns if fade_columns is None else fade_columns
    half = max(0, int(min(round(fade * column / 2), grid.left * column, grid.right * column - hop)))
    return WindowedDecoder(decode_fn, grid, hop, compression, half).push(tokens, final=True, progress=progress)


def _offline_grid(columns: int, window_columns: int, context_columns: int) -> WindowGrid:
    """``plan_windows``'s grid; an input of at most one window is one window of its own length."""
    if window_columns < 1 or context_columns < 0:
        raise ValueError(f"need window_columns >= 1 and context_columns >= 0, got {window_columns}, "
                         f"{context_columns}")
    if columns <= window_columns and window_columns <= 2 * context_columns:
        return WindowGrid(window_columns, window_columns, 0)  # one window, whatever the context
    return WindowGrid.centred(window_columns, context_columns)
