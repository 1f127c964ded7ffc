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
    changed = [k for k, v in config.to_dict().items() if saved.to_dict().get(k) != v]
    if changed:
        log.info("resuming with changed settings: %s", ", ".join(sorted(changed)))
    return config
