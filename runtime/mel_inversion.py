"""Audio from a log-mel spectrogram without a neural vocoder: magnitude by non-negative least
squares, phase from the magnitude's own peaks, accumulated over frames (a peak-locked phase
vocoder), inverse STFT.

Frame grid: the front end's (``n_fft``, ``hop``, ``center=True``, periodic Hann). Shapes: log-mel
``[B, M, T]`` -> magnitude ``[B, F, T]`` (``F = n_fft // 2 + 1``) -> audio ``[B, (T - 1) * hop]``.

Phase. A stationary sinusoid at ``omega`` rad/sample analysed in a centred frame has, in every bin
``k`` of its main lobe, the phase ``Phi_t - pi k``, where ``Phi_t`` (its phase at frame ``t``'s
centre) advances by ``omega * hop`` per frame. Each frame's log-magnitude peaks give ``omega`` by
quadratic interpolation; every bin takes the frequency of its nearest peak, and its running phase
``Phi`` is the float64 sum of those advances over frames (wrapped to ``[-pi, pi)``); bins are locked
to their peak's running phase. The running phase at a frame is the state that windows and streams
carry (``PhaseState``): decoding in pieces equals decoding at once.
"""
from __future__ import annotations

import numpy as np

from .melfilters import hann_window, mel_filterbank

NNLS_ITERATIONS = 64
PEAK_FLOOR_DB = 80.0  # peaks further below the frame's largest are noise: their bins follow the nearest real peak
_EPS = 1e-12


class MelInverter:
    """``log-mel [B, M, T] -> audio [B, (T - 1) * hop]`` (see the module docstring)."""

    def __init__(self, *, sample_rate: int = 44100, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 96,
                 f_min: float = 0.0, f_max: float = 22050.0, log_floor: float = 1e-7,
                 nnls_iterations: int = NNLS_ITERATIONS):
        self.n_fft, self.hop, self.log_floor = n_fft, hop_length, log_floor
        self.bins = n_fft // 2 + 1
        self.filters = mel_filterbank(self.bins, n_mels, sample_rate, f_min, f_max).T.astype(np.float64)  # [M, F]
        self.nnls_iterations = nnls_iterations
        self._pinv = np.linalg.pinv(self.filters)  # [F, M]
        self._gram = self.filters.T @ self.filters  # [F, F]
        self.window = hann_window(n_fft).astype(np.float64)
        self._lock_offset = -np.pi * np.arange(self.bins)  # a centred frame's phase across a main lobe

    # ------------------------------------------------------------ magnitude
    def magnitude(self, log_mel: np.ndarray) -> np.ndarray:
        """``[B, M, T]`` natural-log mel -> linear magnitude ``[B, F, T]`` (NNLS, multiplicative updates
        from the clipped pseudo-inverse)."""
        mel = np.exp(np.asarray(log_mel, dtype=np.float64))
        mel = np.where(mel <= self.log_floor * 1.0001, 0.0, mel)  # the floor is silence, not signal
        target = np.einsum("fm,bmt->bft", self.filters.T, mel)
        magnitude = np.maximum(np.einsum("fm,bmt->bft", self._pinv, mel), 1e-3 * _EPS + mel.max() * 1e-6)
        for _ in range(self.nnls_iterations):
            magnitude *= target / (np.einsum("fg,bgt->bft", self._gram, magnitude) + _EPS)
        return magnitude

    # ------------------------------------------------------------ phase
    def frame_advance(self, magnitude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per frame and bin, the phase advance over one hop of its nearest peak, and that peak's bin:
        ``[B, F, T]`` float64 and int."""
        log_mag = np.log(magnitude + _EPS)
        left, centre, right = log_mag[:, :-2], log_mag[:, 1:-1], log_mag[:, 2:]
        floor = log_mag.max(axis=1, keepdims=True) - PEAK_FLOOR_DB / 20 * np.log(10)
        inner = (centre > left) & (centre >= right) & (centre > floor)
        peaks = np.zeros(log_mag.shape, dtype=bool)
        peaks[:, 1:-1] = inner
        index = np.arange(self.bins)[None, :, None]
        below = np.maximum.accumulate(np.where(peaks, index, -1), axis=1)  # nearest peak at or below
        above = np.flip(np.minimum.accumulate(np.flip(np.where(peaks, index, self.bins), axis=1), axis=1), axis=1)
        use_above = (above < self.bins) & ((below < 0) | (above - index < index - below))
        nearest = np.where(use_above, above, below)
        nearest = np.where(nearest < 0, index, nearest)  # a frame without peaks: bin centres
        curvature = left - 2 * centre + right
        offset = np.zeros(log_mag.shape)
        offset[:, 1:-1] = np.where(inner, 0.5 * (left - right) / np.where(inner, curvature, -1.0), 0.0)
        frequency = (nearest + np.take_along_axis(offset, nearest, axis=1)) / self.n_fft  # cycles per sample
        return 2 * np.pi * frequency * self.hop, nearest

    def phase(self, magnitude: np.ndarray, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Magnitude ``[B, F, T]`` and the running phase before frame 0 ``[B, F]`` (zeros if None) ->
        (phase ``[B, F, T]``, the running phase at every frame ``[B, F, T]``)."""
        advance, nearest = self.frame_advance(magnitude)
        start = np.zeros(advance.shape[:2]) if state is None else np.asarray(state, dtype=np.float64)
        running = _wrap(start[..., None] + np.cumsum(advance, axis=2))
        locked = np.take_along_axis(running, nearest, axis=1) + self._lock_offset[None, :, None]
        return locked, running

    # ------------------------------------------------------------ synthesis
    def istft(self, magnitude: np.ndarray, phase: np.ndarray) -> np.ndarray:
        """``[B, F, T]`` magnitude and phase -> ``[B, (T - 1) * hop]``, as ``torch.istft(center=True)``."""
        frames = np.fft.irfft(magnitude * np.exp(1j * phase), n=self.n_fft, axis=1) * self.window[None, :, None]
        batch, _, count = frames.shape
        length = self.n_fft + self.hop * (count - 1)
        audio, norm = np.zeros((batch, length)), np.zeros(length)
        for t in range(count):
            audio[:, t * self.hop:t * self.hop + self.n_fft] += frames[:, :, t]
            norm[t * self.hop:t * self.hop + self.n_fft] += self.window ** 2
        half = self.n_fft // 2
        audio, norm = audio[:, half:length - half], norm[half:length - half]
        return (audio / np.maximum(norm, 1e-11)).astype(np.float32)

    def __call__(self, log_mel: np.ndarray, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``log-mel [B, M, T]`` -> (audio ``[B, (T - 1) * hop]``, running phase at every frame ``[B, F, T]``)."""
        magnitude = self.magnitude(log_mel)
        phase, running = self.phase(magnitude, state)
        return self.istft(magnitude, phase), running


def _wrap(phase: np.ndarray) -> np.ndarray:
    return (phase + np.pi) % (2 * np.pi) - np.pi
