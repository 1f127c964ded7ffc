"""Audio from a log-mel spectrogram without a neural vocoder: magnitude by non-negative least
squares, phase from the magnitude's own peaks, accumulated over frames (a peak-locked phase
vocoder), inverse STFT.

Frame grid: the front end's (``n_fft``, ``hop``, ``center=True``, periodic Hann). Shapes: log-mel
``[B, M, T]`` -> magnitude ``[B, F, T]`` (``F = n_fft // 2 + 1``) -> audio ``[B, (T - 1) * hop]``.

Phase. A stationary sinusoid at ``omega`` rad/sample analysed in a centred frame has, in every bin
``k`` of its main lobe, the phase ``Phi_t - pi k``, where ``Phi_t`` (its phase at frame ``t``'s
centre) advances by ``omega * hop`` per frame. Peaks are the local maxima of each frame's NNLS
magnitude; a peak's ``omega`` is the frequency whose Hann main lobe, seen through the filterbank, fits
the mel bands around it best (finer than a bin where mel bands are wider than bins, above about
700 Hz). Every bin takes the frequency of its nearest peak, its running phase ``Phi`` is the float64
sum of those advances over frames (wrapped to ``[-pi, pi)``), and bins are locked to their peak's
running phase. Everything but the running phase is frame-local, so the running phase before a frame
is the whole state that windows and streams carry: decoding in pieces gives the running phase of one
call. Then ``consistency_iterations`` of fast Griffin-Lim start from that phase, within the frames
at hand (a window or a stream's chunk): where overlapping frames disagree (dense music, speech) they
make the STFT consistent, while steady tones, already consistent, keep their pitch. Partials closer
than a main lobe (about 170 Hz: a triad below 500 Hz) share one frequency and are not kept.
"""
from __future__ import annotations

import numpy as np

from .melfilters import hann_window, mel_filterbank

NNLS_ITERATIONS = 32
CONSISTENCY_ITERATIONS = 8  # 0 / 8 / 16 / 32: mel distance of the true mel on 6 held-out clips 2.99 / 2.24 / 2.15 / 2.09;
# a 2637 Hz tone -2.3 / -4.3 / -7.6 dB (more iterations pull lines between the bins off their frequency)
GL_MOMENTUM = 0.99
PEAK_FLOOR_DB = 80.0  # peaks further below the frame's largest are noise: their bins follow the nearest real peak
FINE = 64  # the lobe table's steps per bin
OFFSETS = np.linspace(-1.0, 1.0, 2 * FINE + 1)  # candidate peak offsets from a peak's bin, in bins
LOBE_BINS = 4  # main lobe (2 bins each side) and the first side lobes
SUPPORT_BANDS = 16  # mel bands compared when fitting a peak's frequency
_EPS = 1e-12


class MelInverter:
    """``log-mel [B, M, T] -> audio [B, (T - 1) * hop]`` (see the module docstring)."""

    def __init__(self, *, sample_rate: int = 44100, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 96,
                 f_min: float = 0.0, f_max: float = 22050.0, log_floor: float = 1e-7,
                 nnls_iterations: int = NNLS_ITERATIONS, consistency_iterations: int = CONSISTENCY_ITERATIONS):
        self.n_fft, self.hop, self.log_floor = n_fft, hop_length, log_floor
        self.bins = n_fft // 2 + 1
        self.filters = mel_filterbank(self.bins, n_mels, sample_rate, f_min, f_max).T.astype(np.float64)  # [M, F]
        self.nnls_iterations, self.consistency_iterations = nnls_iterations, consistency_iterations
        self._pinv = np.linalg.pinv(self.filters)  # [F, M]
        self.window = hann_window(n_fft).astype(np.float64)
        self._first_band, self._responses = self._tone_responses()
        self._lock_offset = -np.pi * np.arange(self.bins)  # a centred frame's phase across a main lobe

    # ------------------------------------------------------------ magnitude
    def linear_mel(self, log_mel: np.ndarray) -> np.ndarray:
        """``[B, M, T]`` natural-log mel -> linear mel, 0 at the floor (the floor is silence, not signal)."""
        mel = np.exp(np.asarray(log_mel, dtype=np.float64))
        return np.where(mel <= self.log_floor * 1.0001, 0.0, mel)

    def magnitude(self, mel: np.ndarray) -> np.ndarray:
        """Linear mel ``[B, M, T]`` -> linear magnitude ``[B, F, T]`` (NNLS, multiplicative updates from
        the clipped pseudo-inverse)."""
        target = np.matmul(self.filters.T, mel)
        magnitude = np.maximum(np.matmul(self._pinv, mel), mel.max(axis=1, keepdims=True) * 1e-6 + _EPS)  # per frame
        for _ in range(self.nnls_iterations):
            magnitude *= target / (np.matmul(self.filters.T, np.matmul(self.filters, magnitude)) + _EPS)
        return magnitude

    # ------------------------------------------------------------ peak frequencies
    def _tone_responses(self) -> tuple[np.ndarray, np.ndarray]:
        """For a sinusoid at bin ``p + OFFSETS[i]``: the mel bands it excites, ``[F]`` first band and
        ``[F, len(OFFSETS), SUPPORT_BANDS]`` responses (its Hann main lobe and first side lobes through the
        filterbank), each of unit norm."""
        fine = np.abs(np.fft.rfft(self.window, n=self.n_fft * FINE))  # |W| at 1/FINE-bin steps
        lobe_bins = np.arange(-LOBE_BINS, LOBE_BINS + 1)
        first = np.zeros(self.bins, dtype=np.int64)
        responses = np.zeros((self.bins, OFFSETS.size, SUPPORT_BANDS))
        bands = self.filters.shape[0]
        for p in range(self.bins):
            columns = p + lobe_bins
            valid = (columns >= 0) & (columns < self.bins)
            distance = np.abs(columns[None, valid] - p - OFFSETS[:, None])  # [offsets, lobe bins] in bins
            lobe = fine[np.minimum(np.rint(distance * FINE).astype(np.int64), fine.size - 1)]
            response = lobe @ self.filters[:, columns[valid]].T  # [offsets, M]
            touched = np.nonzero(response.max(axis=0) > 1e-3 * response.max())[0]
            first[p] = min(touched[0], bands - SUPPORT_BANDS)
            part = response[:, first[p]:first[p] + SUPPORT_BANDS]
            responses[p] = part / np.linalg.norm(part, axis=1, keepdims=True)
        return first, responses

    def _fit_offsets(self, mel: np.ndarray, peaks: np.ndarray) -> np.ndarray:
        """Each peak's frequency offset from its bin, in bins, from the linear mel ``[B, M, T]``: the
        offset whose tone response fits the ``SUPPORT_BANDS`` bands around the peak best (least squares
        with a free amplitude: the largest correlation with the unit-norm response).
        ``peaks``: bool ``[B, F, T]`` -> ``[B, F, T]`` offsets (0 off the peaks)."""
        offsets = np.zeros(peaks.shape)
        b, p, t = np.nonzero(peaks)
        order = np.argsort(p, kind="stable")
        b, p, t = b[order], p[order], t[order]
        bins, starts = np.unique(p, return_index=True)
        for peak_bin, start, stop in zip(bins, starts, [*starts[1:], p.size]):
            bands = self._first_band[peak_bin] + np.arange(SUPPORT_BANDS)
            observed = mel[b[start:stop, None], bands[None, :], t[start:stop, None]]  # [n, S]
            score = observed @ self._responses[peak_bin].T  # [n, O]: least squares in the S bands
            offsets[b[start:stop], peak_bin, t[start:stop]] = OFFSETS[np.argmax(score, axis=1)]
        return offsets

    # ------------------------------------------------------------ phase
    def frame_advance(self, magnitude: np.ndarray, mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Magnitude ``[B, F, T]`` and linear mel ``[B, M, T]`` -> per frame and bin, the phase advance over
        one hop of its nearest peak, and that peak's bin: ``[B, F, T]`` float64 and int."""
        log_mag = np.log(magnitude + _EPS)
        centre = log_mag[:, 1:-1]
        floor = log_mag.max(axis=1, keepdims=True) - PEAK_FLOOR_DB / 20 * np.log(10)
        inner = (centre > log_mag[:, :-2]) & (centre >= log_mag[:, 2:]) & (centre > floor)
        peaks = np.zeros(log_mag.shape, dtype=bool)
        peaks[:, 1:-1] = inner
        index = np.arange(self.bins)[None, :, None]
        below = np.maximum.accumulate(np.where(peaks, index, -1), axis=1)  # nearest peak at or below
        above = np.flip(np.minimum.accumulate(np.flip(np.where(peaks, index, self.bins), axis=1), axis=1), axis=1)
        use_above = (above < self.bins) & ((below < 0) | (above - index < index - below))
        nearest = np.where(use_above, above, below)
        nearest = np.where(nearest < 0, index, nearest)  # a frame without peaks: bin centres
        frequency = (nearest + np.take_along_axis(self._fit_offsets(mel, peaks), nearest, axis=1)) / self.n_fft  # cycles per sample
        return 2 * np.pi * frequency * self.hop, nearest

    def phase(self, magnitude: np.ndarray, mel: np.ndarray,
              state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Magnitude ``[B, F, T]``, linear mel ``[B, M, T]`` and the running phase before frame 0 ``[B, F]``
        (zeros if None) -> (phase ``[B, F, T]``, the running phase at every frame ``[B, F, T]``)."""
        advance, nearest = self.frame_advance(magnitude, mel)
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

    def stft(self, audio: np.ndarray) -> np.ndarray:
        """``[B, N]`` -> complex ``[B, F, N // hop + 1]`` (centred frames, reflect padding, periodic Hann)."""
        half = self.n_fft // 2
        padded = np.pad(np.asarray(audio, dtype=np.float64), ((0, 0), (half, half)), mode="reflect")
        count = audio.shape[1] // self.hop + 1
        index = np.arange(self.n_fft)[None, :] + self.hop * np.arange(count)[:, None]  # [T, n_fft]
        return np.fft.rfft(padded[:, index] * self.window, axis=2).transpose(0, 2, 1)

    def consistent_phase(self, magnitude: np.ndarray, phase: np.ndarray) -> np.ndarray:
        """``consistency_iterations`` of fast Griffin-Lim (momentum ``GL_MOMENTUM``) from ``phase``: a phase
        whose inverse STFT re-analyses closer to ``magnitude``, where overlapping frames disagree."""
        previous = spectrum = magnitude * np.exp(1j * phase)
        for _ in range(self.consistency_iterations):
            projected = self.stft(self.istft(np.abs(spectrum), np.angle(spectrum)))
            accelerated = projected + GL_MOMENTUM * (projected - previous)
            previous = projected
            spectrum = magnitude * np.exp(1j * np.angle(accelerated))
        return np.angle(spectrum)

    def __call__(self, log_mel: np.ndarray, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``log-mel [B, M, T]`` and the running phase before frame 0 ``[B, F]`` (None: zeros, a stream's start)
        -> (audio ``[B, (T - 1) * hop]``, the running phase after every frame ``[B, F, T]``; to continue at frame
        ``s``, pass ``running[..., s - 1]``)."""
        mel = self.linear_mel(log_mel)
        magnitude = self.magnitude(mel)
        phase, running = self.phase(magnitude, mel, state)
        if self.consistency_iterations:
            phase = self.consistent_phase(magnitude, phase)
        return self.istft(magnitude, phase), running


def _wrap(phase: np.ndarray) -> np.ndarray:
    return (phase + np.pi) % (2 * np.pi) - np.pi
