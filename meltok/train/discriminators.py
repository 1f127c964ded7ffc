"""Stage-2 discriminators: multi-period (HiFi-GAN) and multi-resolution (UnivNet/Vocos), with
spectral norm on every convolution.

Each discriminator maps audio ``[B, N]`` to ``(scores [B, S], feature maps)``; the
``Multi*`` wrappers run all sub-discriminators on real and generated audio in one batch.
Widths are configurable (the defaults are the reference ones; tests use narrow ones).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

LRELU_SLOPE = 0.1


def _sn_conv(*args, **kwargs) -> nn.Conv2d:
    return spectral_norm(nn.Conv2d(*args, **kwargs))


class PeriodDiscriminator(nn.Module):
    """Audio folded into ``[B, 1, N / p, p]`` columns of period ``p``, then 2D convolutions with
    kernels ``(k, 1)`` (stride 3 except the last): ``[B, N] -> ([B, S], maps)``."""

    def __init__(self, period: int, channels=(32, 128, 512, 1024, 1024), kernel_size: int = 5, stride: int = 3):
        super().__init__()
        self.period = period
        widths = (1,) + tuple(channels)
        self.convs = nn.ModuleList(
            _sn_conv(cin, cout, (kernel_size, 1), (stride if i < len(channels) - 1 else 1, 1),
                     padding=(kernel_size // 2, 0))
            for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])))
        self.conv_post = _sn_conv(widths[-1], 1, (3, 1), 1, padding=(1, 0))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch, length = audio.shape
        if length % self.period:
            audio = F.pad(audio[:, None], (0, self.period - length % self.period), mode="reflect")[:, 0]
        x = audio.reshape(batch, 1, -1, self.period)
        maps = []
        for index, conv in enumerate(self.convs):
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            if index > 0:
                maps.append(x)
        x = self.conv_post(x)
        maps.append(x)
        return x.flatten(1), maps


class ResolutionDiscriminator(nn.Module):
    """Magnitude STFT (rectangular window, as the reference Vocos, hop ``n_fft // 4``) seen as a
    ``[B, 1, F, T]`` image, then strided 2D convolutions: ``[B, N] -> ([B, S], maps)``."""

    def __init__(self, n_fft: int, channels: int = 64):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, n_fft // 4
        self.register_buffer("window", torch.ones(n_fft), persistent=False)
        self.convs = nn.ModuleList([
            _sn_conv(1, channels, (7, 5), (2, 2), padding=(3, 2)),
            _sn_conv(channels, channels, (5, 3), (2, 1), padding=(2, 1)),
            _sn_conv(channels, channels, (5, 3), (2, 2), padding=(2, 1)),
            _sn_conv(channels, channels, 3, (2, 1), padding=1),
            _sn_conv(channels, channels, 3, (2, 2), padding=1),
        ])
        self.conv_post = _sn_conv(channels, 1, 3, padding=1)

    def spectrogram(self, audio: torch.Tensor) -> torch.Tensor:
        """``[B, N] -> [B, n_fft // 2 + 1, N // hop + 1]`` magnitude, float32."""
        with torch.autocast(device_type=audio.device.type, enabled=False):
            spec = torch.stft(audio.float(), self.n_fft, hop_length=self.hop_length, window=self.window,
                              center=True, return_complex=True)
            return torch.sqrt(torch.clamp(spec.real ** 2 + spec.imag ** 2, min=1e-12))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.spectrogram(audio)[:, None]
        maps = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            maps.append(x)
        x = self.conv_post(x)
        maps.append(x)
        return x.flatten(1), maps


class _MultiDiscriminator(nn.Module):
    """Runs every sub-discriminator on ``cat([real, fake])`` and splits the results.

    ``forward(real [B, N], fake [B, N]) -> (real_scores, fake_scores, real_maps, fake_maps)``,
    lists with one entry per sub-discriminator (maps: lists of per-layer tensors).
    """

    discriminators: nn.ModuleList

    def forward(self, real: torch.Tensor, fake: torch.Tensor):
        length = min(real.shape[-1], fake.shape[-1])
        both = torch.cat([real[..., :length], fake[..., :length].to(real.dtype)])
        batch = real.shape[0]
        real_scores, fake_scores, real_maps, fake_maps = [], [], [], []
        for disc in self.discriminators:
            scores, maps = disc(both)
            real_scores.append(scores[:batch])
            fake_scores.append(scores[batch:])
            real_maps.append([m[:batch] for m in maps])
            fake_maps.append([m[batch:] for m in maps])
        return real_scores, fake_scores, real_maps, fake_maps


class MultiPeriodDiscriminator(_MultiDiscriminator):
    def __init__(self, periods=(2, 3, 5, 7, 11), channels=(32, 128, 512, 1024, 1024)):
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p, channels) for p in periods)


class MultiResolutionDiscriminator(_MultiDiscriminator):
    def __init__(self, ffts=(2048, 1024, 512), channels: int = 64):
        super().__init__()
        self.discriminators = nn.ModuleList(ResolutionDiscriminator(n, channels) for n in ffts)


class Discriminators(nn.Module):
    """Both discriminator families as one module (one DDP wrapper, one optimiser).

    ``forward(real [B, N], fake [B, N]) -> {"mpd": outputs, "mrd": outputs}`` with the
    ``_MultiDiscriminator`` output tuples.
    """

    def __init__(self, periods, mpd_channels, ffts, mrd_channels):
        super().__init__()
        self.mpd = MultiPeriodDiscriminator(periods, mpd_channels)
        self.mrd = MultiResolutionDiscriminator(ffts, mrd_channels)

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> dict:
        return {"mpd": self.mpd(real, fake), "mrd": self.mrd(real, fake)}

    @classmethod
    def from_config(cls, stage2) -> "Discriminators":
        return cls(stage2.mpd_periods, stage2.mpd_channels, stage2.mrd_ffts, stage2.mrd_channels)
