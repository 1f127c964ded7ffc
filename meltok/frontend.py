"""Log-mel front end, identical to torchaudio ``MelSpectrogram`` (power 1, HTK, no norm)
followed by ``ln(clamp(mel, log_floor))``, without a torchaudio dependency."""
import torch
from torch import nn

from meltok_runtime.melfilters import mel_filterbank

from .config import FrontendConfig
from .spectral import ConvSTFT


class MelFrontend(nn.Module):
    """``forward(audio [B, N]) -> log-mel [B, n_mels, N // hop + 1]`` (natural log, float32)."""

    def __init__(self, config: FrontendConfig):
        super().__init__()
        self.config = config
        self.stft = ConvSTFT(config.n_fft, config.hop_length)
        filters = mel_filterbank(config.n_fft // 2 + 1, config.n_mels, config.sample_rate, config.f_min, config.f_max)
        self.register_buffer("filters", torch.from_numpy(filters.T.copy()), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        magnitude = self.stft.magnitude(audio.float())
        mel = torch.matmul(self.filters, magnitude)
        return torch.log(torch.clamp(mel, min=self.config.log_floor))
