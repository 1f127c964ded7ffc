"""MelTok in PyTorch: 2D single-codebook mel tokenizer and token vocoder for 44.1 kHz audio.

``from meltok import MelTok``. The torch modules load on first use, so that ``meltok --help`` and
``meltok --version`` work on the runtime-only install (which has no torch).
"""
from meltok_runtime import __version__
from meltok_runtime.errors import MeltokError

_LAZY = {"MelTok": "codec", "MelTokConfig": "config", "PRESETS": "config"}

__all__ = ["__version__", "MelTok", "MelTokConfig", "MeltokError", "PRESETS"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
