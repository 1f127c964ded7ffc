"""The band-limit screen: long-term spectrum statistics of a file, and the rule that flags
8/16/22.05 kHz material and upsampled "fake full band" files."""
from __future__ import annotations

import math

import numpy as np

from meltok_runtime.melfilters import hann_window

from ...errors import CorpusError

# Band-limit thresholds, measured on the Debian packages (see ``is_band_limited``).
MIN_ABOVE_11K_DB = -60.0
MIN_BANDWIDTH_HZ = 11025.0
SILENCE_RMS_DB = -70.0

_FLOOR_DB = -120.0


def _long_term_spectrum(audio: np.ndarray, n_fft: int, max_frames: int) -> np.ndarray:
    """Mean power spectrum ``[n_fft // 2 + 1]`` of (periodic) Hann frames of ``audio [N]`` (no overlap)."""
    if len(audio) < n_fft:
        audio = np.pad(audio, (0, n_fft - len(audio)))
    starts = np.arange((len(audio) - n_fft) // n_fft + 1) * n_fft
    if len(starts) > max_frames:  # evenly spread subset keeps long files cheap
        starts = starts[np.linspace(0, len(starts) - 1, max_frames).round().astype(np.int64)]
    window = hann_window(n_fft)
    power = np.zeros(n_fft // 2 + 1)
    for i in range(0, len(starts), 256):
        frames = audio[starts[i:i + 256, None] + np.arange(n_fft)] * window
        power += (np.abs(np.fft.rfft(frames, axis=1)) ** 2).sum(0)
    return power / len(starts)


def measure_bandwidth(audio_mono: np.ndarray, sample_rate: int, *, floor_db: float = 60.0,
                      band_hz: float = 500.0, n_fft: int = 2048, max_frames: int = 4096) -> dict:
    """Bandwidth statistics of one file's long-term spectrum.

    Args:
        audio_mono: float ``[N]``.
        sample_rate: Hz.
        floor_db: a ``band_hz`` wide band counts as content while its mean power is
            within ``floor_db`` of the loudest band.

    Returns:
        ``{"above_11k_db", "above_16k_db"}``: energy above 11 / 16 kHz relative to
        the total, in dB (-120 = none); ``"bandwidth_hz"``: upper edge of the highest
        band with content (capped at Nyquist); ``"rms_db"``: level in dBFS.
    """
    x = np.asarray(audio_mono, dtype=np.float32).reshape(-1)
    if x.size == 0 or not np.isfinite(x).all():
        raise CorpusError(f"cannot measure {x.size} samples with NaN/Inf or none; give finite audio")
    power = _long_term_spectrum(x, n_fft, max_frames)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    total = power.sum()

    def rel_db(mask: np.ndarray) -> float:
        ratio = power[mask].sum() / total if total > 0 else 0.0
        return float(max(_FLOOR_DB, 10 * math.log10(ratio + 1e-30)))

    band = np.minimum((freqs // band_hz).astype(np.int64), int(sample_rate / 2 // band_hz))
    n_bands = int(band.max()) + 1
    band_db = 10 * np.log10(np.bincount(band, power, n_bands) / np.bincount(band, None, n_bands) + 1e-30)
    top = int(np.nonzero(band_db >= band_db.max() - floor_db)[0].max())
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return {
        "above_11k_db": round(rel_db(freqs >= 11000.0), 2),
        "above_16k_db": round(rel_db(freqs >= 16000.0), 2),
        "bandwidth_hz": float(min((top + 1) * band_hz, sample_rate / 2)),
        "rms_db": round(max(_FLOOR_DB, 20 * math.log10(rms + 1e-30)), 2),
    }


def is_band_limited(stats: dict, *, min_above_11k_db: float = MIN_ABOVE_11K_DB,
                    min_bandwidth_hz: float = MIN_BANDWIDTH_HZ) -> bool:
    """True for 8/16/22.05 kHz material and upsampled "fake full band" files.

    ``stats`` comes from ``measure_bandwidth`` on the mono mixdown resampled to
    44.1 kHz (soxr HQ). Thresholds chosen on 9,796 distinct files of seven Debian
    packages (game music, effects, read speech):

    - all 150 files stored at 5-22.05 kHz read <= -91 dB above 11 kHz (most -110 to
      -120) and <= 11 kHz of bandwidth;
    - 1,948 of the 9,646 files stored at >= 44.1 kHz are flagged, nearly all speech
      upsampled from 16 kHz before encoding (content stops at ~8 kHz above a flat
      codec/dither floor, -60 to -85 dB above 11 kHz; or, for noisy ones, a floor
      within 60 dB of the peak that starts below 11 kHz, caught by the bandwidth rule);
    - the files kept read -51 / -36 / -18 dB above 11 kHz (5th / 50th / 95th percentile).

    A genuinely dark file (a bass thump, an amp-simulated guitar stem) is dropped
    with them; it would teach the model nothing about the high band either.
    """
    return (stats["above_11k_db"] < min_above_11k_db) or (stats["bandwidth_hz"] <= min_bandwidth_hz)
