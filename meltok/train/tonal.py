"""Synthetic tonal crops: what steady and gliding pitch looks like, which a corpus of games' music,
speech and effects shows rarely on a clean background.

A crop ``[N]`` float32 at ``sample_rate``: one to three voices, each a harmonic tone (a fundamental
log-uniform in ``F0_HZ``, one to ``MAX_HARMONICS`` partials with random amplitudes falling with their
number, none above ``MAX_HZ``) or a pure sine (log-uniform up to ``MAX_HZ``), its frequency gliding
linearly by up to ``MAX_GLIDE`` over the crop half the time; summed, scaled to a peak of -3 to -30 dBFS,
over white noise 40-90 dB below that peak.
"""
from __future__ import annotations

import numpy as np

F0_HZ = (55.0, 1760.0)
MAX_HZ = 16000.0
MAX_HARMONICS = 12
MAX_VOICES = 3
MAX_GLIDE = 0.06  # relative change of frequency over the crop
PEAK_DBFS = (-30.0, -3.0)
NOISE_DB = (40.0, 90.0)  # below the peak


def tonal_crop(rng: np.random.Generator, num_samples: int, sample_rate: int) -> np.ndarray:
    """One synthetic tonal crop ``[num_samples]`` float32 (see the module docstring)."""
    t = np.arange(num_samples) / sample_rate
    signal = np.zeros(num_samples)
    for _ in range(rng.integers(1, MAX_VOICES + 1)):
        glide = rng.uniform(-MAX_GLIDE, MAX_GLIDE) if rng.random() < 0.5 else 0.0
        if rng.random() < 0.5:
            f0 = float(np.exp(rng.uniform(*np.log(F0_HZ))))
            partials = np.arange(1, MAX_HARMONICS + 1)
            partials = partials[partials * f0 * (1 + max(glide, 0)) < MAX_HZ][:rng.integers(1, MAX_HARMONICS + 1)]
            amplitudes = rng.uniform(0.2, 1.0, partials.size) / partials
        else:
            f0 = float(np.exp(rng.uniform(np.log(F0_HZ[0]), np.log(MAX_HZ / (1 + MAX_GLIDE)))))
            partials, amplitudes = np.array([1]), np.array([1.0])
        # frequency f0 * (1 + glide * t / T): phase = 2 pi f0 (t + glide t^2 / (2 T))
        phase = 2 * np.pi * f0 * (t + glide * t * t / (2 * t[-1] if t[-1] > 0 else 1.0))
        offsets = rng.uniform(0, 2 * np.pi, partials.size)
        signal += (amplitudes[:, None] * np.sin(partials[:, None] * phase[None, :] + offsets[:, None])).sum(axis=0)
    peak = 10 ** (rng.uniform(*PEAK_DBFS) / 20)
    signal *= peak / max(np.abs(signal).max(), 1e-9)
    signal += rng.standard_normal(num_samples) * peak * 10 ** (-rng.uniform(*NOISE_DB) / 20)
    return signal.astype(np.float32)
