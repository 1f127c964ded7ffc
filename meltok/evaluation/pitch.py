"""Pitch on voiced material: f0 of input and output by probabilistic YIN (``librosa.pyin``).

Both signals are resampled to ``PITCH_RATE`` (22.05 kHz, soxr) and tracked with ``fmin`` 60 Hz,
``fmax`` 1000 Hz, frames of 2048 samples, hop 512 (23 ms). ``f0_error_cents`` is the median over
the frames voiced in both of ``|1200 log2(f0_out / f0_in)|`` (pyin's pitch grid is 10 cents, so values come in
steps of 10); ``voicing_agreement`` is the frames
voiced in both over the frames voiced in either (1 when output and input are voiced alike).
"""
from __future__ import annotations

import numpy as np

from meltok_runtime.errors import MetricUnavailable, MissingDependencyError
from meltok_runtime.optional import import_optional

from .. import metrics

PITCH_RATE = 22050
FMIN_HZ = 60.0
FMAX_HZ = 1000.0
FRAME_LENGTH = 2048
HOP_LENGTH = 512
PITCH_METRICS = ("f0_error_cents", "voicing_agreement")


def _librosa():
    try:
        return import_optional("librosa", install="pip install librosa (or pip install -e '.[eval]')",
                               purpose="the pitch metrics")
    except MissingDependencyError as error:
        raise MetricUnavailable(str(error)) from None


def f0_track(signal, sample_rate: int = metrics.SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """``(f0 [frames] Hz, nan where unvoiced; voiced [frames] bool)`` of a mono signal."""
    librosa = _librosa()
    audio = metrics.resample(np.asarray(signal, dtype=np.float32), sample_rate, PITCH_RATE)
    f0, voiced, _ = librosa.pyin(audio, fmin=FMIN_HZ, fmax=FMAX_HZ, sr=PITCH_RATE, frame_length=FRAME_LENGTH,
                                 hop_length=HOP_LENGTH)
    return f0, voiced & np.isfinite(f0)


def pitch_metrics(reference, estimate, *, sample_rate: int = metrics.SAMPLE_RATE) -> dict[str, float]:
    """``{"f0_error_cents", "voicing_agreement"}`` (module docstring); MetricUnavailable when the input has no
    voiced frame, or librosa is missing. ``f0_error_cents`` is ``nan`` when no frame is voiced in both."""
    ref, est = metrics.align(reference, estimate)
    f0_ref, voiced_ref = f0_track(ref, sample_rate)
    f0_est, voiced_est = f0_track(est, sample_rate)
    if not voiced_ref.any():
        raise MetricUnavailable("the input has no voiced frame (pyin, 60-1000 Hz)")
    both = voiced_ref & voiced_est
    cents = 1200.0 * np.abs(np.log2(f0_est[both] / f0_ref[both]))
    return {"f0_error_cents": float(np.median(cents)) if both.any() else float("nan"),
            "voicing_agreement": float(both.sum() / (voiced_ref | voiced_est).sum())}
