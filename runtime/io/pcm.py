"""Raw PCM and open-ended WAV on byte streams, for ``meltok-rt decode --stream`` and ``encode -``.

Writing: ``PcmWriter`` sends float32 blocks as 16-bit WAV with an open-ended header (RIFF and data
sizes 0xFFFFFFFF, as sox and ffmpeg write to pipes, so a player starts before the end), or as raw
``s16le``/``f32le``. Reading: ``read_pcm_blocks`` yields mono float32 blocks from raw ``s16le``/``f32le``
as they arrive.
"""
from __future__ import annotations

import struct
from typing import BinaryIO, Iterator

import numpy as np

from meltok_runtime.errors import AudioInputError

OUTPUT_FORMATS = ("wav", "s16le", "f32le")
INPUT_FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
UNKNOWN_SIZE = 0xFFFFFFFF


def open_wav_header(sample_rate: int, channels: int = 1) -> bytes:
    """A 44-byte 16-bit PCM WAV header whose RIFF and data sizes say "unknown" (0xFFFFFFFF)."""
    block = 2 * channels
    return (b"RIFF" + struct.pack("<I", UNKNOWN_SIZE) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block, block, 16)
            + b"data" + struct.pack("<I", UNKNOWN_SIZE))


def to_s16(audio: np.ndarray) -> np.ndarray:
    """Float ``[-1, 1]`` -> little-endian int16 (clipped, rounded)."""
    return np.clip(np.round(np.asarray(audio, dtype=np.float64) * 32767.0), -32768, 32767).astype("<i2")


class PcmWriter:
    """Write float32 audio blocks to ``stream`` in ``fmt`` (``wav``, ``s16le`` or ``f32le``), flushing each."""

    def __init__(self, stream: BinaryIO, fmt: str, sample_rate: int):
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
        self.stream, self.fmt, self.samples = stream, fmt, 0
        if fmt == "wav":
            stream.write(open_wav_header(sample_rate))

    def write(self, audio: np.ndarray) -> None:
        if not len(audio):
            return
        data = np.asarray(audio, dtype="<f4") if self.fmt == "f32le" else to_s16(audio)
        self.stream.write(data.tobytes())
        self.stream.flush()
        self.samples += len(audio)


def read_pcm_blocks(stream: BinaryIO, fmt: str, channels: int = 1, block_frames: int = 2048) -> Iterator[np.ndarray]:
    """Mono float32 blocks (channels averaged) of raw PCM read from ``stream`` as it arrives; a trailing
    partial frame is an error."""
    if fmt not in INPUT_FORMATS:
        raise ValueError(f"input format must be one of {sorted(INPUT_FORMATS)}, got {fmt!r}")
    if channels < 1:
        raise ValueError(f"channels must be at least 1, got {channels}")
    dtype = INPUT_FORMATS[fmt]
    frame = dtype.itemsize * channels
    rest = b""
    read = getattr(stream, "read1", stream.read)  # read1: whatever has arrived, without waiting for a full block
    while True:
        data = read(block_frames * frame)
        if not data:
            break
        data = rest + data
        usable = len(data) - len(data) % frame
        rest = data[usable:]
        if usable:
            samples = np.frombuffer(data[:usable], dtype=dtype).reshape(-1, channels).astype(np.float32)
            if dtype.kind == "i":
                samples /= 32768.0
            yield samples.mean(axis=1)
    if rest:
        raise AudioInputError(f"the input ended inside a sample frame ({len(rest)} stray bytes of {frame}); "
                              f"is it really {fmt} with {channels} channel(s)?")

