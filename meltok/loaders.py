"""One place that builds codecs from what users name: used by every command, training and evaluation.

``load_model(MelTok, source)`` gives a torch ``MelTok`` from

- nothing (``None``): the model shipped with the package;
- a preset name (``"tiny"``, ``"edge"``, ``"paper"``): random weights, for export and benchmarks;
- a model file (``.safetensors`` from ``meltok convert`` or training);
- a training run folder: its latest checkpoint, else its ``model.safetensors``;
- one checkpoint folder of a run (``RUN/checkpoints/step-000004400``): that checkpoint;
- a pair ``(stage1, stage2)`` of the reference implementation's checkpoint files.

``open_codec(MelTok, source)`` also takes an export bundle folder (a runtime ``Codec``, closed on
exit). The model class is a parameter (as in ``modelfile`` and ``official``) so that ``MelTok.load``
can use this module without an import cycle.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from meltok_runtime.errors import BundleError, ModelFileError
from meltok_runtime.manifest import MANIFEST_NAME

from meltok_runtime.codec import Codec

from .config import PRESETS, MelTokConfig, resolve_config
from .default_model import default_model_path
from .devices import torch_device
from .modelfile import load_model_file, model_id_of, weights_hash
from .official import load_official
from .train.run_checkpoint import CHECKPOINT_INDEX, latest_checkpoint, load_checkpoint

log = logging.getLogger("meltok")


def load_model(cls, source=None, *, device="cpu", allow_pickle: bool = False):
    """A ``cls`` (``MelTok``) from ``source`` (see the module docstring), in eval mode on ``device``
    (checked first: ``DeviceError`` names the devices available)."""
    device = torch_device(device)
    if source is None:
        return load_model_file(cls, default_model_path(), device=device)
    if isinstance(source, tuple):
        stage1, stage2 = source
        return load_official(cls, stage1, stage2, allow_pickle=allow_pickle).to(device)
    if isinstance(source, str) and source in PRESETS:
        return cls(resolve_config(source)).to(device)
    path = Path(source)
    if path.is_dir():
        return _load_run(cls, path).to(device)
    if not path.is_file():
        raise ModelFileError(f"model {str(path)!r} does not exist; expected a .safetensors model file, a training "
                             f"run folder, a bundle folder or a preset ({', '.join(PRESETS)})")
    return load_model_file(cls, path, device=device)


def _load_run(cls, folder: Path):
    """A checkpoint folder's model; else the latest checkpoint of a run folder, else its ``model.safetensors``."""
    checkpoint = folder if (folder / CHECKPOINT_INDEX).is_file() else latest_checkpoint(folder)
    if checkpoint is not None:
        state, _ = load_checkpoint(checkpoint)
        model = cls(MelTokConfig.from_dict(state["model_config"]))
        model.load_state_dict(state["modules"]["model"])
        model.model_id = model_id_of(model.config, weights_hash(model.state_dict()))
        log.info("loaded checkpoint %s", checkpoint)
        return model.eval()
    path = folder / "model.safetensors"
    if (folder / MANIFEST_NAME).is_file():
        raise ModelFileError(f"{str(folder)!r} is an export bundle; a torch model needs a model file, a run folder "
                             "or a preset (meltok-rt runs bundles)")
    if not path.is_file():
        raise BundleError(f"{str(folder)!r} is neither an export bundle (it has no manifest.json) nor a training "
                          "run folder (no checkpoints, no model.safetensors) nor one of its checkpoints (no "
                          f"{CHECKPOINT_INDEX}); expected a bundle folder, a run or checkpoint folder or a model file")
    return load_model_file(cls, path)


@contextlib.contextmanager
def open_codec(cls, source=None, *, device="cpu", backend: str = "auto", threads: int | None = None):
    """Yield a codec for ``source``: a runtime ``Codec`` for a bundle folder (closed on exit; ``backend``
    and ``threads`` say how it runs), else ``load_model(cls, source, device=device)``."""
    path = None if source is None or isinstance(source, tuple) else Path(source)
    if path is not None and path.is_dir() and (path / MANIFEST_NAME).is_file():
        with Codec.open(path, backend=backend, threads=threads) as codec:
            yield codec
        return
    yield load_model(cls, source, device=device)
