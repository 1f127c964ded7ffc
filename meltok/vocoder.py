"""Token vocoder back end: Vocos ConvNeXt backbone and spectral heads (reference names).

Heads (``VocoderConfig.head``): ``ISTFTHead`` (reference: absolute phase per frame),
``PhaseAdvanceHead`` (phase advance per frame, integrated: DESIGN.md section 10) and
``MelInversionHead`` (no backbone, no weights: the runtime's ``MelInverter`` on the log-mel).
"""
import math

import numpy as np
import torch
from torch import nn

from meltok_runtime.mel_decode import inverter_parameters
from meltok_runtime.mel_inversion import MelInverter

from .config import MEL_INVERSION_HEAD, FrontendConfig, MelTokConfig, VocoderConfig
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


def wrap_phase(phase: torch.Tensor) -> torch.Tensor:
    """``phase`` wrapped to ``[-pi, pi)`` (any shape)."""
    return phase - 2 * math.pi * torch.floor((phase + math.pi) / (2 * math.pi))


class PhaseAdvanceHead(nn.Module):
    """``features [B, T, dim] -> audio [B, (T - 1) * hop]`` with phase that accumulates over frames.

    Per frame and bin ``k`` the linear layer gives the log-magnitude (as ``ISTFTHead``) and a
    deviation ``d = pi * tanh(.)`` of the phase advance from the bin centre's advance
    ``2 pi k hop / n_fft``. Frame ``t``'s phase is ``initial_phase + sum_{s <= t} d_s`` plus the
    centre part ``2 pi k hop (t + 1) / n_fft`` taken modulo ``2 pi`` exactly (integer residues),
    all in float32: ``initial_phase`` is the running phase of the frame before the first, so
    a zero deviation gives bin-centre frequencies, and passing ``final_phase`` of one call as
    the next call's ``initial_phase`` continues the phase across calls (windows, streams).
    """

    def __init__(self, config: VocoderConfig):
        super().__init__()
        self.max_magnitude = config.max_magnitude
        self.bins = config.n_fft // 2 + 1
        self.out = nn.Linear(config.dim, 2 * self.bins)
        self.istft = ConvISTFT(config.n_fft, config.hop_length)
        common = math.gcd(config.hop_length, config.n_fft)
        self.period = config.n_fft // common  # frames after which every centre phase is a multiple of 2 pi
        step = (np.arange(self.bins) * (config.hop_length // common)) % self.period
        self.register_buffer("centre_step", torch.from_numpy(step.astype(np.float32))[:, None], persistent=False)

    def init_from_reference(self, head: ISTFTHead) -> None:
        """Take ``head``'s log-magnitude rows; zero deviation rows (bin-centre frequencies)."""
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.bias.zero_()
            self.out.weight[:self.bins] = head.out.weight[:self.bins]
            self.out.bias[:self.bins] = head.out.bias[:self.bins]

    def spectrum(self, x: torch.Tensor, initial_phase: torch.Tensor | None = None):
        """``features [B, T, dim] -> (log_magnitude, deviation, phase)``, each ``[B, n_fft // 2 + 1, T]``
        float32; ``initial_phase [B, n_fft // 2 + 1]`` defaults to zeros; ``phase`` is not wrapped."""
        log_magnitude, raw = self.out(x).float().transpose(1, 2).chunk(2, dim=1)
        deviation = math.pi * torch.tanh(raw)
        return log_magnitude, deviation, self.integrate(deviation, initial_phase)

    def integrate(self, deviation: torch.Tensor, initial_phase: torch.Tensor | None = None) -> torch.Tensor:
        """Running phase ``[B, F, T]`` from deviations ``[B, F, T]`` (see the class docstring)."""
        frames = torch.cumsum(torch.ones_like(deviation[:1, :1]), dim=-1)  # 1 .. T, exact in float32
        residue = torch.remainder(self.centre_step * torch.remainder(frames, self.period), self.period)
        phase = torch.cumsum(deviation, dim=-1) + residue * (2 * math.pi / self.period)
        return phase if initial_phase is None else phase + initial_phase.float()[..., None]

    def synthesize(self, log_magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """``[B, F, T]`` log-magnitude and phase -> audio ``[B, (T - 1) * hop]``."""
        magnitude = torch.clamp(torch.exp(log_magnitude), max=self.max_magnitude)
        return self.istft(magnitude * torch.cos(phase), magnitude * torch.sin(phase))

    def forward(self, x: torch.Tensor, initial_phase: torch.Tensor | None = None) -> torch.Tensor:
        log_magnitude, _, phase = self.spectrum(x, initial_phase)
        return self.synthesize(log_magnitude, phase)

    def forward_with_state(self, x: torch.Tensor, initial_phase: torch.Tensor | None = None):
        """``(audio [B, (T - 1) * hop], final_phase [B, F])``: the last frame's phase wrapped to ``[-pi, pi)``."""
        log_magnitude, _, phase = self.spectrum(x, initial_phase)
        return self.synthesize(log_magnitude, phase), wrap_phase(phase[..., -1])


class MelInversionHead(nn.Module):
    """``log-mel [B, n_mels, T] -> audio [B, (T - 1) * hop]`` without weights: ``MelInverter`` (numpy, on
    the CPU, inference only: no gradient) with the front end's parameters. Its input is the log-mel
    itself (the model has no backbone); ``inverter`` is what the runtime runs on a bundle's log-mel."""

    def __init__(self, frontend: FrontendConfig):
        super().__init__()
        self.settings = inverter_parameters(
            sample_rate=frontend.sample_rate, n_fft=frontend.n_fft, hop_length=frontend.hop_length,
            n_mels=frontend.n_mels, f_min=frontend.f_min, f_max=frontend.f_max, log_floor=frontend.log_floor)
        self.inverter = MelInverter(**self.settings)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        """From the start of a stream (zero running phase); windows and streams carry the phase through the
        pipeline instead (``meltok_runtime.mel_decode``)."""
        audio, _ = self.inverter(log_mel.detach().float().cpu().numpy())
        return torch.from_numpy(audio).to(log_mel.device)


HEADS = {"istft": ISTFTHead, "phase_advance": PhaseAdvanceHead}


def build_backbone(config: MelTokConfig) -> nn.Module:
    """The Vocos backbone, or (``mel_inversion``) the identity: the head takes the log-mel itself."""
    if config.vocoder.head == MEL_INVERSION_HEAD:
        return nn.Identity()
    return VocosBackbone(config.frontend.n_mels, config.vocoder)


def build_head(config: MelTokConfig) -> nn.Module:
    """The head ``config.vocoder.head`` names."""
    if config.vocoder.head == MEL_INVERSION_HEAD:
        return MelInversionHead(config.frontend)
    return HEADS[config.vocoder.head](config.vocoder)
