"""Objective quality metrics for a reconstruction against its reference (numpy; scipy if present).

Every metric takes ``(reference, estimate)`` mono arrays at ``sample_rate`` (44.1 kHz by
default) and trims both to the shorter length. Definitions:

- ``mel_distance``: the multi-scale mel distance of descript-audio-codec (DAC,
  ``dac/nn/loss.py`` ``MelSpectrogramLoss`` built with the scales of its ``conf/base.yml``):
  for each (window, mels) in (32, 5), (64, 10), (128, 20), (256, 40), (512, 80), (1024, 160),
  (2048, 320): STFT with a periodic Hann window of that length, hop ``window // 4``, centred
  frames with reflect padding (audiotools' ``match_stride=False``), magnitude, slaney mel
  filters with slaney area normalisation (``librosa.filters.mel`` defaults), then
  ``log_weight * mean|log10(clamp(M_est, 1e-5)^pow) - log10(clamp(M_ref, 1e-5)^pow)|
  + mag_weight * mean|M_est - M_ref|``, summed over the 7 scales. Defaults are the class
  defaults ``pow=2``, ``mag_weight=1``, ``log_weight=1``.
- ``mel_distance_p1``: the same distance in DAC's training configuration (``conf/base.yml``:
  ``pow=1``, ``mag_weight=0``): the log term alone, in log10 magnitude units (half the log term
  of ``mel_distance``), without the linear-magnitude term.
- ``frame_rate_buzz`` (dB): tonal lines at the multiples of ``sample_rate / hop`` (172.3 Hz for
  44.1 kHz and hop 256), the artefact of ISTFT-head vocoders. Welch power spectrum of the whole
  clip (periodic Hann of 16384 samples, hop 4096: 2.7 Hz bins); for each multiple ``k * f0``
  below ``sample_rate / 2 - 60 Hz``, the prominence is the peak power within +-4 Hz over the
  median power of the bins within +-60 Hz (the +-10 Hz around the line left out), in dB; the
  clip's value is the median over the multiples, and the metric is estimate minus reference.
- ``comb_lines_db`` (dB per line): the same prominence at every multiple of ``sample_rate / period``,
  output minus input, one value per multiple (the buzz above is the ``period = hop`` case, taken
  as a difference of medians). Clip values: ``comb86_db`` (median over the multiples of
  44100/512 = 86.1 Hz), ``comb86_odd_db`` (median over the odd multiples, the lines that the
  172.3 Hz buzz does not look at) and ``comb86_p90_db`` (the 90th percentile over the multiples:
  "no line stands out", robust to chance; the largest of some 250 per-line differences is not: white
  noise at 20 dB SNR already reaches +4..+8 dB on real clips).
- ``peak_level_db``: the level at the input's spectral peaks: the ``PEAK_COUNT`` strongest local
  maxima (each the largest bin within +-``PEAK_SPACING_HZ``) between 40 Hz and 16 kHz of the
  input's Welch spectrum (as for the buzz); at each, the power summed within +-2 bins (the Hann
  main lobe), output over input in dB; the mean over the peaks.
- ``level_db``: RMS level difference in dB, ``20 log10(rms(estimate) / rms(reference))``;
  negative when the estimate is quieter, ``nan`` for a silent reference.
- ``stft_distance``: multi-resolution STFT distance with auraloss' ``MultiResolutionSTFTLoss``
  defaults: resolutions (n_fft, hop, win) = (1024, 120, 600), (2048, 240, 1200), (512, 50, 240),
  Hann window zero-padded to n_fft, magnitudes clamped at sqrt(1e-8); per resolution spectral
  convergence ``||M_ref - M_est||_F / ||M_ref||_F`` plus ``mean|ln M_ref - ln M_est|``;
  averaged over the resolutions.
- ``log_spectral_distance`` (LSD, as in audio super-resolution and codec papers): STFT with
  n_fft 2048, hop 512, periodic Hann, centred; power ``P = |X|^2`` clamped at 1e-8;
  ``mean over frames of sqrt(mean over bins of (log10 P_ref - log10 P_est)^2)``.
- ``si_sdr``: scale-invariant SDR in dB (Le Roux et al. 2019), zero-mean signals;
  ``inf`` for a perfect estimate, ``nan`` for a silent reference.
- ``visqol`` (audio mode, 48 kHz), ``pesq_wb`` (16 kHz) and ``stoi`` use the optional packages
  ``visqol-python``, ``pesq`` and ``pystoi``, imported when called; a missing package raises
  ``MetricUnavailable`` saying what to install.
- ``codebook_usage``: distinct codes / codebook size and perplexity ``exp(entropy)`` of the
  code histogram.
"""
import functools
import math

import numpy as np

from meltok_runtime.errors import AudioInputError, MetricUnavailable, MissingDependencyError
from meltok_runtime.melfilters import hann_window
from meltok_runtime.optional import import_optional

SAMPLE_RATE = 44100

DAC_WINDOW_LENGTHS = (32, 64, 128, 256, 512, 1024, 2048)
DAC_N_MELS = (5, 10, 20, 40, 80, 160, 320)
MRSTFT_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
LSD_N_FFT = 2048
LSD_HOP = 512
HOP_LENGTH = 256  # the STFT hop of the MelTok vocoder: frame rate 172.3 Hz at 44.1 kHz
BUZZ_N_FFT = 16384
BUZZ_PEAK_HZ = 4.0
BUZZ_GAP_HZ = 10.0
BUZZ_NEIGHBOURHOOD_HZ = 60.0
COMB_PERIOD = 512  # two vocoder hops: the comb at 44100/512 = 86.1 Hz of the shipped model
PEAK_COUNT = 10
LEVEL_LOW_HZ = 20.0  # below it (a DC offset, rumble) nothing is heard: the level metric leaves it out
PEAK_SPACING_HZ = 20.0
PEAK_BAND_HZ = (40.0, 16000.0)


# ------------------------------------------------------------------ inputs
def align(reference, estimate) -> tuple[np.ndarray, np.ndarray]:
    """Both signals as float32 1-D arrays trimmed to the shorter length.

    Accepts ``[N]`` or ``[1, N]``; raises AudioInputError for other shapes, empty or
    non-finite input.
    """
    out = []
    for name, signal in (("reference", reference), ("estimate", estimate)):
        array = np.asarray(signal, dtype=np.float32)
        if array.ndim == 2 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 1:
            raise AudioInputError(
                f"{name} has shape {array.shape}; expected mono audio [N] or [1, N]: mix channels down first")
        if array.size == 0:
            raise AudioInputError(f"{name} is empty; expected at least one sample")
        if not np.isfinite(array).all():
            raise AudioInputError(f"{name} contains NaN or Inf; expected finite samples")
        out.append(array)
    n = min(out[0].size, out[1].size)
    return out[0][:n], out[1][:n]


# ------------------------------------------------------------------ DSP
@functools.lru_cache(maxsize=32)
def periodic_hann(win_length: int, n_fft: int | None = None) -> np.ndarray:
    """The runtime's periodic Hann window (``melfilters.hann_window``) of ``win_length``, zero-padded on both
    sides to ``n_fft`` as ``torch.stft`` does. float64, read-only."""
    n_fft = win_length if n_fft is None else n_fft
    window = hann_window(win_length).astype(np.float64)
    left = (n_fft - win_length) // 2
    window = np.pad(window, (left, n_fft - win_length - left))
    window.flags.writeable = False
    return window


def stft_magnitude(signal: np.ndarray, n_fft: int, hop_length: int, win_length: int | None = None) -> np.ndarray:
    """``|STFT|`` as ``[n_fft // 2 + 1, 1 + N // hop]`` float32: centred frames with reflect
    padding of ``n_fft // 2`` (``torch.stft(center=True)``), periodic Hann window."""
    return _frame_magnitudes(signal, n_fft, hop_length, win_length).T


def _frame_magnitudes(signal, n_fft, hop_length, win_length=None) -> np.ndarray:
    """``|STFT|`` as C-contiguous ``[frames, bins]`` float32 (fast for the mel matmul)."""
    x = np.asarray(signal, dtype=np.float32)
    padded = np.pad(x, (n_fft // 2, n_fft // 2), mode="reflect" if x.size > 1 else "constant")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
    window = periodic_hann(win_length or n_fft, n_fft).astype(np.float32)
    return np.abs(_rfft()(frames * window, axis=-1)).astype(np.float32, copy=False)


@functools.lru_cache(maxsize=1)
def _rfft():
    """``scipy.fft.rfft`` (float32, about 4x faster) where scipy is installed, else numpy's."""
    try:
        import scipy.fft

        return scipy.fft.rfft
    except ImportError:
        return np.fft.rfft


def _hz_to_mel(freq):
    """Slaney mel scale (librosa ``htk=False``): linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = math.log(6.4) / 27.0
    linear = freq / f_sp
    log = min_log_hz / f_sp + np.log(np.maximum(freq, min_log_hz) / min_log_hz) / logstep
    return np.where(freq >= min_log_hz, log, linear)


def _mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@functools.lru_cache(maxsize=32)
def slaney_mel_filters(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                       fmax: float | None = None) -> np.ndarray:
    """Mel filterbank ``[n_mels, n_fft // 2 + 1]`` float32, equal to ``librosa.filters.mel``
    with its defaults (slaney mel scale, slaney area normalisation). Read-only."""
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    mel_freqs = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(mel_freqs)
    ramps = mel_freqs[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_freqs[2:] - mel_freqs[:-2]))[:, None]
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


def mel_spectrogram(signal, n_fft: int, n_mels: int, *, hop_length: int | None = None,
                    sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Slaney mel magnitude spectrogram ``[n_mels, frames]`` (audiotools' ``mel_spectrogram``)."""
    magnitude = _frame_magnitudes(signal, n_fft, hop_length or n_fft // 4)
    return (magnitude @ slaney_mel_filters(sample_rate, n_fft, n_mels).T).T


def log_mel_spectrogram(signal, *, sample_rate: int = SAMPLE_RATE, n_fft: int = 2048, n_mels: int = 128,
                        hop_length: int = 512) -> np.ndarray:
    """``log10(clamp(mel, 1e-5))`` ``[n_mels, frames]``, for plots."""
    return np.log10(np.maximum(mel_spectrogram(signal, n_fft, n_mels, hop_length=hop_length,
                                               sample_rate=sample_rate), 1e-5))


# ------------------------------------------------------------------ distances
def mel_distance(reference, estimate, *, sample_rate: int = SAMPLE_RATE,
                 window_lengths=DAC_WINDOW_LENGTHS, n_mels=DAC_N_MELS, clamp_eps: float = 1e-5,
                 pow: float = 2.0, mag_weight: float = 1.0, log_weight: float = 1.0) -> float:
    """DAC's multi-scale mel distance (see the module docstring); 0 for identical signals."""
    ref, est = align(reference, estimate)
    if len(window_lengths) != len(n_mels):
        raise ValueError(f"got {len(window_lengths)} window lengths and {len(n_mels)} mel counts; "
                         "give one mel count per window length")
    total = 0.0
    for window, mels in zip(window_lengths, n_mels):
        m_ref = mel_spectrogram(ref, window, mels, sample_rate=sample_rate)
        m_est = mel_spectrogram(est, window, mels, sample_rate=sample_rate)
        if log_weight:
            log_ref = pow * np.log10(np.maximum(m_ref, clamp_eps))
            log_est = pow * np.log10(np.maximum(m_est, clamp_eps))
            total += log_weight * float(np.mean(np.abs(log_est - log_ref), dtype=np.float64))
        if mag_weight:
            total += mag_weight * float(np.mean(np.abs(m_est - m_ref), dtype=np.float64))
    return total


def mel_distance_p1(reference, estimate, *, sample_rate: int = SAMPLE_RATE) -> float:
    """DAC's mel distance as DAC trains with it: power 1, no magnitude term (module docstring)."""
    return mel_distance(reference, estimate, sample_rate=sample_rate, pow=1.0, mag_weight=0.0)


# ------------------------------------------------------------------ artefacts and level
def average_power_spectrum(signal, n_fft: int = BUZZ_N_FFT) -> np.ndarray:
    """Welch power spectrum ``[n_fft // 2 + 1]`` float64: mean ``|FFT|^2`` of periodic-Hann
    frames with hop ``n_fft // 4`` (a signal shorter than ``n_fft`` is zero-padded to one frame)."""
    x = np.asarray(signal, dtype=np.float64)
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::n_fft // 4]
    spectra = np.abs(np.fft.rfft(frames * periodic_hann(n_fft), axis=-1)) ** 2
    return spectra.mean(axis=0)


def line_prominences_db(signal, fundamental: float, *, sample_rate: int = SAMPLE_RATE,
                        n_fft: int = BUZZ_N_FFT) -> np.ndarray:
    """Prominence in dB of the spectrum at each multiple ``k * fundamental`` (k = 1, 2, ...) over its
    local spectral median, ``[multiples]`` float64 (definition in the module docstring)."""
    spectrum = average_power_spectrum(signal, n_fft)
    floor = max(float(spectrum.max()), 1e-30) * 1e-15  # digital silence: no line, 0 dB
    spectrum = np.maximum(spectrum, floor)
    bin_hz = sample_rate / n_fft
    peak, gap, reach = (int(round(hz / bin_hz)) for hz in (BUZZ_PEAK_HZ, BUZZ_GAP_HZ, BUZZ_NEIGHBOURHOOD_HZ))
    count = int((sample_rate / 2 - BUZZ_NEIGHBOURHOOD_HZ) // fundamental)
    if count < 1:
        raise ValueError(f"no multiple of {fundamental} Hz lies below {sample_rate / 2} Hz")
    offsets = np.arange(-reach, reach + 1)
    around = offsets[np.abs(offsets) > gap]
    prominences = np.empty(count)
    for k in range(1, count + 1):
        centre = int(round(k * fundamental / bin_hz))
        line = spectrum[centre - peak:centre + peak + 1].max()
        prominences[k - 1] = 10.0 * math.log10(line / np.median(spectrum[centre + around]))
    return prominences


def line_prominence_db(signal, fundamental: float, *, sample_rate: int = SAMPLE_RATE,
                       n_fft: int = BUZZ_N_FFT) -> float:
    """Median over the multiples of ``line_prominences_db``."""
    return float(np.median(line_prominences_db(signal, fundamental, sample_rate=sample_rate, n_fft=n_fft)))


def comb_lines_db(reference, estimate, *, sample_rate: int = SAMPLE_RATE, period: int = COMB_PERIOD) -> np.ndarray:
    """Line prominence at each multiple of ``sample_rate / period``, estimate minus reference, in dB
    (``[multiples]``; 0 where both are alike)."""
    ref, est = align(reference, estimate)
    rate = sample_rate / period
    return (line_prominences_db(est, rate, sample_rate=sample_rate)
            - line_prominences_db(ref, rate, sample_rate=sample_rate))


def comb_summary(reference, estimate, *, sample_rate: int = SAMPLE_RATE) -> dict[str, float]:
    """``comb86_db``, ``comb86_odd_db``, ``comb86_p90_db`` (module docstring) at ``COMB_PERIOD``."""
    lines = comb_lines_db(reference, estimate, sample_rate=sample_rate)
    return {"comb86_db": float(np.median(lines)), "comb86_odd_db": float(np.median(lines[0::2])),
            "comb86_p90_db": float(np.percentile(lines, 90))}


def frame_rate_buzz(reference, estimate, *, sample_rate: int = SAMPLE_RATE, hop_length: int = HOP_LENGTH) -> float:
    """Frame-rate buzz in dB: line prominence at the multiples of ``sample_rate / hop_length`` of
    the estimate minus that of the reference (0 when both are alike, large for a buzzing vocoder)."""
    ref, est = align(reference, estimate)
    rate = sample_rate / hop_length
    return (line_prominence_db(est, rate, sample_rate=sample_rate)
            - line_prominence_db(ref, rate, sample_rate=sample_rate))


def level_difference_db(reference, estimate, *, sample_rate: int = SAMPLE_RATE,
                        low_hz: float = LEVEL_LOW_HZ) -> float:
    """``20 log10(rms(estimate) / rms(reference))`` in dB over what a listener hears: content below
    ``low_hz`` (a DC offset, rumble) is left out of both RMS values (exactly: the clip's spectrum from
    ``low_hz`` up, by Parseval). ``nan`` for a silent reference and ``-inf`` for a silent estimate."""
    ref, est = align(reference, estimate)
    ref_power, est_power = (_power_above(x, low_hz, sample_rate) for x in (ref, est))
    if ref_power == 0.0:
        return float("nan")
    if est_power == 0.0:
        return float("-inf")
    return 10.0 * math.log10(est_power / ref_power)


def _power_above(signal: np.ndarray, low_hz: float, sample_rate: int) -> float:
    """Mean power of ``signal [N]`` from ``low_hz`` up (one-sided spectrum, Parseval)."""
    spectrum = np.abs(np.fft.rfft(signal.astype(np.float64))) ** 2
    weight = np.full(spectrum.shape, 2.0)
    weight[0] = 1.0
    if signal.shape[-1] % 2 == 0:
        weight[-1] = 1.0
    weight[np.fft.rfftfreq(signal.shape[-1], 1.0 / sample_rate) < low_hz] = 0.0
    return float(np.sum(weight * spectrum)) / signal.shape[-1] ** 2


def peak_level_db(reference, estimate, *, sample_rate: int = SAMPLE_RATE, count: int = PEAK_COUNT) -> float:
    """Mean level in dB of the estimate at the reference's ``count`` strongest spectral peaks, re the
    reference (module docstring); ``nan`` when the reference has no peak (silence)."""
    ref, est = align(reference, estimate)
    p_ref, p_est = average_power_spectrum(ref), average_power_spectrum(est)
    bin_hz = sample_rate / BUZZ_N_FFT
    spacing = int(round(PEAK_SPACING_HZ / bin_hz))
    low, high = (int(round(hz / bin_hz)) for hz in PEAK_BAND_HZ)
    padded = np.pad(p_ref, spacing, constant_values=np.inf)
    local_max = np.lib.stride_tricks.sliding_window_view(padded, 2 * spacing + 1).max(axis=1)
    candidates = np.flatnonzero((p_ref >= local_max) & (p_ref > 0))
    candidates = candidates[(candidates >= low) & (candidates <= high)]
    if candidates.size == 0:
        return float("nan")
    peaks = candidates[np.argsort(p_ref[candidates])[::-1][:count]]
    levels = []
    for centre in peaks:
        band = slice(centre - 2, centre + 3)
        levels.append(10.0 * math.log10(max(float(p_est[band].sum()), 1e-30) / float(p_ref[band].sum())))
    return float(np.mean(levels))


def stft_distance(reference, estimate, *, resolutions=MRSTFT_RESOLUTIONS, eps: float = 1e-8) -> float:
    """Multi-resolution STFT distance (spectral convergence + log-magnitude L1, averaged over
    the resolutions); 0 for identical signals."""
    ref, est = align(reference, estimate)
    total = 0.0
    for n_fft, hop, win in resolutions:
        m_ref = np.sqrt(np.maximum(_frame_magnitudes(ref, n_fft, hop, win).astype(np.float64) ** 2, eps))
        m_est = np.sqrt(np.maximum(_frame_magnitudes(est, n_fft, hop, win).astype(np.float64) ** 2, eps))
        difference = np.linalg.norm(m_ref - m_est)
        convergence = difference / np.linalg.norm(m_ref) if difference > 0 else 0.0
        total += convergence + float(np.mean(np.abs(np.log(m_ref) - np.log(m_est))))
    return total / len(resolutions)


def log_spectral_distance(reference, estimate, *, n_fft: int = LSD_N_FFT, hop_length: int = LSD_HOP,
                          eps: float = 1e-8) -> float:
    """LSD in log10-power units (multiply by 10 for dB); 0 for identical signals."""
    ref, est = align(reference, estimate)
    p_ref = np.log10(np.maximum(_frame_magnitudes(ref, n_fft, hop_length).astype(np.float64) ** 2, eps))
    p_est = np.log10(np.maximum(_frame_magnitudes(est, n_fft, hop_length).astype(np.float64) ** 2, eps))
    return float(np.mean(np.sqrt(np.mean((p_ref - p_est) ** 2, axis=1))))


def si_sdr(reference, estimate) -> float:
    """Scale-invariant SDR in dB; ``inf`` when the estimate is a scaled copy, ``nan`` when the
    reference is silent (undefined)."""
    ref, est = align(reference, estimate)
    ref = ref.astype(np.float64) - ref.mean(dtype=np.float64)
    est = est.astype(np.float64) - est.mean(dtype=np.float64)
    energy = float(ref @ ref)
    if energy == 0.0:
        return float("nan")
    target = (float(est @ ref) / energy) * ref
    residual = est - target
    noise = float(residual @ residual)
    signal = float(target @ target)
    if signal == 0.0:  # a silent estimate, or one orthogonal to the reference
        return float("-inf")
    if noise <= 1e-20 * signal:
        return float("inf")
    return 10.0 * math.log10(signal / noise)


# ------------------------------------------------------------------ optional metrics
def resample(signal: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """``signal`` from ``rate_in`` to ``rate_out`` Hz (soxr HQ), float64."""
    if rate_in == rate_out:
        return np.asarray(signal, dtype=np.float64)
    from meltok_runtime.io.audio import resample

    return resample(np.asarray(signal, dtype=np.float32)[None], rate_in, rate_out)[0].astype(np.float64)


def _require(module: str, package: str):
    """The metric's package, or MetricUnavailable (a missing metric is skipped, not fatal)."""
    try:
        return import_optional(module, install=f"pip install {package}", purpose="this metric")
    except MissingDependencyError as error:
        raise MetricUnavailable(str(error)) from None


@functools.lru_cache(maxsize=2)
def _visqol_api(mode: str):
    visqol = _require("visqol", "visqol-python")
    api = visqol.VisqolApi()
    try:
        api.create(mode=mode)
    except (FileNotFoundError, ImportError) as error:
        raise MetricUnavailable(f"visqol-python cannot start in {mode} mode ({error}); "
                                "reinstall `visqol-python` (it ships its model files)") from None
    return api


def visqol(reference, estimate, *, sample_rate: int = SAMPLE_RATE, mode: str = "audio") -> float:
    """ViSQOL MOS-LQO (1..~4.73 in audio mode) from ``visqol-python``: audio mode at 48 kHz,
    speech mode at 16 kHz (both signals resampled with soxr)."""
    ref, est = align(reference, estimate)
    api = _visqol_api(mode)
    rate = 48000 if mode == "audio" else 16000
    result = api.measure_from_arrays(resample(ref, sample_rate, rate), resample(est, sample_rate, rate), rate)
    return float(result.moslqo)


def pesq_wb(reference, estimate, *, sample_rate: int = SAMPLE_RATE) -> float:
    """Wide-band PESQ (MOS-LQO, about 1.0..4.64) at 16 kHz; for speech. Raises
    MetricUnavailable when the package is missing or the clip has no detectable utterance."""
    pesq = _require("pesq", "pesq")
    ref, est = align(reference, estimate)
    try:
        return float(pesq.pesq(16000, resample(ref, sample_rate, 16000), resample(est, sample_rate, 16000), "wb"))
    except pesq.PesqError as error:
        raise MetricUnavailable(f"PESQ cannot score this clip: {error}") from None


def stoi(reference, estimate, *, sample_rate: int = SAMPLE_RATE, extended: bool = False) -> float:
    """STOI (0..1, ``pystoi``; it resamples to 10 kHz internally); for speech."""
    pystoi = _require("pystoi", "pystoi")
    ref, est = align(reference, estimate)
    return float(pystoi.stoi(resample(ref, sample_rate, 16000), resample(est, sample_rate, 16000), 16000,
                             extended=extended))


def optional_metric_status(names=None) -> dict[str, str | None]:
    """``{metric: None if it can run here, else the reason}`` for ``names`` (default: visqol,
    pesq_wb and stoi)."""
    checks = {"visqol": lambda: _visqol_api("audio"), "pesq_wb": lambda: _require("pesq", "pesq"),
              "stoi": lambda: _require("pystoi", "pystoi")}
    status = {}
    for metric in OPTIONAL_METRICS if names is None else names:
        check = checks[metric]
        try:
            check()
            status[metric] = None
        except MetricUnavailable as error:
            status[metric] = str(error)
    return status


# ------------------------------------------------------------------ codebook
def code_histogram(tokens, codebook_size: int) -> np.ndarray:
    """Counts of each code ``[codebook_size]`` int64 over every token of ``tokens``."""
    codes = np.asarray(tokens).reshape(-1)
    if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
        raise ValueError(f"tokens span [{codes.min()}, {codes.max()}]; expected codes in [0, {codebook_size})")
    return np.bincount(codes.astype(np.int64), minlength=codebook_size)


def usage_from_histogram(histogram) -> dict[str, float]:
    """``{"codebook_usage": distinct / size, "codes_used": distinct, "perplexity": exp(H)}``."""
    counts = np.asarray(histogram, dtype=np.float64)
    total = counts.sum()
    used = int(np.count_nonzero(counts))
    if total == 0:
        return {"codebook_usage": 0.0, "codes_used": 0, "perplexity": 0.0}
    p = counts[counts > 0] / total
    return {"codebook_usage": used / counts.size, "codes_used": used,
            "perplexity": float(np.exp(-np.sum(p * np.log(p))))}


def codebook_usage(tokens, codebook_size: int) -> dict[str, float]:
    """Codebook usage and perplexity of one token array (any shape)."""
    return usage_from_histogram(code_histogram(tokens, codebook_size))


# ------------------------------------------------------------------ all at once
CORE_METRICS = ("mel_distance", "mel_distance_p1", "stft_distance", "lsd", "si_sdr", "buzz_db", "comb86_db",
                "comb86_odd_db", "comb86_p90_db", "level_db", "peak_level_db")
OPTIONAL_METRICS = ("visqol", "pesq_wb", "stoi")


def clip_metrics(reference, estimate, *, sample_rate: int = SAMPLE_RATE, speech: bool = False,
                 use_visqol: bool = True) -> tuple[dict[str, float | None], dict[str, str]]:
    """Every metric for one clip: ``(values, reasons)``; an optional metric that cannot run is
    ``None`` in ``values`` with its reason in ``reasons``. PESQ and STOI run for speech only."""
    ref, est = align(reference, estimate)
    values: dict[str, float | None] = {
        "mel_distance": mel_distance(ref, est, sample_rate=sample_rate),
        "mel_distance_p1": mel_distance_p1(ref, est, sample_rate=sample_rate),
        "stft_distance": stft_distance(ref, est),
        "lsd": log_spectral_distance(ref, est),
        "si_sdr": si_sdr(ref, est),
        "buzz_db": frame_rate_buzz(ref, est, sample_rate=sample_rate),
        **comb_summary(ref, est, sample_rate=sample_rate),
        "level_db": level_difference_db(ref, est),
        "peak_level_db": peak_level_db(ref, est, sample_rate=sample_rate),
    }
    reasons: dict[str, str] = {}
    optional = {"visqol": (lambda: visqol(ref, est, sample_rate=sample_rate)) if use_visqol else None,
                "pesq_wb": (lambda: pesq_wb(ref, est, sample_rate=sample_rate)) if speech else None,
                "stoi": (lambda: stoi(ref, est, sample_rate=sample_rate)) if speech else None}
    for name, compute in optional.items():
        values[name] = None
        if compute is None:
            continue
        try:
            values[name] = compute()
        except MetricUnavailable as error:
            reasons[name] = str(error)
    return values, reasons
