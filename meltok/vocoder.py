"""Token vocoder back end: Vocos ConvNeXt backbone and ISTFT head (reference names)."""
import torch
from torch import nn

from .config import VocoderConfig
from .spectral import ConvISTFT

KERNEL_SIZE = 7  # the embedding convolution's and every ConvNeXt depthwise convolution's


class ConvNeXtBlock(nn.Module):
    """Depthwise conv k7, LayerNorm, MLP with exact GELU, layer scale; ``[B, C, T] -> [B, C, T]``."""

    def __init__(self, dim: int, intermediate_dim: int, layer_scale: float):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=KERNEL_SIZE, padding=KERNEL_SIZE // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.dwconv(x).transpose(1, 2))
        h = self.gamma * self.pwconv2(self.act(self.pwconv1(h)))
        return x + h.transpose(1, 2)


class VocosBackbone(nn.Module):
    """``log-mel [B, n_mels, T] -> features [B, T, dim]``."""

    def __init__(self, input_channels: int, config: VocoderConfig):
        super().__init__()
        self.embed = nn.Conv1d(input_channels, config.dim, kernel_size=KERNEL_SIZE, padding=KERNEL_SIZE // 2)
        self.norm = nn.LayerNorm(config.dim, eps=1e-6)
        self.convnext = nn.ModuleList(
            ConvNeXtBlock(config.dim, config.intermediate_dim, 1.0 / config.num_layers)
            for _ in range(config.num_layers))
        self.final_layer_norm = nn.LayerNorm(config.dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.embed(x).transpose(1, 2)).transpose(1, 2)
        for block in self.convnext:
            x = block(x)
        return self.final_layer_norm(x.transpose(1, 2))


class ISTFTHead(nn.Module):
    """``features [B, T, dim] -> audio [B, (T - 1) * hop]``: log-magnitude and phase, then ISTFT.

    Magnitude ``exp(.)`` clipped at ``max_magnitude``, computed in float32.
    """

    def __init__(self, config: VocoderConfig):
        super().__init__()
        self.max_magnitude = config.max_magnitude
        self.out = nn.Linear(config.dim, config.n_fft + 2)
        self.istft = ConvISTFT(config.n_fft, config.hop_length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_magnitude, phase = self.out(x).float().transpose(1, 2).chunk(2, dim=1)
        magnitude = torch.clamp(torch.exp(log_magnitude), max=self.max_magnitude)
        return self.istft(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
