"""What the two training stages share: the interface the trainer drives, mixed precision,
optimiser and schedule construction.

A stage owns the modules it trains, their optimisers and schedulers and its losses; the
trainer owns the loop, data, validation, logging and checkpoints. ``train_step`` returns
*detached tensors* (not floats) so that a CUDA step needs no host synchronisation; the
trainer averages and reads them at log time.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from ..codec import MelTok
from .codebook import CodebookMonitor
from .config import TrainConfig


class Stage:
    """Base class. Subclasses set ``modules``, ``optimizers``, ``schedulers`` in ``__init__``
    and implement ``train_step`` and ``validate``.

    ``resolved``: config overrides fixed while building (e.g. the perceptual loss actually used),
    which the trainer records in the run's config.
    """

    name = "stage"

    def __init__(self, model: MelTok, config: TrainConfig, device: torch.device, monitor: CodebookMonitor):
        self.model, self.config, self.device, self.monitor = model, config, device, monitor
        self.modules: dict[str, nn.Module] = {"model": model}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self.resolved: dict = {}

    # ----------------------------------------------------------------- precision
    @property
    def use_bf16(self) -> bool:
        return self.config.bf16 and self.device.type == "cuda"

    def autocast(self):
        """bf16 autocast on CUDA when ``config.bf16``; nothing on the CPU."""
        if self.use_bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ----------------------------------------------------------------- interface
    def train_step(self, audio: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """One optimisation step on ``audio [B, N]``; returns detached scalar tensors by tag."""
        raise NotImplementedError

    @torch.no_grad()
    def validate(self, audio: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``(scalars, tokens [B, R, T'])`` on a validation batch, without training."""
        raise NotImplementedError

    def learning_rates(self) -> dict[str, float]:
        return {f"lr/{name}": opt.param_groups[0]["lr"] for name, opt in self.optimizers.items()}

    def epoch(self, step: int) -> int:
        return 0

    def train_mode(self) -> None:
        """Put the trained modules in training mode (frozen ones stay in eval mode)."""

    def eval_mode(self) -> None:
        for module in self.modules.values():
            module.eval()


def adamw(parameters, lr: float, betas, weight_decay: float) -> torch.optim.AdamW:
    params = [p for p in parameters if p.requires_grad]
    kwargs = {"fused": True} if params and params[0].is_cuda else {}
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, **kwargs)


def step_decay_schedule(optimizer, decay: float, steps_per_epoch: int):
    """``lr * decay ** epoch`` with ``epoch = steps // steps_per_epoch`` (stepped every step)."""
    def factor(step: int) -> float:
        return decay ** (step // steps_per_epoch)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def cosine_schedule(optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up to ``lr`` over ``warmup_steps``, then a half cosine to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
