"""MelTok in PyTorch: 2D single-codebook mel tokenizer and token vocoder for 44.1 kHz audio."""
from meltok_runtime.errors import MeltokError

from .codec import MelTok
from .config import MelTokConfig, PRESETS

__all__ = ["MelTok", "MelTokConfig", "MeltokError", "PRESETS"]
