"""``meltok train stage1|stage2``: a thin layer over ``meltok.train.trainer``.

The configuration is, in order of precedence: the options given here (``--steps`` etc. and
``--set NAME=VALUE`` for any field, e.g. ``--set stage1.lr=2e-4 --set stage2.gan=false``),
then ``--config FILE.json``, then the run folder's own ``config.json`` when resuming, then the
defaults (the reference recipe; on the CPU ``config.CPU_DEFAULTS`` for a new run).

Multi-GPU: ``torchrun --nproc-per-node 8 -m meltok.train.cli stage1 --data C -o RUN ...``.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from meltok_runtime.cli.shared import CommandGroup, user_errors

from .config import CPU_DEFAULTS, TrainConfig, apply_overrides, parse_override

log = logging.getLogger("meltok.train")


def _options(command):
    decorators = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False),
                     help="TrainConfig JSON (partial files are fine); default: RUN/config.json, else defaults."),
        click.option("--data", required=True, type=click.Path(file_okay=False),
                     help="Corpus folder (from `meltok data build`)."),
        click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False),
                     help="Run folder; resumed when it holds checkpoints."),
        click.option("--preset", default=None,
                     help="Model preset: paper, edge, tiny, or the time-local edge-local, tiny-local."),
        click.option("--steps", type=int, default=None, help="Total steps of the run."),
        click.option("--batch-size", type=int, default=None, help="Crops per step and process."),
        click.option("--max-minutes", type=float, default=None,
                     help="Stop with a checkpoint before this many minutes (e.g. 9 for a 10-minute slot)."),
        click.option("--init", default=None, type=click.Path(),
                     help="Start from a model file or a stage-1 run folder (stage 2 needs one)."),
        click.option("--vgg-weights", default=None, type=click.Path(dir_okay=False),
                     help="torchvision VGG19 state dict for the stage-1 perceptual loss "
                          "(without it: the mel-gradient substitute)."),
        click.option("--device", default=None, help="cpu, cuda or cuda:N; default: CUDA when available."),
        click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
                     help="Override one config field, e.g. stage2.gan=false (repeatable)."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def build_config(stage: str, config_path, out, *, preset=None, steps=None, batch_size=None, max_minutes=None,
                 init=None, vgg_weights=None, overrides=(), device_type: str = "cuda") -> TrainConfig:
    """The TrainConfig the CLI options describe (see the module docstring for precedence).

    ``device_type`` ``"cpu"``: fields of ``CPU_DEFAULTS`` that no option, ``--config`` file or
    resumed run sets take their CPU values (with a warning saying so).
    """
    run_config = Path(out) / "config.json"
    if config_path:
        config = TrainConfig.load(config_path)
        given = set(json.loads(Path(config_path).read_text(encoding="utf-8")))
    elif run_config.is_file():
        config = TrainConfig.load(run_config)
        given = set(CPU_DEFAULTS)  # a resumed run keeps its own
        log.info("using %s", run_config)
    else:
        config, given = TrainConfig(), set()
    changes = {"stage": stage}
    for name, value in (("preset", preset), ("steps", steps), ("batch_size", batch_size),
                        ("max_minutes", max_minutes), ("init", init), ("vgg_weights", vgg_weights)):
        if value is not None:
            changes[name] = value
    changes.update(dict(parse_override(text) for text in overrides))
    given |= set(changes) | ({"preset"} if changes.get("init") or config.init else set())
    machine = {name: value for name, value in CPU_DEFAULTS.items() if name not in given and device_type == "cpu"}
    if machine:
        log.warning("training on the CPU: %s (CPU defaults; the reference recipe, preset paper at batch 64, "
                    "needs a GPU; set --preset / --batch-size to choose)",
                    ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in machine.items()))
    return apply_overrides(config, {**machine, **changes})


def _run(stage: str, config_path, data, out, preset, steps, batch_size, max_minutes, init, vgg_weights,
         device, overrides):
    from ..devices import torch_device
    from .trainer import train

    if logging.getLogger("meltok.train").getEffectiveLevel() > logging.INFO:
        logging.getLogger("meltok.train").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    config = build_config(stage, config_path, out, preset=preset, steps=steps, batch_size=batch_size,
                          max_minutes=max_minutes, init=init, vgg_weights=vgg_weights, overrides=overrides,
                          device_type=torch_device(device).type)
    summary = train(config, data, out, device=device)
    click.echo(f"{out}: step {summary['step']} of {config.steps} ({summary['stopped']}); "
               f"model {Path(out) / 'model.safetensors'}")
    if summary.get("signal"):  # stopped by Ctrl-C or SIGTERM: saved, but not finished
        sys.exit(128 + summary["signal"])


@click.group(cls=CommandGroup)
def train():
    """Train MelTok: stage 1 (tokenizer) then stage 2 (token vocoder)."""


@train.command()
@_options
@user_errors
def stage1(config_path, data, out, preset, steps, batch_size, max_minutes, init, vgg_weights, device, overrides):
    """Train the 2D tokenizer (encoder, VQ codebook, decoder) on log-mel reconstruction."""
    _run("stage1", config_path, data, out, preset, steps, batch_size, max_minutes, init, vgg_weights, device,
         overrides)


@train.command()
@_options
@user_errors
def stage2(config_path, data, out, preset, steps, batch_size, max_minutes, init, vgg_weights, device, overrides):
    """Train the token vocoder on the frozen stage-1 tokenizer (give --init STAGE1_RUN)."""
    _run("stage2", config_path, data, out, preset, steps, batch_size, max_minutes, init, vgg_weights, device,
         overrides)


if __name__ == "__main__":  # torchrun -m meltok.train.cli stage1 ...
    train()
