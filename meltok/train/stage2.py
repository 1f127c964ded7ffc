"""Stage 2: train the token vocoder: tokens of the frozen stage-1 encoder -> the fine-tuned
``post_quant_conv`` + decoder copy -> Vocos backbone -> ISTFT head -> audio.

Frozen: ``encoder``, ``quant_conv``, ``quantizer`` (codebook). Trained: ``post_quant_conv``,
``decoder``, ``backbone``, ``head``, and (with ``gan``) the discriminators. See
``Stage2Config`` for the losses. Each GAN step: the discriminators step on ``(audio,
audio_hat.detach())``, then the generator steps against the updated discriminators, with one
generator forward per step. Validation logs, besides the losses, the frame-rate buzz and the
level difference of the reconstructions (``meltok.metrics``), so both can be watched as
training goes.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from .. import metrics
from . import distributed
from .discriminators import Discriminators
from ..vocoder import PhaseAdvanceHead
from .losses import (ComplexSTFTLoss, HeadFrameLoss, LevelLoss, MultiResolutionSTFTLoss, PhaseLoss, discriminator_hinge,
                     feature_matching, float32_region, generator_hinge, mel_l1)
from .stage import Stage, adamw, cosine_schedule

log = logging.getLogger(__name__)

FROZEN_PREFIXES = ("encoder.", "quant_conv.", "quantizer.")


class VocoderNet(nn.Module):
    """The stage-2 generator as one module (what DDP wraps).

    ``forward(audio [B, N]) -> (audio_hat [B, L], tokens [B, R, T'], frames)`` with
    ``L = (c * T' - 1) * hop``; ``frames``: for a phase-advance head its ``(log_magnitude, phase)``
    ``[B, n_fft // 2 + 1, c * T']``, else ``None``. Tokens come from the frozen encoder without
    gradients; the log-mel, VQ and head run in float32 even under autocast.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor):
        model = self.model
        with torch.no_grad():
            with float32_region(audio):
                mel = model.log_mel(audio.float())
            hidden = model.encoder(mel[:, None] / model.config.frontend.mel_scale)
            with float32_region(audio):
                tokens = model.quantizer.tokenize(model.quant_conv(hidden.float()))
                codes = model.quantizer.lookup(tokens)
        features = model.backbone(model.decode_features(codes))
        with float32_region(audio):
            if isinstance(model.head, PhaseAdvanceHead):
                log_magnitude, _, phase = model.head.spectrum(features.float())
                return model.head.synthesize(log_magnitude, phase), tokens, (log_magnitude, phase)
            return model.head(features.float()), tokens, None


class Stage2(Stage):
    name = "stage2"

    def __init__(self, model, config, device, monitor, **_):
        super().__init__(model, config, device, monitor)
        cfg = config.stage2
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(not name.startswith(FROZEN_PREFIXES))
        self.net = distributed.wrap(VocoderNet(model).to(device), device)
        self.mrstft = MultiResolutionSTFTLoss(cfg.mrstft_ffts).to(device)
        self.phase = PhaseLoss(cfg.phase_ffts).to(device)
        self.complex_stft = ComplexSTFTLoss(cfg.mrstft_ffts).to(device)
        self.level = LevelLoss().to(device)
        vocoder = model.config.vocoder
        self.head_frames = HeadFrameLoss(vocoder.n_fft, vocoder.hop_length,
                                         max_magnitude=vocoder.max_magnitude).to(device)
        generator = [p for p in model.parameters() if p.requires_grad]
        self.optimizers["generator"] = adamw(generator, cfg.lr, cfg.betas, cfg.weight_decay)
        self.schedulers["generator"] = cosine_schedule(self.optimizers["generator"], cfg.warmup_steps, config.steps)
        self.disc = None
        if cfg.gan:
            discriminators = Discriminators.from_config(cfg).to(device)
            self.modules["discriminators"] = discriminators
            self.disc = distributed.wrap(discriminators, device)
            self.optimizers["discriminator"] = adamw(discriminators.parameters(), cfg.lr, cfg.betas,
                                                     cfg.weight_decay)
            self.schedulers["discriminator"] = cosine_schedule(self.optimizers["discriminator"],
                                                               cfg.warmup_steps, config.steps)
            count = sum(p.numel() for p in discriminators.parameters())
            log.info("stage 2 with GAN: discriminators %.2f M parameters", count / 1e6)
        else:
            log.info("stage 2 without GAN: mel, multi-resolution STFT, phase, complex STFT and level losses")

    def train_mode(self) -> None:
        self.model.eval()  # frozen parts stay in eval mode
        for module in (self.model.post_quant_conv, self.model.decoder, self.model.backbone, self.model.head):
            module.train()
        if "discriminators" in self.modules:
            self.modules["discriminators"].train()

    def _spectral_losses(self, audio_hat: torch.Tensor, audio: torch.Tensor, frames) -> dict[str, torch.Tensor]:
        """The log-mel L1 and the terms of ``Stage2Config`` with a non-zero weight (unweighted);
        ``frames``: the head's ``(log_magnitude, phase)`` or ``None`` (``VocoderNet``)."""
        cfg = self.config.stage2
        with float32_region(audio):
            if frames is not None:
                losses = self.head_frames(*frames, audio)
                if not cfg.head_gd_weight:
                    del losses["head_gd"]
            else:
                losses = {}
            mel_hat, mel = self.model.log_mel(audio_hat.float()), self.model.log_mel(audio.float())
            losses["mel_l1"] = mel_l1(mel_hat, mel)
            if cfg.phase_weight or cfg.ip_weight:
                losses.update(self.phase(audio_hat, audio))
            if cfg.complex_weight:
                losses["complex_stft"] = self.complex_stft(audio_hat, audio)
            if cfg.level_weight:
                losses["level"] = self.level(mel_hat, mel, audio_hat, audio)
        return losses

    def _weighted_sum(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.config.stage2
        weights = {"mel_l1": cfg.mel_weight, "ip": cfg.ip_weight, "gd": cfg.phase_weight,
                   "td": cfg.phase_weight, "complex_stft": cfg.complex_weight, "level": cfg.level_weight,
                   "head_logmag": cfg.head_logmag_weight, "head_if": cfg.head_if_weight,
                   "head_gd": cfg.head_gd_weight}
        return sum(weights[name] * value for name, value in losses.items())

    def _random_gain(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio [B, N]`` times a gain per crop, uniform in ``[gain_db_min, 0]`` dB."""
        low = self.config.stage2.gain_db_min
        if not low:
            return audio
        gain_db = torch.rand(audio.shape[0], 1, device=audio.device) * low
        return audio * torch.pow(10.0, gain_db / 20.0)

    def train_step(self, audio: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        cfg = self.config.stage2
        audio = self._random_gain(audio)
        with self.autocast():
            audio_hat, tokens, frames = self.net(audio)
        real = audio[..., :audio_hat.shape[-1]]
        scalars: dict[str, torch.Tensor] = {}
        gan_active = self.disc is not None and step > cfg.gan_start_step
        if gan_active:
            d_optimizer = self.optimizers["discriminator"]
            with self.autocast():
                out = self.disc(real, audio_hat.detach())
            d_mpd = discriminator_hinge(out["mpd"][0], out["mpd"][1])
            d_mrd = discriminator_hinge(out["mrd"][0], out["mrd"][1])
            d_loss = d_mpd + cfg.mrd_weight * d_mrd
            d_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            d_optimizer.step()
            scalars.update({"train/disc": d_loss.detach(), "train/disc_mpd": d_mpd.detach(),
                            "train/disc_mrd": d_mrd.detach()})
        losses = self._spectral_losses(audio_hat, real, frames)
        g_loss = self._weighted_sum(losses)
        if gan_active:
            with distributed.no_sync(self.disc), self.autocast():
                out = self.disc(real, audio_hat)
            adv_mpd, adv_mrd = generator_hinge(out["mpd"][1]), generator_hinge(out["mrd"][1])
            fm_mpd = feature_matching(out["mpd"][2], out["mpd"][3])
            fm_mrd = feature_matching(out["mrd"][2], out["mrd"][3])
            g_loss = (g_loss + adv_mpd + cfg.mrd_weight * adv_mrd
                      + cfg.fm_weight * (fm_mpd + cfg.mrd_weight * fm_mrd))
            scalars.update({"train/adv_mpd": adv_mpd.detach(), "train/adv_mrd": adv_mrd.detach(),
                            "train/fm_mpd": fm_mpd.detach(), "train/fm_mrd": fm_mrd.detach()})
        elif not cfg.gan:
            mrstft = self.mrstft(audio_hat, real)
            g_loss = g_loss + cfg.mrstft_weight * mrstft
            scalars["train/mrstft"] = mrstft.detach()
        g_optimizer = self.optimizers["generator"]
        g_optimizer.zero_grad(set_to_none=True)
        g_loss.backward()
        g_optimizer.step()
        for scheduler in self.schedulers.values():
            scheduler.step()
        if self.disc is not None:  # drop the discriminator gradients of the generator pass
            self.optimizers["discriminator"].zero_grad(set_to_none=True)
        self.monitor.update(tokens, step)
        scalars.update({f"train/{name}": value.detach() for name, value in losses.items()})
        scalars["train/total"] = g_loss.detach()
        return scalars

    @torch.no_grad()
    def validate(self, audio: torch.Tensor):
        net = distributed.unwrap(self.net)
        with self.autocast():
            audio_hat, tokens, frames = net(audio)
        real = audio[..., :audio_hat.shape[-1]]
        scalars = {f"val/{name}": value for name, value in self._spectral_losses(audio_hat, real, frames).items()}
        scalars["val/mrstft"] = self.mrstft(audio_hat, real)
        scalars.update(artefact_scalars(real, audio_hat))
        return scalars, tokens


def artefact_scalars(audio: torch.Tensor, audio_hat: torch.Tensor) -> dict[str, float]:
    """Mean frame-rate buzz and level difference (dB, ``meltok.metrics``) of a batch ``[B, N]``;
    crops that are silent in either signal are left out of the level."""
    reference = audio.detach().float().cpu().numpy()
    estimate = audio_hat.detach().float().cpu().numpy()
    buzz = [metrics.frame_rate_buzz(r, e) for r, e in zip(reference, estimate)]
    levels = [metrics.level_difference_db(r, e) for r, e in zip(reference, estimate)]
    levels = [value for value in levels if np.isfinite(value)]
    scalars = {"val/buzz_db": float(np.mean(buzz))}
    if levels:
        scalars["val/level_db"] = float(np.mean(levels))
    return scalars
