"""MelTok in PyTorch: 2D single-codebook mel tokenizer and token vocoder for 44.1 kHz audio.

``from meltok import MelTok``. The torch modules load on first use, so that ``meltok --help`` and
``meltok --version`` work on the runtime-only install (which has no torch).
"""
from meltok_runtime import __version__
from meltok_runtime.errors import MeltokError
from meltok_runtime.lazy import lazy_attributes

_LAZY = {"MelTok": "codec", "MelTokConfig": "config", "PRESETS": "config"}

__all__ = ["__version__", "MelTok", "MelTokConfig", "MeltokError", "PRESETS"]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
