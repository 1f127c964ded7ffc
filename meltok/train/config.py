"""Training configuration: frozen dataclasses with validation, JSON round trip and overrides.

A run is described by one ``TrainConfig``: what to train (``stage``, ``preset``), how long and
how often (steps, intervals, ``max_minutes``), and the per-stage recipe (``stage1``,
``stage2``). The defaults are the reference hyper-parameters (DESIGN.md section 3).

An **epoch** is a fixed number of optimiser steps, ``stage1.steps_per_epoch`` (default 1000),
not a pass over the corpus: training draws random crops, so a pass has no natural end. The
stage-1 learning rate is multiplied by ``stage1.lr_decay`` (0.999) after every epoch.
``batch_size`` is per process: with ``torchrun`` on G GPUs a step sees ``G * batch_size``
crops.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..config import MEL_INVERSION_HEAD, PRESETS, VOCODER_HEADS
from ..errors import TrainConfigError

TRAIN_CONFIG_VERSION = 1
STAGES = ("stage1", "stage2")
PERCEPTUAL_CHOICES = ("auto", "vgg19", "mel-gradient", "none")
STAGE1_PARTS = ("tokenizer", "decoder")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise TrainConfigError(message)


@dataclass(frozen=True)
class Stage1Config:
    """Stage 1: tokenizer (encoder, quant_conv, VQ codebook, post_quant_conv, decoder).

    Loss: ``mel_weight * L1(recon, logmel / 5) + vq_weight * vq_loss + perceptual_weight *
    perceptual(recon, logmel / 5) + level_weight * level``; with ``mel_weight = 5`` the first term is
    the L1 of the log-mel in natural-log units. ``level`` (weight 0 in the reference): the block term
    of ``losses.LevelLoss`` on the log-mels (mel power pooled over 8 bands x 16 frames, L1 of its
    log), against the log-domain L1's quiet peaks (a -6 dBFS tone's band came back 1.3-2 nats low;
    ``benchmarks/mel_decoder.py``). ``perceptual``: ``"vgg19"`` (needs ``TrainConfig.vgg_weights``),
    ``"mel-gradient"`` (the weight-free substitute, see ``losses.MelGradientLoss``), ``"none"``, or
    ``"auto"`` (vgg19 when weights are given, else mel-gradient); the trainer records the resolved
    choice in the run's config.

    Dead-code revival: every ``revive_every`` steps, codes unused during those steps are set
    to random encoder outputs of the current batch plus Gaussian noise of ``revive_noise``
    times the outputs' standard deviation (``codebook.revive_dead_codes``); 0 disables it.
    An interval must hold several tokens per code (``revive_every * batch * 144`` for 24320-sample
    crops, at least ~5x ``codebook_size``), else codes that are merely rare get revived too.
    """

    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01  # torch AdamW default; the reference does not set it
    lr_decay: float = 0.999  # multiplied in after every epoch
    steps_per_epoch: int = 1000
    mel_weight: float = 5.0
    vq_weight: float = 0.25
    perceptual: str = "auto"
    perceptual_weight: float = 0.5
    level_weight: float = 0.0
    revive_every: int = 1000
    revive_noise: float = 0.01
    train: str = "tokenizer"

    def __post_init__(self):
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        _check(self.lr > 0, f"stage1.lr must be positive, got {self.lr}")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
               f"stage1.betas must be two numbers in [0, 1), got {self.betas}")
        _check(self.weight_decay >= 0, f"stage1.weight_decay must be >= 0, got {self.weight_decay}")
        _check(0 < self.lr_decay <= 1, f"stage1.lr_decay must lie in (0, 1], got {self.lr_decay}")
        _check(self.steps_per_epoch >= 1, f"stage1.steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        _check(min(self.mel_weight, self.vq_weight, self.perceptual_weight, self.level_weight) >= 0,
               "stage1 loss weights must be >= 0")
        _check(self.perceptual in PERCEPTUAL_CHOICES,
               f"stage1.perceptual must be one of {list(PERCEPTUAL_CHOICES)}, got {self.perceptual!r}")
        _check(self.train in STAGE1_PARTS,
               f"stage1.train must be one of {list(STAGE1_PARTS)}, got {self.train!r}")
        _check(self.revive_every >= 0, f"stage1.revive_every must be >= 0 (0 = off), got {self.revive_every}")
        _check(self.revive_noise >= 0, f"stage1.revive_noise must be >= 0, got {self.revive_noise}")


@dataclass(frozen=True)
class Stage2Config:
    """Stage 2: token vocoder (post_quant_conv + decoder copy, Vocos backbone, ISTFT head).

    The encoder, quant_conv and codebook are frozen. With ``gan`` (reference):
    generator loss ``mel_weight * mel_L1 + adv_mpd + mrd_weight * adv_mrd + fm_weight *
    (fm_mpd + mrd_weight * fm_mrd)`` (hinge losses, each averaged over its sub-discriminators,
    as in Vocos) and discriminator loss ``hinge_mpd + mrd_weight * hinge_mrd``. The GAN terms
    start at ``gan_start_step`` (mel-only pre-training before, Vocos' ``pretrain_mel_steps``).
    Without ``gan`` (cheap CPU mode): ``mel_weight * mel_L1 + mrstft_weight * MR-STFT``, and no
    discriminators are built. ``mrstft_weight`` is used only in that mode.

    Added to the reference in both modes (weight 0 turns a term off; see ``losses``):
    ``phase_weight * (GD + TD) + ip_weight * IP``, APNet's anti-wrapped phase losses at
    ``phase_ffts`` (against the frame-rate buzz of the ISTFT head, which lives in the phase: the
    model's magnitudes with the input's phase do not buzz, and the input's magnitudes with
    either the input's phase advance along time or along frequency do not either, whatever the
    absolute phase; so IP, which a mel vocoder cannot know, is off by default); ``complex_weight *`` the multi-resolution
    complex STFT loss at ``mrstft_ffts``; ``level_weight *`` the energy-preserving level loss
    (against the level loss of a log-domain L1). ``gain_db_min``: each training crop is scaled
    by a random gain uniform in ``[gain_db_min, 0]`` dB after the corpus' peak normalisation to
    -1..-6 dBFS, so quieter material is in the training distribution (0 = off).

    ``head``: the vocoder head to train (``VocoderConfig.head``); ``None`` keeps the head of the
    ``--init`` model or preset, ``"phase_advance"`` converts a reference head
    (``MelTok.with_vocoder_head``). A phase-advance head adds, on its own frames
    (``losses.HeadFrameLoss``), ``head_logmag_weight *`` log-magnitude L1 ``+ head_if_weight *``
    anti-wrapped instantaneous-frequency error ``+ head_gd_weight *`` group-delay error (at the
    defaults the instantaneous-frequency gradient on the head's deviations is about as large as
    the log-mel L1's at ``mel_weight`` 45; at 40 the mel term dominated and the error grew).

    Learning rate: linear warm-up over ``warmup_steps``, then a cosine from ``lr`` to 0 at
    ``TrainConfig.steps`` (for both optimisers).
    """

    lr: float = 5e-4
    betas: tuple[float, float] = (0.8, 0.9)
    weight_decay: float = 0.01
    warmup_steps: int = 0
    mel_weight: float = 45.0
    gan: bool = True
    gan_start_step: int = 0
    mrd_weight: float = 5.0
    fm_weight: float = 1.0
    mrstft_weight: float = 1.0
    mpd_periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    mpd_channels: tuple[int, ...] = (32, 128, 512, 1024, 1024)
    mrd_ffts: tuple[int, ...] = (2048, 1024, 512)
    mrd_channels: int = 64
    mrstft_ffts: tuple[int, ...] = (2048, 1024, 512)
    phase_weight: float = 40.0
    ip_weight: float = 0.0
    phase_ffts: tuple[int, ...] = (1024,)
    complex_weight: float = 1.0
    level_weight: float = 1.0
    gain_db_min: float = -24.0
    head: str | None = None
    head_logmag_weight: float = 10.0
    head_if_weight: float = 200.0
    head_gd_weight: float = 0.0

    def __post_init__(self):
        for name in ("betas", "mpd_periods", "mpd_channels", "mrd_ffts", "mrstft_ffts", "phase_ffts"):
            cast = float if name == "betas" else int
            object.__setattr__(self, name, tuple(cast(v) for v in getattr(self, name)))
        _check(self.lr > 0, f"stage2.lr must be positive, got {self.lr}")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
               f"stage2.betas must be two numbers in [0, 1), got {self.betas}")
        _check(self.weight_decay >= 0, f"stage2.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.warmup_steps >= 0 and self.gan_start_step >= 0, "stage2 step counts must be >= 0")
        _check(min(self.mel_weight, self.mrd_weight, self.fm_weight, self.mrstft_weight, self.phase_weight,
                   self.ip_weight, self.complex_weight, self.level_weight, self.head_logmag_weight,
                   self.head_if_weight, self.head_gd_weight) >= 0, "stage2 loss weights must be >= 0")
        _check(self.head is None or self.head in VOCODER_HEADS,
               f"stage2.head must be one of {list(VOCODER_HEADS)} (or none: keep the model's), got {self.head!r}")
        _check(self.head != MEL_INVERSION_HEAD, f"stage2.head={MEL_INVERSION_HEAD} has no weights to train; build "
               f"that model from a stage-1 run with `meltok model mel-inversion RUN -o MODEL.safetensors`")
        _check(self.gain_db_min <= 0, f"stage2.gain_db_min must be <= 0 dB (0 = off), got {self.gain_db_min}")
        _check(len(self.mpd_periods) >= 1 and all(p >= 1 for p in self.mpd_periods),
               f"stage2.mpd_periods must be periods >= 1, got {self.mpd_periods}")
        _check(len(self.mpd_channels) >= 1 and all(c >= 1 for c in self.mpd_channels),
               f"stage2.mpd_channels must be positive widths, got {self.mpd_channels}")
        _check(self.mrd_channels >= 1, f"stage2.mrd_channels must be >= 1, got {self.mrd_channels}")
        for name in ("mrd_ffts", "mrstft_ffts", "phase_ffts"):
            ffts = getattr(self, name)
            _check(len(ffts) >= 1 and all(n >= 16 and n % 4 == 0 for n in ffts),
                   f"stage2.{name} must be FFT sizes >= 16 divisible by 4, got {ffts}")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. See the module docstring for epochs and batch size.

    ``max_minutes`` (0 = no limit) stops the run cleanly with a checkpoint before that many
    minutes of training have passed (for capped GPU sessions; keep a margin for start-up).
    ``shard_mib`` limits each checkpoint file (0 = one file). ``bf16`` applies on CUDA only.
    ``codebook_window``: steps over which codebook usage and perplexity are counted.
    ``val_crops``: fixed crops of the valid split used by every validation.
    ``prefetch``: batches read ahead by a background thread (0 = read in the training loop).
    ``init``: stage-1 run folder or model file that stage 2 (or a continued stage 1) starts from.
    ``tonal_fraction``: share of training crops replaced by synthetic tonal signals (harmonic and pure
    tones, some gliding, over a low noise floor: ``meltok.train.tonal``); 0 = the corpus only. Validation
    crops are always the corpus's.
    """

    stage: str = "stage1"
    preset: str = "paper"
    steps: int = 200_000
    batch_size: int = 64
    crop_samples: int = 24320
    seed: int = 0
    bf16: bool = True
    max_minutes: float = 0.0
    log_every: int = 50
    val_every: int = 2000
    checkpoint_every: int = 2000
    keep_checkpoints: int = 2
    shard_mib: float = 15.0
    val_crops: int = 64
    codebook_window: int = 1000
    prefetch: int = 2
    vgg_weights: str | None = None
    init: str | None = None
    tonal_fraction: float = 0.0
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)

    def __post_init__(self):
        _check(self.stage in STAGES, f"stage must be one of {list(STAGES)}, got {self.stage!r}")
        _check(self.preset in PRESETS, f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        _check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.crop_samples >= 4096,
               f"crop_samples must be >= 4096 (24320 = 96 frames is the reference), got {self.crop_samples}")
        _check(self.max_minutes >= 0, f"max_minutes must be >= 0 (0 = no limit), got {self.max_minutes}")
        _check(0 <= self.tonal_fraction <= 1, f"tonal_fraction must lie in [0, 1], got {self.tonal_fraction}")
        for name in ("log_every", "val_every", "checkpoint_every", "keep_checkpoints", "codebook_window"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _check(self.shard_mib == 0 or self.shard_mib >= 1,
               f"shard_mib must be 0 (one file) or at least 1 MiB, got {self.shard_mib}")
        _check(self.val_crops >= 0 and self.prefetch >= 0, "val_crops and prefetch must be >= 0")
        if self.stage == "stage1" and self.stage1.perceptual == "vgg19":
            _check(bool(self.vgg_weights), "stage1.perceptual is 'vgg19' but no vgg_weights file is given; "
                   "pass --vgg-weights PATH or choose 'mel-gradient'")

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return {"train_config_version": TRAIN_CONFIG_VERSION, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Build from a (possibly partial) dict; missing fields keep their defaults."""
        if not isinstance(data, dict):
            raise TrainConfigError(f"a training config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("train_config_version", TRAIN_CONFIG_VERSION)
        if not isinstance(version, int) or version > TRAIN_CONFIG_VERSION:
            raise TrainConfigError(f"training config version {version!r} is newer than this meltok "
                                   f"supports ({TRAIN_CONFIG_VERSION}); upgrade meltok")
        sections = {}
        for name, section_cls in (("stage1", Stage1Config), ("stage2", Stage2Config)):
            part = data.pop(name, {}) or {}
            if not isinstance(part, dict):
                raise TrainConfigError(f"{name} must be a JSON object, got {type(part).__name__}")
            _reject_unknown(section_cls, part, prefix=f"{name}.")
            sections[name] = section_cls(**part)
        _reject_unknown(cls, data)
        try:
            return cls(**data, **sections)
        except TypeError as error:
            raise TrainConfigError(f"invalid training config ({error})")

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise TrainConfigError(f"training config is not valid JSON ({error})")
        return cls.from_dict(data)

    @classmethod
    def load(cls, path) -> "TrainConfig":
        """Read a JSON file (a partial one is fine: missing fields keep their defaults)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise TrainConfigError(f"cannot read training config {str(path)!r} ({error.strerror})")
        return cls.from_json(text)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with fields changed; dotted names reach into sections (``"stage2.gan"``)."""
        return apply_overrides(self, changes)


def _reject_unknown(cls, data: dict, prefix: str = "") -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TrainConfigError(f"unknown training config field(s) {[prefix + u for u in unknown]}; "
                               f"known: {sorted(prefix + k for k in known)}")


def _field_type(cls, name: str):
    hints = typing.get_type_hints(cls)
    return hints[name]


def _coerce(value, annotation, name: str):
    """Convert ``value`` (from JSON or a CLI string) to the field's type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(value, str) and annotation is not str and not (type(None) in args and str in args):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            if value.lower() in ("none", "null"):
                value = None
    if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))):
        return None
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise TrainConfigError(f"{name} expects a list, got {value!r}")
        return tuple(value)
    if annotation is bool or bool in args:
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if not isinstance(value, bool):
            raise TrainConfigError(f"{name} expects true or false, got {value!r}")
        return value
    for kind in (int, float, str):
        if annotation is kind or kind in args:
            if kind is int and isinstance(value, float) and value.is_integer():
                value = int(value)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise TrainConfigError(f"{name} expects {kind.__name__}, got {value!r}")
            return value
    return value


def apply_overrides(config: TrainConfig, overrides: dict) -> TrainConfig:
    """Return ``config`` with single fields replaced; keys are field names or ``section.field``.

    Values may be typed or strings as typed on a command line (``"3e-4"``, ``"false"``,
    ``"2,3,5"``). Unknown names raise TrainConfigError.
    """
    top: dict = {}
    sections: dict[str, dict] = {"stage1": {}, "stage2": {}}
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        if section:
            if section not in sections:
                raise TrainConfigError(f"unknown training config section {section!r} in {key!r}; "
                                       "use stage1.NAME or stage2.NAME")
            cls = Stage1Config if section == "stage1" else Stage2Config
            _reject_unknown(cls, {name: None}, prefix=f"{section}.")
            sections[section][name] = _coerce(value, _field_type(cls, name), key)
        else:
            _reject_unknown(TrainConfig, {name: None})
            if name in sections:
                raise TrainConfigError(f"override single fields of {name!r}, e.g. {name}.lr=1e-4")
            top[name] = _coerce(value, _field_type(TrainConfig, name), key)
    stage1 = dataclasses.replace(config.stage1, **sections["stage1"])
    stage2 = dataclasses.replace(config.stage2, **sections["stage2"])
    return dataclasses.replace(config, stage1=stage1, stage2=stage2, **top)


def parse_override(text: str) -> tuple[str, str]:
    """``"stage1.lr=1e-4" -> ("stage1.lr", "1e-4")``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise TrainConfigError(f"override {text!r} is not of the form NAME=VALUE (e.g. stage1.lr=1e-4)")
    return key.strip(), value.strip()


# Fields that fix what a run's checkpoint holds: a resumed run must keep them.
# Defaults on the CPU, used where neither the options nor a --config file name these fields: the
# reference recipe (``paper``, batch 64) outgrows a typical machine's memory at its first step on a
# CPU; ``edge`` at batch 8 trains there (the shipped model was trained so).
CPU_DEFAULTS = {"preset": "edge", "batch_size": 8}

ARCHITECTURE_FIELDS = ("stage", "preset", "stage1.perceptual", "stage2.gan", "stage2.head", "stage2.mpd_periods",
                       "stage2.mpd_channels", "stage2.mrd_ffts", "stage2.mrd_channels")


def get_field(config: TrainConfig, dotted: str):
    section, _, name = dotted.rpartition(".")
    return getattr(getattr(config, section) if section else config, name)
