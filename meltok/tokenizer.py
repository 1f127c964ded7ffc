"""2D tokenizer trunk: Haar patching and the Cosmos-style convolutional encoder/decoder.

The mel "image" is ``[B, 1, n_mels, T]`` (rows = mel bins, lowest first; columns = frames).
Module and parameter names follow the reference implementation so official
state dicts load without renaming.
"""
import torch
from torch import nn
from torch.nn import functional as F

from .config import TokenizerConfig

# 2x2 Haar analysis kernels, rows = frequency offset, columns = time offset.
# Channel order [LL, LH, HL, HH]: first letter the time axis, second the frequency axis.
_HAAR_SIGNS = torch.tensor([
    [[1.0, 1.0], [1.0, 1.0]],
    [[1.0, 1.0], [-1.0, -1.0]],
    [[1.0, -1.0], [1.0, -1.0]],
    [[1.0, -1.0], [-1.0, 1.0]],
])[:, None]


def nonlinearity(x: torch.Tensor) -> torch.Tensor:
    """The reference tokenizer uses tanh (not swish) between norms and convolutions."""
    return torch.tanh(x)


class ColumnGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per time column: ``[B, C, H, W]``, normalised over each group's
    channels and all ``H`` rows separately for every column ``w`` (the time-local variant).

    Same parameters as ``nn.GroupNorm``; exported as InstanceNormalization over ``[B * W, C, H]``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        columns = x.permute(0, 3, 1, 2).reshape(b * w, c, h)
        normed = F.group_norm(columns, self.num_groups, self.weight, self.bias, self.eps)
        return normed.reshape(b, w, c, h).permute(0, 2, 3, 1)


def group_norm(channels: int, num_groups: int, time_local: bool = False) -> nn.GroupNorm:
    """The tokenizer's GroupNorm (eps 1e-6); per time column for the time-local variant."""
    return (ColumnGroupNorm if time_local else nn.GroupNorm)(num_groups=num_groups, num_channels=channels,
                                                               eps=1e-6, affine=True)


class HaarPatcher(nn.Module):
    """One level of 2D Haar analysis: ``[B, 1, H, W] -> [B, 4, ceil(H/2), ceil(W/2)]``.

    Odd sizes are reflect-padded by one at the end; coefficients are scaled by 1/2.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("kernel", _HAAR_SIGNS * 0.25, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 1, 0, 1), mode="reflect")
        return F.conv2d(x, self.kernel, stride=2)


class HaarUnpatcher(nn.Module):
    """Inverse of ``HaarPatcher``: ``[B, 4, H, W] -> [B, 1, 2H, 2W]``."""

    def __init__(self):
        super().__init__()
        self.register_buffer("kernel", _HAAR_SIGNS.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.kernel, stride=2)


class ResnetBlock(nn.Module):
    """norm-tanh-conv twice with a (1x1 when widths differ) shortcut; ``[B, Cin, H, W] -> [B, Cout, H, W]``."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int, time_local: bool = False):
        super().__init__()
        self.norm1 = group_norm(in_channels, num_groups, time_local)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, num_groups, time_local)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nonlinearity(self.norm1(x)))
        h = self.conv2(nonlinearity(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the ``H * W`` positions, scaled by ``C**-0.5``: global, or with
    ``radius`` (time-local variant) only to keys at most ``radius`` columns from the query."""

    def __init__(self, channels: int, num_groups: int, radius: int | None = None):
        super().__init__()
        self.norm = group_norm(channels, num_groups, time_local=radius is not None)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        self.scale = channels ** -0.5
        self.radius = radius

    def mask_logits(self, logits: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``[B, HW, HW]`` logits (positions ``row * W + column``) with keys beyond ``radius`` columns
        of the query set to -inf; unchanged for global attention."""
        if self.radius is None:
            return logits
        columns = torch.arange(w, device=logits.device)
        near = (columns[:, None] - columns[None, :]).abs() <= self.radius  # [W, W]
        return logits.masked_fill(~near.repeat(h, h), float("-inf"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)
        q = self.q(normed).flatten(2).transpose(1, 2)  # [B, HW, C]
        k = self.k(normed).flatten(2)  # [B, C, HW]
        v = self.v(normed).flatten(2)  # [B, C, HW]
        weights = torch.softmax(self.mask_logits(torch.bmm(q, k) * self.scale, h, w), dim=2)  # [B, HWq, HWk]
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Zero-pad right/bottom by one, then a 3x3 stride-2 convolution: ``H -> floor(H/2)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 in both axes, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _resnet(in_channels: int, out_channels: int, config: TokenizerConfig) -> ResnetBlock:
    return ResnetBlock(in_channels, out_channels, config.num_groups, config.time_local)


def _attention(channels: int, config: TokenizerConfig) -> AttnBlock:
    return AttnBlock(channels, config.num_groups, config.attention_radius if config.time_local else None)


class _Level(nn.Module):
    """ResNet blocks, optional attention after each, optional resampling; names as in the reference."""

    def __init__(self, blocks: list, attn: list, resample: nn.Module | None, resample_name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)
        if resample is not None:
            self.add_module(resample_name, resample)
        self.resample_name = resample_name if resample is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, block in enumerate(self.block):
            x = block(x)
            if len(self.attn) > 0:
                x = self.attn[index](x)
        if self.resample_name is not None:
            x = getattr(self, self.resample_name)(x)
        return x


class _Middle(nn.Module):
    def __init__(self, channels: int, config: TokenizerConfig):
        super().__init__()
        self.block_1 = _resnet(channels, channels, config)
        self.attn_1 = _attention(channels, config)
        self.block_2 = _resnet(channels, channels, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder2d(nn.Module):
    """``[B, 1, n_mels, T] -> [B, z_channels, n_mels / c, T']`` with ``c = config.compression``
    and ``T' = floor(floor(ceil(T / 2) / 2) / 2)`` for the 8x configurations."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.patcher = HaarPatcher()
        self.conv_in = nn.Conv2d(4, config.channels, 3, padding=1)
        widths_in = (1,) + config.channels_mult
        self.down = nn.ModuleList()
        for level, mult in enumerate(config.channels_mult):
            width_in, width = config.channels * widths_in[level], config.channels * mult
            blocks, attn = [], []
            for index in range(config.encoder_blocks):
                blocks.append(_resnet(width_in if index == 0 else width, width, config))
                if config.level_has_attention(level):
                    attn.append(_attention(width, config))
            last = level == config.num_levels - 1
            self.down.append(_Level(blocks, attn, None if last else Downsample(width), "downsample"))
        self.mid = _Middle(width, config)
        self.norm_out = group_norm(width, config.num_groups, config.time_local)
        self.conv_out = nn.Conv2d(width, config.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(self.patcher(x))
        for level in self.down:
            x = level(x)
        x = self.mid(x)
        return self.conv_out(nonlinearity(self.norm_out(x)))


class Decoder2d(nn.Module):
    """``[B, z_channels, R, T'] -> [B, 1, R * c, T' * c]`` (``c = config.compression``)."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        width = config.channels * config.channels_mult[-1]
        self.conv_in = nn.Conv2d(config.z_channels, width, 3, padding=1)
        self.mid = _Middle(width, config)
        levels = []
        for level in reversed(range(config.num_levels)):
            width_out = config.channels * config.channels_mult[level]
            blocks, attn = [], []
            for _ in range(config.decoder_blocks):
                blocks.append(_resnet(width, width_out, config))
                width = width_out
                if config.level_has_attention(level):
                    attn.append(_attention(width, config))
            levels.insert(0, _Level(blocks, attn, Upsample(width) if level != 0 else None, "upsample"))
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(width, config.num_groups, config.time_local)
        self.conv_out = nn.Conv2d(width, 4, 3, padding=1)
        self.unpatcher = HaarUnpatcher()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.unpatcher(self.conv_out(nonlinearity(self.norm_out(x))))
