"""Bytes in and out, no model: audio files (``audio``), token files (``tokenfile``), raw PCM and
open-ended WAV streams (``pcm``), safe output files (``atomic``), and the file pipeline both command
lines use (``files``: audio file <-> token file through any codec)."""
