"""Exportable STFT and ISTFT built from convolutions (no ONNX STFT/DFT ops).

Both match ``torch.stft`` / ``torch.istft`` with ``center=True``, a periodic Hann
window and ``win_length == n_fft`` to float32 round-off (see tests/meltok/test_spectral.py).
"""
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from meltok_runtime.melfilters import hann_window


def _dft_basis(n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """Cos and sin tables ``[n_fft // 2 + 1, n_fft]`` in float64."""
    k = np.arange(n_fft // 2 + 1)[:, None]
    n = np.arange(n_fft)[None, :]
    angle = 2.0 * np.pi * ((k * n) % n_fft) / n_fft
    return np.cos(angle), np.sin(angle)


class ConvSTFT(nn.Module):
    """Magnitude or complex STFT as a strided Conv1d with a windowed DFT basis.

    ``forward(audio [B, N]) -> (real, imag)``, each ``[B, n_fft // 2 + 1, N // hop + 1]``.
    """

    def __init__(self, n_fft: int = 1024, hop_length: int = 256):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        cos, sin = _dft_basis(n_fft)
        window = hann_window(n_fft).astype(np.float64)
        basis = np.concatenate([cos * window, -sin * window])[:, None, :]
        self.register_buffer("basis", torch.from_numpy(basis.astype(np.float32)), persistent=False)

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pad = self.n_fft // 2
        padded = F.pad(audio[:, None, :], (pad, pad), mode="reflect")
        spec = F.conv1d(padded, self.basis, stride=self.hop_length)
        return spec.chunk(2, dim=1)

    def magnitude(self, audio: torch.Tensor) -> torch.Tensor:
        """``|STFT(audio)|``: ``[B, N] -> [B, n_fft // 2 + 1, N // hop + 1]``."""
        real, imag = self(audio)
        return torch.sqrt(real * real + imag * imag)


class ConvISTFT(nn.Module):
    """Inverse STFT as a ConvTranspose1d with the inverse DFT basis, then division
    by the overlap-added squared window, trimmed as ``torch.istft(center=True)``.

    ``forward(real, imag)`` with each ``[B, n_fft // 2 + 1, T]`` returns ``[B, (T - 1) * hop]``.
    Imaginary parts of the DC and Nyquist bins are ignored, as in ``torch.istft``.
    """

    def __init__(self, n_fft: int = 1024, hop_length: int = 256, eps: float = 1e-11):
        super().__init__()
        self.n_fft, self.hop_length, self.eps = n_fft, hop_length, eps
        cos, sin = _dft_basis(n_fft)
        window = hann_window(n_fft).astype(np.float64)
        weight = np.full((n_fft // 2 + 1, 1), 2.0 / n_fft)
        weight[0] = weight[-1] = 1.0 / n_fft
        basis = np.concatenate([cos * weight * window, -sin * weight * window])[:, None, :]
        self.register_buffer("basis", torch.from_numpy(basis.astype(np.float32)), persistent=False)
        self.register_buffer("window_sq", torch.from_numpy((window**2).astype(np.float32))[None, None, :],
                             persistent=False)

    def forward(self, real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
        audio = F.conv_transpose1d(torch.cat([real, imag], dim=1), self.basis, stride=self.hop_length)
        ones = torch.ones_like(real[:, :1, :])
        envelope = F.conv_transpose1d(ones, self.window_sq, stride=self.hop_length)
        audio = audio / torch.clamp(envelope, min=self.eps)
        pad = self.n_fft // 2
        return audio[:, 0, pad:-pad]
