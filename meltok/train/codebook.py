"""Codebook health: usage and perplexity over a window of steps, and dead-code revival.

Revival method (stage 1): every ``revive_every`` steps, a code that no token of the last
``revive_every`` steps used (on any process) is *dead*. Each dead code is replaced by a
randomly chosen encoder output (``quant_conv`` output vector) of the current batch plus
Gaussian noise with standard deviation ``noise * std(outputs)``, and its AdamW moments are
reset, so it sits where the data is and wins some assignments from the next step on. Revived
codes are counted as used at the revival step (a grace period of one interval). Under DDP
the counts are summed over processes and rank 0 draws the replacements, which are broadcast,
so every process holds the same codebook.
"""
from __future__ import annotations

import logging
import math

import torch

from . import distributed

log = logging.getLogger(__name__)


class CodebookMonitor:
    """Counts code use. ``update(tokens [B, R, T], step)`` after every step.

    ``window_stats()``: usage (fraction of codes used) and perplexity (``exp`` of the entropy of
    the code histogram; at most ``codebook_size``) over the current tumbling window of
    ``window`` steps; ``dead_codes(step, horizon)``: codes unused for ``horizon`` steps.
    """

    def __init__(self, codebook_size: int, window: int = 1000, device: torch.device | str = "cpu"):
        self.codebook_size, self.window, self.device = codebook_size, window, torch.device(device)
        # Kept on the tokens' device: updating needs no host synchronisation.
        self.counts = torch.zeros(codebook_size, dtype=torch.float64, device=self.device)
        self.last_used = torch.zeros(codebook_size, dtype=torch.int64, device=self.device)
        self.window_start = 0

    def update(self, tokens: torch.Tensor, step: int) -> None:
        """Add one step's tokens (summed over processes under DDP)."""
        counts = torch.bincount(tokens.detach().reshape(-1).to(self.device), minlength=self.codebook_size)
        counts = distributed.all_reduce_sum(counts)
        if step - self.window_start > self.window:
            self.counts.zero_()
            self.window_start = step - 1  # the window holds steps window_start + 1 ... step
        self.counts += counts.double()
        self.last_used[counts > 0] = step

    def window_stats(self) -> dict[str, float]:
        return histogram_stats(self.counts)

    def dead_codes(self, step: int, horizon: int) -> torch.Tensor:
        """Indices (int64) of codes whose last use is more than ``horizon`` steps before ``step``
        (a code used at ``step - horizon + 1`` is alive)."""
        return torch.nonzero(self.last_used <= step - horizon).flatten().cpu()

    def mark_used(self, codes: torch.Tensor, step: int) -> None:
        self.last_used[codes.to(self.device)] = step

    def state_dict(self) -> dict:
        return {"counts": self.counts.cpu().clone(), "last_used": self.last_used.cpu().clone(),
                "window_start": int(self.window_start), "window": int(self.window)}

    def load_state_dict(self, state: dict) -> None:
        if state["counts"].shape != self.counts.shape:
            raise ValueError(f"codebook monitor state is for {state['counts'].shape[0]} codes, "
                             f"this codebook has {self.codebook_size}")
        self.counts = state["counts"].double().to(self.device).clone()
        self.last_used = state["last_used"].long().to(self.device).clone()
        self.window_start = int(state["window_start"])


def histogram_stats(counts: torch.Tensor) -> dict[str, float]:
    """``{"usage": fraction of codes with count > 0, "perplexity": exp(entropy)}`` of ``counts [K]``."""
    counts = counts.detach().double().cpu()
    total = float(counts.sum())
    if total <= 0:
        return {"usage": 0.0, "perplexity": 0.0}
    p = counts[counts > 0] / total
    return {"usage": float((counts > 0).double().mean()), "perplexity": math.exp(float(-(p * p.log()).sum()))}


def token_stats(tokens: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Usage and perplexity of a token tensor (any shape)."""
    return histogram_stats(torch.bincount(tokens.reshape(-1).cpu(), minlength=codebook_size))


@torch.no_grad()
def revive_dead_codes(embedding: torch.Tensor, dead: torch.Tensor, latents: torch.Tensor, *,
                      noise: float = 0.01, generator: torch.Generator | None = None) -> torch.Tensor:
    """Set rows ``dead`` of ``embedding [K, D]`` (in place) to random rows of ``latents [M, D]``
    plus Gaussian noise of ``noise * latents.std()``. Returns the new rows ``[len(dead), D]``.

    Rows are drawn without replacement when ``M >= len(dead)``. Under DDP, rank 0's draw is
    broadcast so every process writes the same rows.
    """
    if dead.numel() == 0:
        return embedding.new_zeros((0, embedding.shape[1]))
    latents = latents.detach().float().reshape(-1, embedding.shape[1])
    count = dead.numel()
    if latents.shape[0] >= count:
        pick = torch.randperm(latents.shape[0], generator=generator)[:count]
    else:
        pick = torch.randint(latents.shape[0], (count,), generator=generator)
    rows = latents[pick.to(latents.device)]
    scale = noise * float(latents.std()) if latents.numel() > 1 else noise
    rows = rows + scale * torch.randn(rows.shape, generator=generator).to(rows.device)
    rows = distributed.broadcast(rows.to(embedding.dtype).contiguous())
    embedding[dead.to(embedding.device)] = rows
    return rows


@torch.no_grad()
def reset_adam_rows(optimizer: torch.optim.Optimizer, parameter: torch.Tensor, rows: torch.Tensor) -> None:
    """Zero the Adam(W) moments of ``parameter[rows]`` so stale momentum does not drag revived codes."""
    state = optimizer.state.get(parameter)
    if not state:
        return
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][rows.to(state[key].device)] = 0
