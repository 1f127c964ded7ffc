"""What a resumed run restores beyond its weights: RNG states, the latest readable checkpoint, and
the configuration to resume with (checked against the checkpoint's)."""
from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch

from meltok_runtime.errors import ModelFileError

from ..errors import TrainConfigError
from .config import ARCHITECTURE_FIELDS, TrainConfig, get_field
from .run_checkpoint import list_checkpoints, load_checkpoint

log = logging.getLogger(__name__)


def capture_rng(device: torch.device) -> dict:
    """Python, numpy (legacy global) and torch RNG states as tensors, numbers and lists."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(mt), gauss],
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def latest_state(out: Path) -> dict | None:
    """The newest readable checkpoint's state of run folder ``out`` (a damaged newest one falls back
    to the one before); None for a new run."""
    for step, folder in reversed(list_checkpoints(out)):
        try:
            state, _ = load_checkpoint(folder)
        except ModelFileError as error:
            log.warning("skipping checkpoint %s: %s", folder.name, error)
            continue
        log.info("resuming from %s (step %d)", folder, step)
        return state
    return None


def resume_config(config: TrainConfig, state: dict, out: Path) -> TrainConfig:
    """The config to resume with: ``config`` checked against the checkpoint's; an ``auto``
    perceptual choice, and the preset of a run started with ``init``, take the values the run
    was started with."""
    saved = TrainConfig.from_dict(state["train_config"])
    if config.stage1.perceptual == "auto":
        config = config.replace(**{"stage1.perceptual": saved.stage1.perceptual})
    if config.init:  # the architecture came from the init model, not from the preset option
        config = config.replace(preset=saved.preset)
    for name in ARCHITECTURE_FIELDS:
        old, new = get_field(saved, name), get_field(config, name)
        if old != new:
            raise TrainConfigError(
                f"{out} holds a checkpoint with {name}={old!r} but this run asks for {new!r}; "
                "use the run's config (omit --config to reuse RUN/config.json) or a new -o/--output folder")
    changed = _changed_fields(saved.to_dict(), config.to_dict())
    if changed:
        log.info("resuming with changed settings: %s", ", ".join(sorted(changed)))
    return config


def _changed_fields(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ (``stage1.lr``, not ``stage1``)."""
    changed = []
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            changed += _changed_fields(before, value, f"{prefix}{key}.")
        elif before != value:
            changed.append(f"{prefix}{key}")
    return changed


def restore_optimizer(optimizer, scheduler, optimizer_state: dict, scheduler_state: dict | None) -> None:
    """Load a checkpoint's optimizer moments and schedule position, keeping this run's settings.

    ``load_state_dict`` would bring back the checkpoint's learning rate, betas and weight decay, so a
    resume with ``--set stage1.lr=...`` would log the change and silently train on the old value.
    Here the freshly built optimizer's hyper-parameters and the scheduler's base rates (from the
    config) stay, and the current rate is the schedule's factor at the restored step times the
    configured rate (the same value as before when nothing changed)."""
    settings = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    base = None if scheduler is None else list(scheduler.base_lrs)
    optimizer.load_state_dict(optimizer_state)
    for group, fresh in zip(optimizer.param_groups, settings):
        group.update(fresh)
    if scheduler is None or scheduler_state is None:
        return
    scheduler.load_state_dict(scheduler_state)
    scheduler.base_lrs = base
    for group, rate, factor in zip(optimizer.param_groups, base, scheduler.lr_lambdas):
        group["initial_lr"], group["lr"] = rate, rate * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports
