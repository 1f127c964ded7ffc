"""Audio input and output shared by every CLI and API: one place for the input checks.

Arrays are float32 with time last: a file is ``[C, N]`` (channels, samples), a model input is
``[B, N]`` (batch of mono signals).
"""
import io
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import soxr

from meltok_runtime.errors import AudioInputError, OutputPathError, SettingsError
from meltok_runtime.io.atomic import atomic_output
from meltok_runtime.io.pcm import warn_full_scale

# Output container and sample format by file suffix. WAV keeps float32 so nothing clips.
OUTPUT_FORMATS = {".wav": ("WAV", "FLOAT"), ".flac": ("FLAC", "PCM_24"), ".ogg": ("OGG", "VORBIS")}
SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")  # sample formats a caller may choose instead
_PCM_SCALE = {np.dtype(np.int8): (0, 2 ** 7), np.dtype(np.int16): (0, 2 ** 15), np.dtype(np.int32): (0, 2 ** 31),
              np.dtype(np.uint8): (2 ** 7, 2 ** 7)}
_MAX_CHANNELS = 64


def load_audio(path) -> tuple[np.ndarray, int]:
    """Read an audio file as float32 ``[C, N]`` in [-1, 1] and its sample rate in Hz."""
    path = Path(path)
    if not path.exists():
        raise AudioInputError(f"audio file {str(path)!r} does not exist; check the path")
    if path.is_dir():
        raise AudioInputError(f"{str(path)!r} is a directory; expected an audio file")
    if path.stat().st_size == 0:
        raise AudioInputError(f"audio file {str(path)!r} is empty (0 bytes); expected an audio file")
    return _read(path, repr(str(path)))


def read_audio_bytes(data: bytes, name: str = "the request body") -> tuple[np.ndarray, int]:
    """Read the bytes of an audio file (any format ``load_audio`` reads) as float32 ``[C, N]`` and its rate."""
    if not data:
        raise AudioInputError(f"audio file {name} is empty (0 bytes); expected an audio file")
    return _read(io.BytesIO(data), name)


def audio_bytes(audio, sample_rate: int, suffix: str = ".wav", *, subtype: str | None = None) -> bytes:
    """The bytes ``write_audio`` writes for a file with ``suffix`` (float ``[N]`` or ``[C, N]`` audio)."""
    buffer = io.BytesIO()
    sample_rate = _check_rate(sample_rate, "sample_rate")
    container, subtype = output_format(f"audio{suffix}", subtype)
    sf.write(buffer, _frames(audio), sample_rate, format=container, subtype=subtype)
    return buffer.getvalue()


def _read(source, name: str) -> tuple[np.ndarray, int]:
    try:
        data, sample_rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if reason.startswith("Error opening ") and ": " in reason:  # soundfile names the source: we do
            reason = reason.rsplit(": ", 1)[1]
        raise AudioInputError(
            f"cannot read {name} as audio ({reason}); readable formats: "
            f"{', '.join(sorted(sf.available_formats()))}; convert the file to WAV or FLAC") from err
    if data.shape[0] == 0:
        raise AudioInputError(f"audio file {name} contains no samples; expected at least one")
    return np.ascontiguousarray(data.T), int(sample_rate)


class MonoAudio(NamedTuple):
    """An audio file as one mono signal at a chosen rate, with what the file was."""

    samples: np.ndarray  # float32 [N] at the requested rate
    source_rate: int  # the file's sample rate, Hz
    channels: int  # the file's channel count (mixed down by the mean)
    source_samples: int  # the file's length in samples at source_rate


def load_mono(path, sample_rate: int) -> MonoAudio:
    """Read an audio file, mix its channels down and resample it to ``sample_rate``: the one way every
    package turns a file into model audio (``load_audio``, then ``prepare_audio``'s checks, mixdown and soxr)."""
    samples, rate = load_audio(path)
    audio, _ = prepare_audio(samples[None], rate, sample_rate)
    return MonoAudio(audio[0], rate, samples.shape[0], samples.shape[1])


def mixdown(audio: np.ndarray) -> np.ndarray:
    """Average the channels of float ``[C, N]`` audio into float32 ``[N]`` (``[N]`` passes through)."""
    audio = np.asarray(audio)
    if audio.ndim == 1:
        return audio.astype(np.float32, copy=False)
    if audio.ndim != 2 or audio.shape[0] == 0:
        raise AudioInputError(f"mixdown got shape {audio.shape}; expected [C, N] with C >= 1")
    return audio.mean(axis=0, dtype=np.float64).astype(np.float32)


def prepare_audio(audio, sample_rate, target_rate: int = 44100, *, channels_last: bool = False,
                  hop_length: int = 256) -> tuple[np.ndarray, bool]:
    """Check and convert audio into the model input: float32 ``[B, N]`` at ``target_rate``.

    ``audio`` is ``[N]`` (mono), ``[B, N]`` (batch of mono) or ``[B, C, N]`` (batch of
    multi-channel, mixed down by the mean over C); float, or integer PCM (int8, int16, int32,
    uint8) scaled to [-1, 1] (int16: x / 32768, uint8: (x - 128) / 128). With ``channels_last``
    the layout is ``[N, C]`` (one item, as ``soundfile.read(..., always_2d=True)`` returns it) or
    ``[B, N, C]``. Without it, an array whose last axis is shorter than one hop (``hop_length``
    samples) while the axis before it is longer is refused: it is almost always ``[N, C]``.
    Returns the array and whether it was resampled (soxr, "HQ").
    """
    sample_rate = _check_rate(sample_rate, "sample_rate")
    target_rate = _check_rate(target_rate, "target_rate")
    audio = _to_float32(audio)
    if channels_last and audio.ndim >= 2:
        audio = np.swapaxes(audio, -1, -2)
        audio = audio[None] if audio.ndim == 2 else audio
    elif audio.ndim >= 2 and audio.shape[-1] < hop_length <= audio.shape[-2]:
        raise AudioInputError(
            f"audio has shape {audio.shape}: items of {audio.shape[-1]} samples, shorter than one hop "
            f"({hop_length}); this looks like [frames, channels] as soundfile.read returns it: pass "
            "channels_last=True (or audio.T[None], one item whose channels are mixed down)")
    if audio.ndim == 3:
        audio = audio.mean(axis=1, dtype=np.float64).astype(np.float32)
    elif audio.ndim == 1:
        audio = audio[None]
    if sample_rate == target_rate:
        return np.ascontiguousarray(audio), False
    return resample(audio, sample_rate, target_rate), True


def resample(audio: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """float32 ``[B, N]`` at ``sample_rate`` -> float32 ``[B, N']`` at ``target_rate`` (soxr, "HQ")."""
    resampled = soxr.resample(audio.T, sample_rate, target_rate, quality="HQ")
    if resampled.shape[0] == 0:
        raise AudioInputError(
            f"audio of {audio.shape[-1]} samples at {sample_rate} Hz is shorter than one sample at {target_rate} Hz; "
            "expected a longer signal")
    return np.ascontiguousarray(resampled.reshape(-1, audio.shape[0]).T, dtype=np.float32)


def write_audio(path, audio, sample_rate: int, *, subtype: str | None = None) -> None:
    """Write float ``[N]`` or ``[C, N]`` audio atomically; the suffix picks the format.

    ``.wav``: 32-bit float WAV (nothing clips; its fmt chunk has the ``cbSize`` field a non-PCM format
    needs, which sox asks for); ``.flac``: 24-bit FLAC (clipped to [-1, 1]); ``.ogg``: Ogg Vorbis.
    ``subtype`` (``PCM_16``, ``PCM_24``, ``FLOAT``) overrides the sample format. Audio above full
    scale is said on stderr (logging), with what to do.
    """
    sample_rate = _check_rate(sample_rate, "sample_rate")
    container, subtype = output_format(path, subtype)
    frames = _frames(audio)
    try:
        # The format is named, so the temporary needs no audio suffix: a stale one left by a killed
        # process is then never taken for audio by a folder scan (``*.flac``, ``meltok data build``).
        with atomic_output(path) as tmp:
            if container == "WAV" and subtype == "FLOAT" and frames.nbytes < 2 ** 32 - 64:
                _write_float_wav(tmp, frames, sample_rate)
            else:
                sf.write(tmp, frames, sample_rate, format=container, subtype=subtype)
    except (sf.SoundFileError, OSError) as err:
        raise OutputPathError(f"cannot write audio file {str(path)!r}: {err}; check the folder and free space") from err
    if frames.size:
        warn_full_scale(float(np.abs(frames).max()), str(path), clipped=subtype != "FLOAT")


def _frames(audio) -> np.ndarray:
    """Checked float ``[N]`` or ``[C, N]`` audio as the float32 ``[N, C]`` frames soundfile writes."""
    audio = np.asarray(audio)
    if audio.ndim not in (1, 2) or not np.issubdtype(audio.dtype, np.floating):
        raise AudioInputError(
            f"write_audio got a {audio.dtype} array of shape {audio.shape}; expected float32 [N] or [C, N]")
    if audio.ndim == 2 and not 1 <= audio.shape[0] <= _MAX_CHANNELS:
        raise AudioInputError(
            f"write_audio got shape {audio.shape}: {audio.shape[0]} channels; expected [C, N] with 1 to "
            f"{_MAX_CHANNELS} channels (transpose an [N, C] array)")
    audio = audio.astype(np.float32, copy=False)
    _check_finite(audio, "write_audio")
    return audio.reshape(-1, audio.shape[-1]).T


def _write_float_wav(path, frames: np.ndarray, sample_rate: int) -> None:
    """32-bit float WAV of ``frames`` ``[N, C]``: fmt chunk of 18 bytes (WAVE_FORMAT_IEEE_FLOAT, cbSize 0),
    fact chunk, data."""
    count, channels = frames.shape
    data_bytes = count * channels * 4
    fmt = struct.pack("<HHIIHHH", 3, channels, sample_rate, sample_rate * 4 * channels, 4 * channels, 32, 0)
    header = (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 12 + 8 + data_bytes) + b"WAVE"
              + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"fact" + struct.pack("<II", 4, count)
              + b"data" + struct.pack("<I", data_bytes))
    with open(path, "wb") as out:
        out.write(header)
        np.ascontiguousarray(frames, dtype="<f4").tofile(out)

def output_format(path, subtype: str | None = None) -> tuple[str, str]:
    """``(container, subtype)`` that ``write_audio`` uses for ``path``; refuses an unknown suffix or a
    subtype the container cannot hold (so a command can check before its work)."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise OutputPathError(
            f"output file {str(path)!r} has suffix {suffix!r}; expected one of {', '.join(OUTPUT_FORMATS)}: "
            "rename the output")
    container, default = OUTPUT_FORMATS[suffix]
    if subtype is None:
        return container, default
    if subtype not in SUBTYPES or not sf.check_format(container, subtype):
        raise SettingsError(f"sample format {subtype!r} cannot be written to a {suffix} file; choose one of "
                            f"{', '.join(s for s in SUBTYPES if sf.check_format(container, s)) or 'none'}")
    return container, subtype


def _check_rate(rate, name: str) -> int:
    valid = (isinstance(rate, (int, np.integer)) and not isinstance(rate, bool)) or (
        isinstance(rate, (float, np.floating)) and np.isfinite(rate) and float(rate).is_integer())
    if not valid or rate <= 0:
        raise AudioInputError(f"{name} is {rate!r}; expected a positive whole number of Hz, e.g. 44100")
    return int(rate)


def _to_float32(audio) -> np.ndarray:
    """Any accepted input array as float32, same shape, after the shape and value checks."""
    try:
        audio = np.asarray(audio)
    except (ValueError, TypeError) as err:
        raise AudioInputError(f"audio cannot be read as an array ({err}); expected a numpy array") from err
    if audio.ndim not in (1, 2, 3):
        raise AudioInputError(
            f"audio has shape {audio.shape}; expected [N] (mono), [B, N] (batch) or [B, C, N] (batch, channels)")
    if audio.size == 0:
        raise AudioInputError(f"audio has shape {audio.shape} and holds no samples; expected at least one sample")
    pcm = _PCM_SCALE.get(audio.dtype.newbyteorder("="))
    if pcm is not None:
        offset, scale = pcm
        return ((audio.astype(np.float64) - offset) / scale).astype(np.float32)
    if not np.issubdtype(audio.dtype, np.floating):
        raise AudioInputError(
            f"audio has dtype {audio.dtype}; expected float (samples in [-1, 1]) or integer PCM "
            f"({', '.join(str(d) for d in _PCM_SCALE)}): convert it first")
    with np.errstate(over="ignore"):  # float64 beyond the float32 range becomes inf, refused next
        converted = audio.astype(np.float32)
    _check_finite(converted, "audio")
    return converted


def _check_finite(audio: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(audio)
    if bad.any():
        first = tuple(int(i) for i in np.unravel_index(np.argmax(bad), audio.shape))
        raise AudioInputError(
            f"{what} has {int(bad.sum())} NaN or infinite samples (or beyond the float32 range), the first at "
            f"index {first}; expected finite samples: fix or drop the corrupt input")
