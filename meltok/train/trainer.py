"""The training loop shared by both stages: data, resume, logging, validation, time limit,
checkpoints and model export.

Run folder::

    RUN/config.json          the resolved TrainConfig of the latest start
    RUN/model.safetensors    the inference model, exported at every checkpoint
    RUN/checkpoints/step-*/  resumable training checkpoints (``run_checkpoint.py``)
    RUN/logs/scalars.jsonl   scalar log (+ TensorBoard event files when tensorboard is installed)
    RUN/train.log            the text log of rank 0

Starting a trainer on a folder with checkpoints resumes from the latest one (``resume.py``): model,
optimisers, schedulers, step, codebook statistics, RNG states and data position are restored,
so ``n`` steps followed by ``m`` resumed steps equal ``n + m`` straight steps. Fields in
``config.ARCHITECTURE_FIELDS`` must match the checkpoint; others (steps, intervals,
``max_minutes``) may change between runs.

With ``max_minutes`` (or SIGTERM / SIGINT) the loop stops after the current step, writes a
checkpoint and exports the model. Under ``torchrun`` every rank trains; rank 0 validates,
logs and writes.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from meltok_runtime.io.atomic import atomic_output
from meltok_runtime.errors import MeltokError

from ..codec import MelTok
from ..config import PRESETS, MelTokConfig, resolve_config
from ..errors import TrainConfigError, TrainingError
from ..loaders import load_model
from . import distributed
from .codebook import CodebookMonitor, token_stats
from .config import TrainConfig
from .data import CropBatches, fixed_crops, open_reader
from .resume import capture_rng, latest_state, restore_optimizer, restore_rng, resume_config, seed_everything
from .run_checkpoint import save_checkpoint
from .scalar_log import ScalarLog
from .stage1 import Stage1
from .stage2 import Stage2

log = logging.getLogger(__name__)

STAGES = {"stage1": Stage1, "stage2": Stage2}
EvalHook = Callable[[MelTok, np.ndarray, int], dict]


# ----------------------------------------------------------------------------- model init
def load_init_model(source) -> MelTok:
    """A model from a model file, or from a run folder (its latest checkpoint, else its
    ``model.safetensors``): ``loaders.load_model``."""
    model = load_model(MelTok, source)
    log.info("initialised from %s", source)
    return model


def preset_of(model_config: MelTokConfig) -> str | None:
    """The preset name whose configuration equals ``model_config`` exactly, if any."""
    return next((name for name, make in PRESETS.items() if make() == model_config), None)


class Trainer:
    """``Trainer(config, data, out).run()`` trains ``config.stage`` on corpus ``data`` into run
    folder ``out``.

    Args:
        config: the run's TrainConfig.
        data: corpus folder (``meltok data build``); read through ``reader_factory(data, split)``.
        out: run folder; resumed when it holds checkpoints.
        device: ``"cpu"``, ``"cuda"``, ...; default CUDA when available. Under torchrun each rank
            uses ``cuda:LOCAL_RANK``.
        eval_hook: ``hook(model, audio [n, N] float32, sample_rate) -> {name: value}``, called at
            every validation on the fixed validation crops (logged as ``val/NAME``).
        reader_factory: how corpus splits are opened (tests pass stand-ins).
    """

    def __init__(self, config: TrainConfig, data, out, *, device: str | None = None,
                 eval_hook: EvalHook | None = None, reader_factory=open_reader):
        self._started = time.monotonic()
        self.dist, self.device = distributed.setup(device)
        self.out = Path(out)
        self.data = data
        self.eval_hook = eval_hook
        self.reader_factory = reader_factory
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        self._file_log, self._log_level = self._attach_file_log() if self.dist.is_main else (None, None)
        try:
            self._setup(config)
        except BaseException:
            self._detach_file_log()
            raise

    def _setup(self, config: TrainConfig) -> None:
        if self.device.type == "cpu":
            # Guard against the slow x86 path for denormal floats (e.g. Adam second moments of tiny
            # gradients); it changes only values below about 1e-38.
            torch.set_flush_denormal(True)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True

        resume_state = latest_state(self.out)
        if resume_state is not None:
            config = resume_config(config, resume_state, self.out)

        seed_everything(config.seed + self.dist.rank)
        self.model = self._build_model(config, resume_state).to(self.device)
        preset = preset_of(self.model.config)
        if preset is not None and preset != config.preset:
            log.info("the model is preset %r (from --init or the checkpoint); recording that", preset)
            config = config.replace(preset=preset)
        self.monitor = CodebookMonitor(self.model.codebook_size, config.codebook_window, self.device)
        self.stage = STAGES[config.stage](self.model, config, self.device, self.monitor,
                                          vgg_weights=config.vgg_weights)
        self.config = config.replace(**self.stage.resolved)
        self.step = 0

        train_reader = self.reader_factory(self.data, "train")
        self.batches = CropBatches(train_reader, self.config.batch_size, self.config.crop_samples,
                                   self.config.seed, self.dist.rank, self.config.prefetch,
                                   tonal_fraction=self.config.tonal_fraction,
                                   sample_rate=self.model.sample_rate)
        self.val_audio = self._validation_crops() if self.dist.is_main else None
        if resume_state is not None:
            self._restore(resume_state)
        self.scalars = ScalarLog(self.out, enabled=self.dist.is_main)
        if self.dist.is_main:
            with atomic_output(self.out / "config.json") as tmp:
                tmp.write_text(self.config.to_json(), encoding="utf-8")
        self._stop_signal = threading.Event()
        self._signal_number = None
        self._checkpoint_seconds = 0.0

    # ----------------------------------------------------------------- setup
    def _attach_file_log(self) -> tuple[logging.Handler, int]:
        """Log INFO and above of ``meltok.train`` to ``RUN/train.log`` while this trainer lives."""
        handler = logging.FileHandler(self.out / "train.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("meltok.train")
        level = logger.level
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        return handler, level

    def _detach_file_log(self) -> None:
        if self._file_log is not None:
            logger = logging.getLogger("meltok.train")
            logger.removeHandler(self._file_log)
            logger.setLevel(self._log_level)
            self._file_log.close()
            self._file_log = None

    def _build_model(self, config: TrainConfig, resume_state: dict | None) -> MelTok:
        if resume_state is not None:
            model = MelTok(MelTokConfig.from_dict(resume_state["model_config"]))
            if config.init:
                log.info("resuming: --init %s is ignored", config.init)
            return model  # weights are restored in _restore
        if config.init:
            model = load_init_model(config.init)
            if model.config != resolve_config(config.preset) and preset_of(model.config) is None:
                log.warning("the --init model (%s) is not preset %r: training the init model's architecture",
                            model.config.name, config.preset)
        else:
            if config.stage == "stage2":
                log.warning("stage 2 without --init: the frozen encoder and codebook are random")
            model = MelTok.from_config(config.preset)
        if config.stage == "stage2" and config.stage2.head not in (None, model.config.vocoder.head):
            log.info("vocoder head %r -> %r", model.config.vocoder.head, config.stage2.head)
            model = model.with_vocoder_head(config.stage2.head)
        if config.stage == "stage2" and model.mel_inverter is not None:
            raise TrainConfigError(f"{model.config.name} decodes with the mel inversion and has no vocoder weights: stage 2 "
                              "has nothing to train; pass --init a model with a neural vocoder head")
        return model

    def _validation_crops(self) -> np.ndarray | None:
        if self.config.val_crops == 0:
            return None
        try:
            reader = self.reader_factory(self.data, "valid")
        except MeltokError as error:
            log.warning("no validation: %s", error)
            return None
        return fixed_crops(reader, self.config.val_crops, self.config.crop_samples, self.config.seed)

    def _restore(self, state: dict) -> None:
        for name, module in self.stage.modules.items():
            module.load_state_dict(state["modules"][name])
        for name, optimizer in self.stage.optimizers.items():
            restore_optimizer(optimizer, self.stage.schedulers.get(name), state["optimizers"][name],
                              state["schedulers"].get(name))
        self.monitor.load_state_dict(state["codebook"])
        self.step = int(state["step"])
        rank = self.dist.rank
        if rank < len(state["rng"]):
            restore_rng(state["rng"][rank], self.device)
            self.batches.load_state_dict(state["data"][rank])
        else:
            log.warning("rank %d has no saved RNG/data state (the run had %d processes): fresh streams",
                        rank, len(state["rng"]))
            seed_everything(self.config.seed + rank + 7919 * self.step)

    # ----------------------------------------------------------------- checkpoints
    def save(self) -> Path | None:
        """Write a checkpoint of the current step and export the model (rank 0); all ranks call it."""
        started = time.monotonic()
        rng = distributed.gather_objects(capture_rng(self.device))
        data = distributed.gather_objects(self.batches.state_dict())
        folder = None
        if self.dist.is_main:
            state = {
                "step": self.step, "epoch": self.stage.epoch(self.step),
                "train_config": self.config.to_dict(), "model_config": self.model.config.to_dict(),
                "modules": {name: module.state_dict() for name, module in self.stage.modules.items()},
                "optimizers": {name: opt.state_dict() for name, opt in self.stage.optimizers.items()},
                "schedulers": {name: s.state_dict() for name, s in self.stage.schedulers.items()},
                "scaler": None,  # bf16 autocast needs no loss scaling
                "codebook": self.monitor.state_dict(), "rng": rng, "data": data,
            }
            meta = {"epoch": self.stage.epoch(self.step), "stage": self.config.stage,
                    "config": self.config.to_dict(), "model_config": self.model.config.to_dict()}
            folder = save_checkpoint(self.out, state, step=self.step, shard_mib=self.config.shard_mib,
                                     keep=self.config.keep_checkpoints, meta=meta)
            model_id = self.model.save(self.out / "model.safetensors")
            log.info("exported %s (%s)", self.out / "model.safetensors", model_id)
        distributed.barrier()
        self._checkpoint_seconds = time.monotonic() - started
        return folder

    # ----------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean validation scalars on the fixed crops (rank 0; empty without a valid split)."""
        if self.val_audio is None or not self.dist.is_main:
            return {}
        self.stage.eval_mode()
        sums: dict[str, float] = {}
        tokens = []
        count = 0
        for start in range(0, len(self.val_audio), self.config.batch_size):
            batch = torch.from_numpy(self.val_audio[start:start + self.config.batch_size]).to(self.device)
            scalars, batch_tokens = self.stage.validate(batch)
            for tag, value in scalars.items():
                sums[tag] = sums.get(tag, 0.0) + float(value) * len(batch)
            tokens.append(batch_tokens.cpu())
            count += len(batch)
        result = {tag: total / count for tag, total in sums.items()}
        stats = token_stats(torch.cat(tokens), self.model.codebook_size)
        result.update({"val/codebook_usage": stats["usage"], "val/codebook_perplexity": stats["perplexity"]})
        if self.eval_hook is not None:
            try:
                extra = self.eval_hook(self.model, self.val_audio, self.model.sample_rate) or {}
                result.update({f"val/{name}": float(value) for name, value in extra.items()})
            except Exception:  # a metrics bug must not end a capped GPU run
                log.exception("the evaluation hook failed; continuing without its metrics")
        self.stage.train_mode()
        log.info("step %d validation: %s", self.step, _format(result))
        return result

    # ----------------------------------------------------------------- loop
    def _out_of_time(self, step_seconds: float) -> bool:
        if not self.config.max_minutes:
            return False
        elapsed = time.monotonic() - self._started
        return elapsed + step_seconds + self._checkpoint_seconds > 60.0 * self.config.max_minutes

    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def handler(signum, frame):
            log.warning("signal %d: stopping after this step with a checkpoint", signum)
            self._signal_number = signum
            self._stop_signal.set()
            signal.signal(signum, previous.get(signum, signal.SIG_DFL))  # a second signal acts at once

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, handler)
        return previous

    def run(self, max_steps_this_run: int | None = None) -> dict:
        """Train until ``config.steps``, the time limit, a signal, or ``max_steps_this_run`` new
        steps; checkpoint and export at the end. Returns a summary."""
        previous = self._install_signal_handlers()
        try:
            return self._loop(max_steps_this_run)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.batches.close()
            self.scalars.close()
            self._detach_file_log()

    def _loop(self, max_steps_this_run: int | None) -> dict:
        config = self.config
        first_step = self.step
        self.stage.train_mode()
        sums: dict[str, torch.Tensor] = {}
        summed_steps, interval_start = 0, time.monotonic()
        step_seconds, last_val, reason = 0.0, {}, "finished"
        log.info("%s: steps %d -> %d, batch %d x %d samples, %s, %d process(es)", config.stage, self.step,
                 config.steps, config.batch_size, config.crop_samples, self.device, self.dist.world_size)
        while self.step < config.steps:
            tick = time.monotonic()
            audio = self.batches.next().to(self.device, non_blocking=True)
            self.step += 1
            for tag, value in self.stage.train_step(audio, self.step).items():
                sums[tag] = sums.get(tag, 0.0) + value
            summed_steps += 1
            step_seconds = time.monotonic() - tick if step_seconds == 0 else \
                0.9 * step_seconds + 0.1 * (time.monotonic() - tick)
            if self.step % config.log_every == 0 or self.step == config.steps:
                self._log_train(sums, summed_steps, interval_start)
                sums, summed_steps, interval_start = {}, 0, time.monotonic()
            if self.step % config.val_every == 0:
                last_val = self.validate()
                self.scalars.write(self.step, last_val)
            stop = self._stop_signal.is_set() or self._out_of_time(step_seconds)
            if max_steps_this_run is not None and self.step - first_step >= max_steps_this_run:
                stop, reason = True, "step limit of this run"
            stop = distributed.any_process(stop, self.device)
            if stop and reason == "finished":
                reason = "signal" if self._stop_signal.is_set() else f"time limit ({config.max_minutes} min)"
            if stop or self.step % config.checkpoint_every == 0 or self.step == config.steps:
                if sums:
                    self._log_train(sums, summed_steps, interval_start)
                    sums, summed_steps, interval_start = {}, 0, time.monotonic()
                if self.step == config.steps and self.step % config.val_every:
                    last_val = self.validate()
                    self.scalars.write(self.step, last_val)
                self.save()
            if stop:
                break
        if self.step == first_step and first_step >= config.steps:
            log.info("nothing to do: the run is at step %d of %d", self.step, config.steps)
            if self.dist.is_main and not (self.out / "model.safetensors").exists():
                self.model.save(self.out / "model.safetensors")
        log.info("stopped at step %d of %d (%s)", self.step, config.steps, reason)
        return {"step": self.step, "stopped": reason, "validation": last_val,
                "seconds": time.monotonic() - self._started,
                "signal": self._signal_number if reason == "signal" else None}

    def _log_train(self, sums: dict, steps: int, since: float) -> None:
        values = {tag: float(total) / steps for tag, total in sums.items()}  # host sync here only
        bad = [tag for tag, value in values.items() if not np.isfinite(value)]
        if bad:
            raise TrainingError(f"non-finite {', '.join(bad)} before step {self.step}; the run diverged. "
                                f"Resume from the last checkpoint with a lower learning rate")
        if "codebook/revived" in values:
            values["codebook/revived"] *= steps  # a count, not an average
        seconds = (time.monotonic() - since) / max(steps, 1)
        values.update(self.stage.learning_rates())
        values.update({f"codebook/{k}": v for k, v in self.monitor.window_stats().items()})
        values.update({"time/step_seconds": seconds,
                       "time/crops_per_second": self.config.batch_size * self.dist.world_size / seconds,
                       "epoch": float(self.stage.epoch(self.step))})
        self.scalars.write(self.step, values)
        log.info("step %d of %d (%s): %s", self.step, self.config.steps, self._pace(seconds), _format(values))

    def _pace(self, step_seconds: float) -> str:
        """Steps per second and the time to the last step (or to the time limit, if that comes first)."""
        left = (self.config.steps - self.step) * step_seconds
        limit = ""
        if self.config.max_minutes:
            until_limit = 60.0 * self.config.max_minutes - (time.monotonic() - self._started)
            if until_limit < left:
                left, limit = max(until_limit, 0.0), " (time limit)"
        return f"{1.0 / max(step_seconds, 1e-9):.3g} steps/s, ETA {_duration(left)}{limit}"


def _duration(seconds: float) -> str:
    """``3725`` -> ``"1h02m"``; ``95`` -> ``"1m35s"``; days beyond 48 hours."""
    seconds = int(round(seconds))
    if seconds >= 48 * 3600:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _format(values: dict) -> str:
    return ", ".join(f"{tag.split('/', 1)[-1]} {value:.4g}" for tag, value in sorted(values.items()))


def train(config: TrainConfig, data, out, **kwargs) -> dict:
    """Build a Trainer and run it; tear the process group down at the end."""
    try:
        return Trainer(config, data, out, **kwargs).run()
    finally:
        distributed.teardown()
