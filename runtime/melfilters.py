"""Mel filterbank and analysis window, in numpy, equal to the torchaudio/torch buffers.

``mel_filterbank`` reproduces ``torchaudio.functional.melscale_fbanks(..., norm=None,
mel_scale="htk")`` and ``hann_window`` reproduces ``torch.hann_window(n)`` (periodic). Both
follow torch's float32 arithmetic step by step, so the model frontend (torch) and the runtime
(numpy) share one definition. Two torch CPU details are copied on purpose:

- ``torch.linspace`` on AVX2/AVX-512 CPUs evaluates ``start + step * i`` (and ``end - step *
  (n - 1 - i)`` for the upper half) as one fused multiply-add, rounded once to float32.
- ``10.0 ** tensor`` runs SLEEF's ``powf`` (1-ulp accurate, not correctly rounded) on blocks
  of 32 values (AVX-512: two 16-wide vectors per step) and the C library ``powf`` on the
  remaining ``(n_mels + 2) % 32`` values; here those are correctly rounded, which glibc's
  ``powf`` is except in rare near-ties.

With these, the 513 x 96 filterbank of the paper configuration (and the 100-band one of the
reference mel loss) equals the buffer stored in official checkpoints bit for bit; other
configurations can differ from torch by 1 ulp in a mel edge (about 1e-5 in a filter weight),
as torch itself does between AVX2 and AVX-512 CPUs. The Hann window's cosine comes from MKL
inside torch, which cannot be reproduced: here it is correctly rounded and differs from torch
by at most 1 ulp (6e-8).
"""
import functools
import math

import numpy as np

_F32 = np.float32
_F64 = np.float64
_TORCH_VECTOR_BLOCK = 32


def mel_filterbank(n_freqs: int = 513, n_mels: int = 96, sample_rate: int = 44100,
                   f_min: float = 0.0, f_max: float | None = None) -> np.ndarray:
    """Triangular HTK mel filters, float32 ``[n_freqs, n_mels]``, read-only.

    Row ``k`` is the STFT bin at ``k * (sample_rate // 2) / (n_freqs - 1)`` Hz; column ``m``
    is mel band ``m`` (lowest first). No area normalisation. ``f_max`` defaults to
    ``sample_rate / 2``.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if n_freqs < 2 or n_mels < 1 or sample_rate <= 0 or not 0 <= f_min < f_max:
        raise ValueError(
            f"mel_filterbank got n_freqs={n_freqs}, n_mels={n_mels}, sample_rate={sample_rate}, "
            f"f_min={f_min}, f_max={f_max}; expected n_freqs >= 2, n_mels >= 1, sample_rate > 0 "
            "and 0 <= f_min < f_max: fix the frontend configuration")
    return _mel_filterbank(int(n_freqs), int(n_mels), int(sample_rate), float(f_min), float(f_max))


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window, float32 ``[n]``, read-only: ``0.5 - 0.5 cos(2 pi k / n)``.

    As in torch, a window of length 1 is ``[1.0]``.
    """
    if n < 1:
        raise ValueError(f"hann_window got n={n}; expected a length >= 1")
    return _hann_window(int(n))


@functools.lru_cache(maxsize=16)
def _mel_filterbank(n_freqs, n_mels, sample_rate, f_min, f_max):
    all_freqs = _torch_linspace(0.0, float(sample_rate // 2), n_freqs)
    m_pts = _torch_linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2)
    f_pts = _F32(700.0) * (_torch_pow10(m_pts / _F32(2595.0)) - _F32(1.0))
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = np.maximum(_F32(0.0), np.minimum(down, up))
    fb.flags.writeable = False
    return fb


@functools.lru_cache(maxsize=16)
def _hann_window(n):
    if n == 1:
        window = np.ones(1, _F32)
    else:  # torch: the symmetric window of length n + 1, its last value dropped
        phase = np.arange(n + 1, dtype=_F32) * _F32(2.0 * math.pi / n)
        window = (np.cos(phase.astype(_F64)).astype(_F32) * _F32(-0.5) + _F32(0.5))[:n]
    window.flags.writeable = False
    return window


def _hz_to_mel(freq: float) -> float:
    return 2595.0 * math.log10(1.0 + freq / 700.0)


def _torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
    """float32 ``torch.linspace`` (CPU, vectorised kernel: fused multiply-add)."""
    start, end = _F32(start), _F32(end)
    step = _F32(end - start) / _F32(steps - 1)
    i = np.arange(steps, dtype=_F64)
    low = (_F64(start) + _F64(step) * i).astype(_F32)
    high = (_F64(end) - _F64(step) * (steps - 1 - i)).astype(_F32)
    return np.where(i < steps // 2, low, high)


def _torch_pow10(y: np.ndarray) -> np.ndarray:
    """float32 ``10.0 ** y`` as torch computes it on CPU (see the module docstring)."""
    out = np.power(_F64(10.0), y.astype(_F64)).astype(_F32)
    vectorised = len(y) // _TORCH_VECTOR_BLOCK * _TORCH_VECTOR_BLOCK
    out[:vectorised] = _sleef_pow10(y[:vectorised])
    return out


# SLEEF (shibatch/sleef, src/libm/sleefsimdsp.c: xpowf = expkf(logkf(|x|) * y), FMA build),
# specialised to the base 10. Pairs (hi, lo) are double-float numbers; _fma is exact in float64
# for the product and rounds the sum once more to float32.

def _fma(a, b, c):
    return (_F64(a) * _F64(b) + _F64(c)).astype(_F32)


def _add2(x, y):
    s = x[0] + y[0]
    v = s - x[0]
    return s, ((x[0] - (s - v)) + (y[0] - v)) + (x[1] + y[1])


def _add(x, y):
    s = x[0] + y[0]
    return s, (((x[0] - s) + y[0]) + x[1]) + y[1]


def _mul(x, y):
    s = x[0] * y[0]
    return s, _fma(x[0], y[1], _fma(x[1], y[0], _fma(x[0], y[0], -s)))


def _square(x):
    s = x[0] * x[0]
    return s, _fma(x[0] + x[0], x[1], _fma(x[0], x[0], -s))


def _div(n, d):
    t = _F32(1.0) / d[0]
    s = n[0] * t
    u = _fma(t, n[0], -s)
    v = _fma(-d[1], t, _fma(-d[0], t, _F32(1.0)))
    return s, _fma(s, v, _fma(n[1], t, u))


def _sleef_log10_pair():
    """SLEEF logkf(10.0): ln 10 as a float32 pair (10 = 1.25 * 2**3)."""
    zero = _F32(0.0)
    m = _F32(1.25)
    x = _div(_add2((_F32(-1.0), zero), (m, zero)), _add2((_F32(1.0), zero), (m, zero)))
    x2 = _square(x)
    t = _F32(0.240320354700088500976562)
    t = _fma(t, x2[0], _F32(0.285112679004669189453125))
    t = _fma(t, x2[0], _F32(0.400007992982864379882812))
    c = (_F32(0.66666662693023681640625), _F32(3.69183861259614332084311e-09))
    s = _mul((_F32(0.69314718246459960938), _F32(-1.904654323148236017e-09)), (_F32(3.0), zero))
    s = _add(s, (x[0] * _F32(2.0), x[1] * _F32(2.0)))
    return _add(s, _mul(_mul(x2, x), _add2(_mul(x2, (t, zero)), c)))


def _sleef_pow10(y: np.ndarray) -> np.ndarray:
    """SLEEF expkf(logkf(10) * y) for float32 ``y`` (finite, |10**y| in float32 range)."""
    zero = np.zeros_like(y)
    d = _mul(_sleef_log10_pair(), (y, zero))
    q = np.rint((d[0] + d[1]) * _F32(1.442695040888963407359924681001892137426645954152985934135449406931))
    s = _add2(d, (q * _F32(-0.693145751953125), zero))
    s = _add2(s, (q * _F32(-1.428606765330187045e-06), zero))
    hi = s[0] + s[1]
    s = (hi, (s[0] - hi) + s[1])
    u = np.full_like(y, 0.00136324646882712841033936)
    for coef in (0.00836596917361021041870117, 0.0416710823774337768554688,
                 0.166665524244308471679688, 0.499999850988388061523438):
        u = _fma(u, s[0], _F32(coef))
    t = _add(s, _mul(_square(s), (u, zero)))
    hi = _F32(1.0) + t[0]
    t = (hi, ((_F32(1.0) - hi) + t[0]) + t[1])
    return np.ldexp(t[0] + t[1], q.astype(np.int32)).astype(_F32)
