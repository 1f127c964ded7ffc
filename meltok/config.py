"""Model configuration: frozen dataclasses, JSON round trip, and named presets.

The architecture is fully described by a ``MelTokConfig``; model files store it as JSON.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from meltok_runtime.errors import ModelFileError

from .errors import ConfigError

CONFIG_VERSION = 1


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class FrontendConfig:
    """Audio and log-mel front end (torchaudio ``MelSpectrogram`` defaults, HTK, power 1)."""

    sample_rate: int = 44100
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 96
    f_min: float = 0.0
    f_max: float = 22050.0
    log_floor: float = 1e-7
    mel_scale: float = 5.0  # the tokenizer sees log-mel / mel_scale

    def __post_init__(self):
        _check(self.sample_rate > 0, f"sample_rate must be positive, got {self.sample_rate}")
        _check(self.n_fft > 0 and self.n_fft % 2 == 0, f"n_fft must be a positive even number, got {self.n_fft}")
        _check(0 < self.hop_length <= self.n_fft, f"hop_length must lie in (0, n_fft], got {self.hop_length}")
        _check(0 <= self.f_min < self.f_max <= self.sample_rate / 2,
               f"need 0 <= f_min < f_max <= sample_rate/2, got {self.f_min}, {self.f_max}")
        _check(self.n_mels > 0, f"n_mels must be positive, got {self.n_mels}")


@dataclass(frozen=True)
class TokenizerConfig:
    """2D tokenizer (Cosmos discrete image tokenizer on the mel image) and its codebook.

    Level ``i`` of the encoder works at nominal resolution ``resolution / patch_size / 2**i``;
    attention is placed at the levels whose nominal resolution is in ``attn_resolutions``.

    ``time_local`` (default off: the reference architecture) builds the time-local variant: GroupNorm
    statistics per time column (over the group's channels and all rows) and attention restricted to
    keys within ``attention_radius`` columns (of the attention's level) of the query, so that every
    token depends on a bounded span of audio (``meltok.receptive_field``) and streamed, windowed and
    padded-batch results equal whole-input results.
    """

    channels: int = 128
    channels_mult: tuple[int, ...] = (2, 4, 4)
    encoder_blocks: int = 2
    decoder_blocks: int = 3
    attn_resolutions: tuple[int, ...] = (6, 12)
    resolution: int = 96
    patch_size: int = 2
    z_channels: int = 256
    embedding_dim: int = 64
    codebook_size: int = 8192
    num_groups: int = 32
    time_local: bool = False
    attention_radius: int = 2

    def __post_init__(self):
        object.__setattr__(self, "channels_mult", tuple(int(m) for m in self.channels_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        _check(self.patch_size == 2, f"only Haar patching with patch_size 2 is supported, got {self.patch_size}")
        _check(len(self.channels_mult) >= 1, "channels_mult needs at least one level")
        _check(self.resolution % self.compression == 0,
               f"resolution {self.resolution} is not divisible by the compression {self.compression}")
        widths = [self.channels] + [self.channels * m for m in self.channels_mult] + [self.z_channels]
        for width in widths:
            _check(width % self.num_groups == 0,
                   f"every width must be divisible by num_groups={self.num_groups}; got {width}")
        _check(self.encoder_blocks >= 1 and self.decoder_blocks >= 1, "need at least one ResNet block per level")
        _check(self.codebook_size >= 2 and self.embedding_dim >= 1, "codebook needs >= 2 codes of dim >= 1")
        _check(isinstance(self.time_local, bool), f"time_local must be true or false, got {self.time_local!r}")
        _check(int(self.attention_radius) == self.attention_radius and self.attention_radius >= 0,
               f"attention_radius must be a non-negative integer, got {self.attention_radius}")

    @property
    def num_levels(self) -> int:
        return len(self.channels_mult)

    @property
    def compression(self) -> int:
        """Total down-sampling factor in each axis (patching times stride-2 stages)."""
        return self.patch_size * 2 ** (self.num_levels - 1)

    def level_resolution(self, level: int) -> int:
        """Nominal resolution (counted from ``resolution``) at which level ``level`` works."""
        return self.resolution // self.patch_size // 2 ** level

    def level_has_attention(self, level: int) -> bool:
        return self.level_resolution(level) in self.attn_resolutions


REFERENCE_HEAD = "istft"
MEL_INVERSION_HEAD = "mel_inversion"
VOCODER_HEADS = (REFERENCE_HEAD, "phase_advance", MEL_INVERSION_HEAD)


@dataclass(frozen=True)
class VocoderConfig:
    """Vocos ConvNeXt backbone and a spectral head (``meltok.vocoder``).

    ``head``: ``"istft"`` (reference: absolute phase per frame) or ``"phase_advance"`` (each bin's
    phase advance as a bounded deviation from its centre frequency, integrated over frames, so
    steady tones keep their pitch) or ``"mel_inversion"`` (no neural vocoder: no backbone, no head
    weights; the decoder's log-mel becomes audio by ``meltok_runtime.mel_inversion.MelInverter`` with
    the front end's parameters, inference only; the sizes here are then unused). The reference head is
    left out of the JSON, so configs and model ids of files written before the field existed do not change.
    """

    dim: int = 512
    intermediate_dim: int = 1536
    num_layers: int = 8
    n_fft: int = 1024
    hop_length: int = 256
    max_magnitude: float = 100.0
    head: str = REFERENCE_HEAD

    def __post_init__(self):
        _check(self.dim > 0 and self.intermediate_dim > 0 and self.num_layers >= 1,
               f"vocoder sizes must be positive, got {self.dim}, {self.intermediate_dim}, {self.num_layers}")
        _check(self.head in VOCODER_HEADS, f"vocoder head must be one of {list(VOCODER_HEADS)}, got {self.head!r}")


@dataclass(frozen=True)
class MelTokConfig:
    """Everything needed to build a MelTok model."""

    name: str = "meltok-paper"
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)

    def __post_init__(self):
        _check(self.tokenizer.resolution == self.frontend.n_mels,
               f"tokenizer resolution {self.tokenizer.resolution} must equal n_mels {self.frontend.n_mels}")
        _check(self.vocoder.hop_length == self.frontend.hop_length,
               "vocoder and front end must share hop_length")

    @property
    def token_rows(self) -> int:
        return self.frontend.n_mels // self.tokenizer.compression

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if data["vocoder"]["head"] == REFERENCE_HEAD:  # as written before heads were configurable
            del data["vocoder"]["head"]
        return {"config_version": CONFIG_VERSION, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "MelTokConfig":
        data = dict(data)
        version = data.pop("config_version", CONFIG_VERSION)
        if version > CONFIG_VERSION:
            raise ModelFileError(
                f"model config version {version} is newer than this meltok supports ({CONFIG_VERSION}); "
                "upgrade meltok")
        try:
            return cls(
                name=data["name"],
                frontend=FrontendConfig(**data["frontend"]),
                tokenizer=TokenizerConfig(**data["tokenizer"]),
                vocoder=VocoderConfig(**data["vocoder"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"invalid model config ({error}); the model file is corrupt or not a meltok model")

    @classmethod
    def from_json(cls, text: str) -> "MelTokConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ModelFileError(f"model config is not valid JSON ({error})")
        return cls.from_dict(data)


def paper() -> MelTokConfig:
    """The paper / official configuration (102.9 M parameters)."""
    return MelTokConfig()


def edge() -> MelTokConfig:
    """Edge preset: same token layout as the paper (12 rows, 8192 codes), about 20x fewer FLOPs."""
    return MelTokConfig(
        name="meltok-edge",
        tokenizer=TokenizerConfig(channels=32, channels_mult=(1, 2, 4), encoder_blocks=1, decoder_blocks=1,
                                  attn_resolutions=(12,), z_channels=128, embedding_dim=32),
        vocoder=VocoderConfig(dim=256, intermediate_dim=768, num_layers=4),
    )


def tiny() -> MelTokConfig:
    """A very small preset for tests and smoke runs (random or briefly trained weights)."""
    return MelTokConfig(
        name="meltok-tiny",
        tokenizer=TokenizerConfig(channels=32, channels_mult=(1, 1, 2), encoder_blocks=1, decoder_blocks=1,
                                  attn_resolutions=(12,), z_channels=32, embedding_dim=8, codebook_size=1024),
        vocoder=VocoderConfig(dim=64, intermediate_dim=192, num_layers=2),
    )


def local_variant(config: MelTokConfig) -> MelTokConfig:
    """``config`` as its time-local variant (name suffixed ``-local``): exact streaming and windowing."""
    return dataclasses.replace(config, name=f"{config.name}-local",
                               tokenizer=dataclasses.replace(config.tokenizer, time_local=True))


def head_variant(config: MelTokConfig, head: str) -> MelTokConfig:
    """``config`` with vocoder head ``head``; when the head changes, the name gets ``-HEAD`` (``-phase-advance``,
    ``-mel-inversion``)."""
    if head == config.vocoder.head:
        return config
    return dataclasses.replace(config, name=f"{config.name}-{head.replace('_', '-')}",
                               vocoder=dataclasses.replace(config.vocoder, head=head))


def edge_local() -> MelTokConfig:
    """The edge preset, time-local."""
    return local_variant(edge())


def tiny_local() -> MelTokConfig:
    """The tiny preset, time-local."""
    return local_variant(tiny())


PRESETS = {"paper": paper, "edge": edge, "tiny": tiny, "edge-local": edge_local, "tiny-local": tiny_local}


def resolve_config(config_or_preset) -> MelTokConfig:
    """Accept a MelTokConfig, a preset name, or a config dict."""
    if isinstance(config_or_preset, MelTokConfig):
        return config_or_preset
    if isinstance(config_or_preset, str):
        if config_or_preset not in PRESETS:
            raise ConfigError(f"unknown preset {config_or_preset!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[config_or_preset]()
    if isinstance(config_or_preset, dict):
        return MelTokConfig.from_dict(config_or_preset)
    raise ConfigError(f"expected a MelTokConfig, preset name or dict, got {type(config_or_preset).__name__}")
