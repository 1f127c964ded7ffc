"""What an evaluation reads: the clips under a folder, their categories, and the codec."""
from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

import numpy as np

from meltok_runtime.errors import AudioInputError
from meltok_runtime.pipeline import AudioCodec

from ..metrics import SAMPLE_RATE

log = logging.getLogger("meltok")

OTHER = "other"
_CATEGORY_WORDS = {"music": "music", "song": "music", "speech": "speech", "voice": "speech", "voices": "speech",
                   "effects": "effects", "effect": "effects", "sfx": "effects", "sounds": "effects"}


def find_audio(audio_dir) -> list[Path]:
    """Every file under ``audio_dir`` (recursively, hidden files excluded) that soundfile reads, sorted."""
    import soundfile as sf

    root = Path(audio_dir)
    if not root.is_dir():
        raise AudioInputError(f"{str(root)!r} is not a folder; expected a folder of audio files")
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        try:
            sf.info(str(path))
        except (sf.SoundFileError, RuntimeError, OSError):
            log.info("skipping %s: not an audio file soundfile reads", path)
            continue
        found.append(path)
    if not found:
        raise AudioInputError(f"no audio file that soundfile reads was found under {str(root)!r}; "
                              "expected WAV/FLAC/OGG files (in subfolders music/, speech/, effects/ if you want "
                              "per-category figures)")
    return found


def clip_category(relative: Path, categories=None) -> str:
    """The category of a clip: ``categories[path]`` (relative posix path, file name or stem),
    else the first folder under the audio folder, else a category word in the file name
    (``long_music.ogg`` -> music), else ``other``."""
    relative = Path(relative)
    if categories:
        for key in (relative.as_posix(), relative.name, relative.stem):
            if key in categories:
                return str(categories[key])
    if len(relative.parts) > 1:
        return relative.parts[0]
    for word in re.findall(r"[a-z]+", relative.stem.lower()):
        if word in _CATEGORY_WORDS:
            return _CATEGORY_WORDS[word]
    return OTHER


def load_clip(path, max_seconds: float | None = None) -> np.ndarray:
    """Mono float32 ``[N]`` at 44.1 kHz (soxr), at most ``max_seconds`` long."""
    from meltok_runtime.io.audio import load_mono

    audio = load_mono(path, SAMPLE_RATE).samples
    if max_seconds is not None:
        audio = audio[:max(1, int(round(max_seconds * SAMPLE_RATE)))]
    return np.ascontiguousarray(audio)


@contextlib.contextmanager
def open_codec(codec_like, *, device: str = "cpu"):
    """Yield a codec: ``codec_like`` itself, or what ``meltok.loaders.open_codec`` opens for a path
    (a MelTok from a model file or run folder, a runtime Codec from a bundle folder, closed on exit)."""
    if not isinstance(codec_like, (str, Path)):
        if not isinstance(codec_like, AudioCodec):
            raise TypeError(f"evaluate got {type(codec_like).__name__}; expected an AudioCodec (MelTok, "
                            "meltok_runtime.Codec), a model file or a bundle folder")
        yield codec_like
        return
    from ..codec import MelTok
    from ..loaders import open_codec as open_model

    with open_model(MelTok, codec_like, device=device) as codec:
        yield codec


def describe(codec_like) -> str:
    """A short name for a codec or codec path (for reports)."""
    if isinstance(codec_like, (str, Path)):
        return str(codec_like)
    model_id = getattr(codec_like, "model_id", None)
    return f"{type(codec_like).__name__}({model_id})" if model_id else type(codec_like).__name__
