"""Typed errors of the torch package (model config, devices, training, corpus).

The errors shared with the runtime (audio, tokens, model files, bundles) and those of torch-free
modules (``metrics``, loadable on its own) live in ``meltok_runtime.errors``; every class here is
a ``MeltokError`` too, so the CLIs print one line.
"""
from meltok_runtime.errors import MeltokError


class ConfigError(MeltokError, ValueError):
    """A model configuration (``MelTokConfig``) with an invalid value, or an unknown preset."""


class TrainConfigError(MeltokError, ValueError):
    """A training configuration that is invalid, unreadable or does not fit the run."""


class TrainingError(MeltokError, RuntimeError):
    """Training cannot go on (diverged loss, incompatible resume)."""


class DeviceError(MeltokError, ValueError):
    """A torch device that does not exist on this machine (``--device cuda`` without CUDA, a typo)."""


class CorpusError(MeltokError, ValueError):
    """A corpus that cannot be built or read (bad arguments, foreign folder, bad manifest)."""


class AnchorError(MeltokError, RuntimeError):
    """A classic codec's tool failed on a clip during ``meltok eval --anchors``; the message has its command."""
