"""Stage 1: train the 2D tokenizer (encoder, quant_conv, VQ codebook, post_quant_conv, decoder)
to reconstruct log-mel images, with dead-code revival; or, with ``stage1.train = "decoder"``,
only post_quant_conv and decoder on the frozen tokens.

Loss (DESIGN.md section 3): ``mel_weight * L1(recon, logmel / 5) + vq_weight * vq_loss +
perceptual_weight * perceptual(recon, logmel / 5)``, where ``recon`` is the decoder output in
the ``/ 5`` domain, unclamped (as the reference ``tokenizer.decode``). The vocoder (backbone,
head) is not touched.
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import functional as F

from . import distributed
from .codebook import CodebookMonitor, reset_adam_rows, revive_dead_codes
from .losses import LevelLoss, build_perceptual, float32_region
from .stage import Stage, adamw, step_decay_schedule

log = logging.getLogger(__name__)


class TokenizerNet(nn.Module):
    """The stage-1 forward pass as one module (what DDP wraps).

    ``forward(audio [B, N]) -> (recon [B, M, c*T'], target [B, M, c*T'], vq_loss, tokens [B, R, T'],
    latents [B, D, R, T'])``; ``recon`` and ``target`` are log-mel / ``mel_scale``. The log-mel,
    ``quant_conv`` and the VQ run in float32 even under autocast.
    """

    def __init__(self, model, *, frozen_encoder: bool = False):
        super().__init__()
        self.model = model
        self.frozen_encoder = frozen_encoder

    def forward(self, audio: torch.Tensor):
        model = self.model
        scale = model.config.frontend.mel_scale
        with float32_region(audio):
            target = model.log_mel(audio.float()) / scale
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_encoder):
            hidden = model.encoder(target[:, None])
            with float32_region(audio):
                latents = model.quant_conv(hidden.float())
                codes, vq_loss, tokens = model.quantizer(latents)
        recon = model.decoder(model.post_quant_conv(codes))[:, 0]
        return recon, target[..., :recon.shape[-1]], vq_loss, tokens, latents


class Stage1(Stage):
    name = "stage1"

    def __init__(self, model, config, device, monitor: CodebookMonitor, *, vgg_weights=None):
        super().__init__(model, config, device, monitor)
        cfg = config.stage1
        self.frozen = (model.backbone, model.head)  # not part of stage 1
        if cfg.train == "decoder":
            self.frozen += (model.encoder, model.quant_conv, model.quantizer)
        for module in self.frozen:
            module.requires_grad_(False)
        self.net = distributed.wrap(TokenizerNet(model, frozen_encoder=cfg.train == "decoder").to(device), device)
        self.perceptual, resolved = build_perceptual(cfg.perceptual, vgg_weights or config.vgg_weights)
        if self.perceptual is not None:
            self.perceptual.to(device)
        self.resolved = {"stage1.perceptual": resolved}
        self.level = LevelLoss()
        self._check_revival_horizon()
        log.info("stage 1: perceptual loss %s (weight %g)", resolved, cfg.perceptual_weight)
        trained = [p for p in model.parameters() if p.requires_grad]
        self.optimizers["tokenizer"] = adamw(trained, cfg.lr, cfg.betas, cfg.weight_decay)
        self.schedulers["tokenizer"] = step_decay_schedule(self.optimizers["tokenizer"], cfg.lr_decay,
                                                           cfg.steps_per_epoch)

    def _check_revival_horizon(self) -> None:
        """Warn when a revival interval holds too few tokens to tell dead codes from rare ones."""
        cfg, model = self.config.stage1, self.model
        if not self._revives():
            return
        columns = (self.config.crop_samples // model.hop_length + 1) // model.config.tokenizer.compression
        per_step = self.config.batch_size * distributed.info().world_size * model.token_rows * max(columns, 1)
        expected = cfg.revive_every * per_step / model.codebook_size
        if expected < 5:
            needed = -(-5 * model.codebook_size // per_step)
            log.warning("stage1.revive_every=%d: %d tokens per step give each of %d codes only %.1f expected "
                        "uses per interval even if all were used evenly, so live codes get revived too; "
                        "use revive_every >= %d", cfg.revive_every, per_step, model.codebook_size, expected,
                        needed)

    def _revives(self) -> bool:
        """Whether dead codes are revived: never while the codebook is frozen."""
        return bool(self.config.stage1.revive_every) and self.config.stage1.train == "tokenizer"

    def train_mode(self) -> None:
        self.model.train()
        for module in self.frozen:
            module.eval()

    def epoch(self, step: int) -> int:
        return step // self.config.stage1.steps_per_epoch

    def _losses(self, recon, target, vq_loss) -> dict[str, torch.Tensor]:
        cfg = self.config.stage1
        losses = {"mel": F.l1_loss(recon.float(), target.float()), "vq": vq_loss.float()}
        if self.perceptual is not None:
            losses["perceptual"] = self.perceptual(recon.float(), target.float())
        if cfg.level_weight:
            scale = self.model.config.frontend.mel_scale
            losses["level"] = self.level.blocks(recon.float() * scale, target.float() * scale)
        losses["total"] = (cfg.mel_weight * losses["mel"] + cfg.vq_weight * losses["vq"]
                           + cfg.perceptual_weight * losses.get("perceptual", 0.0)
                           + cfg.level_weight * losses.get("level", 0.0))
        return losses

    def train_step(self, audio: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        optimizer = self.optimizers["tokenizer"]
        with self.autocast():
            recon, target, vq_loss, tokens, latents = self.net(audio)
        losses = self._losses(recon, target, vq_loss)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        self.schedulers["tokenizer"].step()
        self.monitor.update(tokens, step)
        scalars = {f"train/{name}": value.detach() for name, value in losses.items()}
        scalars["train/mel_l1"] = scalars.pop("train/mel") * self.model.config.frontend.mel_scale
        revive_every = self.config.stage1.revive_every
        if self._revives() and step % revive_every == 0:
            scalars["codebook/revived"] = torch.tensor(float(self._revive(step, latents)))
        return scalars

    def _revive(self, step: int, latents: torch.Tensor) -> int:
        cfg = self.config.stage1
        dead = self.monitor.dead_codes(step, cfg.revive_every)
        if dead.numel():
            flat = latents.detach().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
            weight = self.model.quantizer.embedding.weight
            revive_dead_codes(weight.data, dead, flat, noise=cfg.revive_noise)
            reset_adam_rows(self.optimizers["tokenizer"], weight, dead)
            self.monitor.mark_used(dead, step)
        log.info("step %d: revived %d dead codes of %d", step, dead.numel(), self.monitor.codebook_size)
        return int(dead.numel())

    @torch.no_grad()
    def validate(self, audio: torch.Tensor):
        net = distributed.unwrap(self.net)
        with self.autocast():
            recon, target, vq_loss, tokens, _ = net(audio)
        scale = self.model.config.frontend.mel_scale
        floor = float(torch.log(torch.tensor(self.model.config.frontend.log_floor)))
        mel_hat = torch.clamp(recon.float() * scale, min=floor)  # what decode_features returns
        mel = target.float() * scale
        scalars = {"val/mel_l1": F.l1_loss(mel_hat, mel), "val/vq": vq_loss.float()}
        error = (mel_hat - mel).abs().mean(dim=(0, 2))  # per mel band [M]
        for name, part in zip(("low", "mid", "high"), error.chunk(3)):  # band health: thirds of the mel rows
            scalars[f"val/mel_l1_{name}"] = part.mean()
        scalars["val/level"] = self.level.blocks(mel_hat, mel)
        if self.perceptual is not None:
            scalars["val/perceptual"] = self.perceptual(recon.float(), target.float())
        return scalars, tokens
