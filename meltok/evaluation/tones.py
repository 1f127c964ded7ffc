"""Tone accuracy: generated test signals through a coder, and what comes back at their frequencies.

Signals (made at run time, 44.1 kHz, peak -6 dBFS): steady tones at ``TONES_HZ`` (4 s each), a
logarithmic sine sweep (``SWEEP_HZ`` over ``SWEEP_SECONDS``) and ``CHORDS`` (a C major triad and
two pairs of partials that share one mel band), all partials of a chord at equal amplitude.

Measures (``EDGE_SECONDS`` left out at both ends of every signal):

- *level at a frequency* (dB re input): one periodic-Hann FFT over the whole steady part (0.33 Hz
  bins), the power summed within +-``LINE_BINS`` bins of the frequency, output over input.
- *strongest line*: the output's largest bin above 20 Hz of that spectrum, refined by a parabola
  through the log power of it and its neighbours; its error in % of the input's frequency. For a
  chord partial, the largest bin within half the distance to the nearest other partial.
- *periodicity*: normalised autocorrelation of the steady output at lags 512 and 2048 samples
  (one vocoder hop pair and one token column; the input's own value is ``cos(2 pi f lag / rate)``).
- *comb*: ``metrics.comb_summary`` (86.1 Hz multiples, output minus input) of each steady tone.
- *sweep*: Hann segments of ``SWEEP_SEGMENT`` samples, hop half that; per segment the power
  within the band the sweep crosses in it (+-``LINE_BINS`` bins), output over input, and the
  output's strongest line against the sweep's frequency at the segment's centre; summarised as
  the median level and the fraction of segments within ``MAX_ERROR_PERCENT``.

Targets (the project's issue): every tone and every chord partial within ``MAX_ERROR_PERCENT``
at no more than ``MAX_LOSS_DB`` below the input.
"""
from __future__ import annotations

import math

import numpy as np

from .. import metrics

SAMPLE_RATE = metrics.SAMPLE_RATE
AMPLITUDE = 10 ** (-6 / 20)
TONES_HZ = (110.0, 300.0, 1000.0, 4000.0)
TONE_SECONDS = 4.0
SWEEP_HZ = (80.0, 8000.0)
SWEEP_SECONDS = 20.0
SWEEP_SEGMENT = 8192
CHORDS = {"C4+E4+G4": (261.63, 329.63, 392.00), "440+470 Hz": (440.0, 470.0), "1000+1060 Hz": (1000.0, 1060.0)}
EDGE_SECONDS = 0.5
LINE_BINS = 3
LOWEST_LINE_HZ = 20.0
LAGS = (512, 2048)
MAX_ERROR_PERCENT = 1.0
MAX_LOSS_DB = 6.0


# ------------------------------------------------------------------ signals
def tone(frequency: float, seconds: float = TONE_SECONDS, amplitude: float = AMPLITUDE) -> np.ndarray:
    """A sine ``[N]`` float32 at ``frequency`` Hz."""
    return chord((frequency,), seconds, amplitude)


def chord(frequencies, seconds: float = TONE_SECONDS, amplitude: float = AMPLITUDE) -> np.ndarray:
    """Equal-amplitude sines ``[N]`` float32 whose sum peaks at no more than ``amplitude``."""
    t = np.arange(int(round(seconds * SAMPLE_RATE))) / SAMPLE_RATE
    partials = sum(np.sin(2 * np.pi * f * t) for f in frequencies)
    return (amplitude / len(frequencies) * partials).astype(np.float32)


def sweep_frequency(t, low: float = SWEEP_HZ[0], high: float = SWEEP_HZ[1], seconds: float = SWEEP_SECONDS):
    """The instantaneous frequency (Hz) of the log sweep at time ``t`` (s)."""
    return low * (high / low) ** (np.asarray(t, dtype=np.float64) / seconds)


def sweep(low: float = SWEEP_HZ[0], high: float = SWEEP_HZ[1], seconds: float = SWEEP_SECONDS,
          amplitude: float = AMPLITUDE) -> np.ndarray:
    """A logarithmic sine sweep ``[N]`` float32 from ``low`` to ``high`` Hz."""
    t = np.arange(int(round(seconds * SAMPLE_RATE))) / SAMPLE_RATE
    rate = math.log(high / low) / seconds
    return (amplitude * np.sin(2 * np.pi * low / rate * np.expm1(rate * t))).astype(np.float32)


# ------------------------------------------------------------------ measures
def _steady(signal) -> np.ndarray:
    edge = int(EDGE_SECONDS * SAMPLE_RATE)
    x = np.asarray(signal, dtype=np.float64).reshape(-1)
    return x[edge:x.size - edge]


def power_spectrum(signal) -> np.ndarray:
    """Power spectrum of one periodic-Hann FFT over the whole of ``signal``."""
    x = np.asarray(signal, dtype=np.float64)
    return np.abs(np.fft.rfft(x * metrics.periodic_hann(x.size))) ** 2


def band_power(spectrum: np.ndarray, size: int, low_hz: float, high_hz: float) -> float:
    """Power of ``spectrum`` (of an FFT of ``size`` samples) from ``LINE_BINS`` bins below ``low_hz``
    to ``LINE_BINS`` bins above ``high_hz``."""
    bin_hz = SAMPLE_RATE / size
    first = max(0, int(round(low_hz / bin_hz)) - LINE_BINS)
    return float(spectrum[first:int(round(high_hz / bin_hz)) + LINE_BINS + 1].sum())


def level_re_input(out_power: float, in_power: float) -> float:
    """``10 log10(out / in)`` in dB; -300 dB for no output power."""
    return 10.0 * math.log10(max(out_power, 1e-30 * in_power, 1e-300) / in_power)


def strongest_line(spectrum: np.ndarray, size: int, low_hz: float = LOWEST_LINE_HZ,
                   high_hz: float | None = None) -> float:
    """Frequency (Hz) of the largest bin of ``spectrum`` in ``[low_hz, high_hz]``, refined by a parabola
    through the log power around it."""
    bin_hz = SAMPLE_RATE / size
    first = max(1, int(math.ceil(low_hz / bin_hz)))
    last = spectrum.size - 2 if high_hz is None else min(spectrum.size - 2, int(high_hz / bin_hz))
    k = first + int(np.argmax(spectrum[first:last + 1]))
    a, b, c = np.log(np.maximum(spectrum[k - 1:k + 2], 1e-300))
    curvature = a - 2 * b + c
    offset = 0.5 * (a - c) / curvature if curvature < 0 else 0.0
    return (k + offset) * bin_hz


def autocorrelation(signal, lag: int) -> float:
    """Normalised autocorrelation of ``signal`` at ``lag`` samples (1 for a signal periodic at ``lag``)."""
    x = np.asarray(signal, dtype=np.float64)
    a, b = x[:-lag], x[lag:]
    energy = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / energy if energy > 0 else 0.0


def error_percent(found: float, expected: float) -> float:
    """``100 (found - expected) / expected``."""
    return 100.0 * (found - expected) / expected


def partial_levels(reference, estimate, frequencies) -> list[dict]:
    """Per partial: ``{"hz", "level_db", "line_hz", "error_percent"}`` (module docstring)."""
    ref, est = _steady(reference), _steady(estimate)
    p_ref, p_est = power_spectrum(ref), power_spectrum(est)
    results = []
    for f in frequencies:
        others = [abs(g - f) for g in frequencies if g != f]
        reach = min(others) / 2 if others else f / 2
        line = strongest_line(p_est, ref.size, max(LOWEST_LINE_HZ, f - reach), None if not others else f + reach)
        level = level_re_input(band_power(p_est, ref.size, f, f), band_power(p_ref, ref.size, f, f))
        results.append({"hz": f, "level_db": level, "line_hz": line, "error_percent": error_percent(line, f)})
    return results


def tone_accuracy(reference, estimate, frequency: float) -> dict:
    """One steady tone: level at its frequency, strongest line and error, periodicity, comb."""
    (partial,) = partial_levels(reference, estimate, (frequency,))
    steady = _steady(estimate)
    return {**partial, **{f"autocorr_{lag}": autocorrelation(steady, lag) for lag in LAGS},
            **metrics.comb_summary(_steady(reference), steady)}


def sweep_accuracy(reference, estimate) -> dict:
    """The sweep: ``{"level_db"`` (median over segments), ``"within_percent"`` (fraction of segments whose
    strongest line is within ``MAX_ERROR_PERCENT``), ``"segments"}``."""
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    est = np.asarray(estimate, dtype=np.float64).reshape(-1)
    edge, hop = int(EDGE_SECONDS * SAMPLE_RATE), SWEEP_SEGMENT // 2
    levels, hits = [], []
    for start in range(edge, ref.size - edge - SWEEP_SEGMENT + 1, hop):
        window = slice(start, start + SWEEP_SEGMENT)
        low, centre, high = sweep_frequency(np.array([start, start + hop, start + SWEEP_SEGMENT]) / SAMPLE_RATE)
        p_ref, p_est = power_spectrum(ref[window]), power_spectrum(est[window])
        levels.append(level_re_input(band_power(p_est, SWEEP_SEGMENT, low, high),
                                     band_power(p_ref, SWEEP_SEGMENT, low, high)))
        hits.append(abs(error_percent(strongest_line(p_est, SWEEP_SEGMENT), centre)) <= MAX_ERROR_PERCENT)
    return {"level_db": float(np.median(levels)), "within_percent": float(np.mean(hits)), "segments": len(levels)}


# ------------------------------------------------------------------ the suite
def tone_suite(code) -> dict:
    """Run ``code`` (``reference [N] -> Coded``, see ``run.Coder``) on every generated signal:
    ``{"tones": [tone_accuracy...], "sweep": sweep_accuracy, "chords": {name: [partial...]}}``."""
    def through(signal):
        return np.asarray(code(signal).audio, dtype=np.float32).reshape(-1)[:signal.size]

    tones = [tone_accuracy(signal, through(signal), f) for f, signal in ((f, tone(f)) for f in TONES_HZ)]
    swept = sweep()
    chords = {name: partial_levels(signal, through(signal), freqs)
              for name, freqs, signal in ((n, fs, chord(fs)) for n, fs in CHORDS.items())}
    return {"tones": tones, "sweep": sweep_accuracy(swept, through(swept)), "chords": chords}


def kept(partial: dict) -> bool:
    """Whether a tone or partial meets the target: within ``MAX_ERROR_PERCENT`` and at most
    ``MAX_LOSS_DB`` below the input."""
    return abs(partial["error_percent"]) <= MAX_ERROR_PERCENT and partial["level_db"] >= -MAX_LOSS_DB
