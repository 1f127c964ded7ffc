"""Raw PCM and WAV on byte streams, for ``meltok-rt decode --stream`` and ``encode -``.

Writing: ``PcmWriter`` sends float32 blocks as 16-bit WAV with an open-ended header (RIFF and data
sizes 0xFFFFFFFF, as sox and ffmpeg write to pipes, so a player starts before the end), or as raw
``s16le``/``f32le``. Reading: a WAV (RIFF or RF64, any rate and channel count) is recognised by its
header, anything else is raw PCM as the caller describes it; ``read_whole`` reads a finished stream
into ``[C, N]``, ``open_live`` yields mono float32 blocks as they arrive.
"""
from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np

from meltok_runtime.errors import AudioInputError

log = logging.getLogger("meltok_runtime")

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
    """Write float32 audio blocks to ``stream`` in ``fmt`` (``wav``, ``s16le`` or ``f32le``), flushing each;
    ``close`` says on stderr (logging) if the audio went above full scale."""

    def __init__(self, stream: BinaryIO, fmt: str, sample_rate: int):
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
        self.stream, self.fmt, self.samples, self.peak = stream, fmt, 0, 0.0
        if fmt == "wav":
            stream.write(open_wav_header(sample_rate))

    def write(self, audio: np.ndarray) -> None:
        if not len(audio):
            return
        self.peak = max(self.peak, float(np.abs(audio).max()))
        data = np.asarray(audio, dtype="<f4") if self.fmt == "f32le" else to_s16(audio)
        self.stream.write(data.tobytes())
        self.stream.flush()
        self.samples += len(audio)

    def close(self) -> None:
        warn_full_scale(self.peak, "standard output", clipped=self.fmt != "f32le")


def warn_full_scale(peak: float, where: str, *, clipped: bool) -> None:
    """Say (logging, on stderr) that audio written to ``where`` peaks above full scale, and what to do."""
    if peak <= 1.0:
        return
    db = 20 * np.log10(peak)
    if clipped:
        log.warning("the decoded audio peaks at %.2f (%.1f dB above full scale) and was clipped in %s; write float "
                    "(a .wav file, or --format f32le) to keep the peaks", peak, db, where)
    else:
        log.warning("the decoded audio peaks at %.2f (%.1f dB above full scale) in %s; converting it to integer PCM "
                    "clips it: lower the gain by %.1f dB first (e.g. sox --norm, or sox -v %.3f)", peak, db, where,
                    db, 1 / peak)


@dataclass(frozen=True)
class PcmLayout:
    """How the samples of a byte stream are laid out: little-endian ``dtype``, ``channels`` interleaved,
    ``rate`` Hz; ``source`` says where that was learnt (a WAV header or the command line)."""

    dtype: np.dtype
    channels: int
    rate: int
    source: str

    def to_float(self, data: bytes) -> np.ndarray:
        """Whole frames of ``data`` -> float32 ``[C, n]`` in [-1, 1]."""
        samples = np.frombuffer(data, dtype=self.dtype).reshape(-1, self.channels).T.astype(np.float32)
        if self.dtype.kind == "i":
            samples /= float(2 ** (8 * self.dtype.itemsize - 1))
        return samples


def raw_layout(fmt: str, rate: int, channels: int) -> PcmLayout:
    if fmt not in INPUT_FORMATS:
        raise ValueError(f"input format must be one of {sorted(INPUT_FORMATS)}, got {fmt!r}")
    if channels < 1 or rate < 1:
        raise ValueError(f"channels and rate must be at least 1, got {channels}, {rate}")
    return PcmLayout(INPUT_FORMATS[fmt], channels, rate, f"raw {fmt}")


def is_wav(head: bytes) -> bool:
    """Whether ``head`` (the first 12 bytes of a stream) starts a RIFF or RF64 WAVE file."""
    return head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE"


def read_whole(stream: BinaryIO, layout: PcmLayout) -> tuple[np.ndarray, PcmLayout]:
    """All of a finished ``stream``: a WAV (any rate, channels, sample format; read with soundfile) or raw
    PCM in ``layout`` -> float32 ``[C, N]`` and the layout it had."""
    data = stream.read()
    if is_wav(data[:12]):
        import soundfile as sf

        try:
            audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError) as err:
            raise AudioInputError(f"standard input starts like a WAV file but cannot be read as one ({err}); "
                                  "send a complete WAV, or raw PCM") from err
        return np.ascontiguousarray(audio.T), PcmLayout(np.dtype("<f4"), audio.shape[1], rate, "WAV header")
    frame = layout.dtype.itemsize * layout.channels
    if len(data) % frame:
        raise _stray(len(data) % frame, frame, layout)
    return layout.to_float(data), layout


def open_live(stream: BinaryIO, layout: PcmLayout, block_frames: int = 2048) -> tuple[PcmLayout, Iterator[np.ndarray]]:
    """The layout of ``stream`` (from its WAV header if it has one, else ``layout``) and its mono float32
    blocks (channels averaged) as they arrive."""
    head = _read_exactly(stream, 12)
    if is_wav(head):
        layout = _wav_layout(stream)
        head = b""
    return layout, _blocks(stream, layout, head, block_frames)


def _read_exactly(stream: BinaryIO, count: int) -> bytes:
    data = b""
    while len(data) < count:
        more = stream.read(count - len(data))
        if not more:
            break
        data += more
    return data


def _wav_layout(stream: BinaryIO) -> PcmLayout:
    """Read WAV chunks up to the data chunk's header; the layout its fmt chunk describes."""
    fmt = None
    while True:
        chunk = _read_exactly(stream, 8)
        if len(chunk) < 8:
            raise AudioInputError("standard input is a WAV header without a data chunk; send audio after it")
        name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if name == b"data":
            break
        body = _read_exactly(stream, size + size % 2)
        if name == b"fmt ":
            fmt = body
    if fmt is None or len(fmt) < 16:
        raise AudioInputError("standard input is a WAV without a fmt chunk before its data; send a valid WAV")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the format is the sub-format's first two bytes
        tag = struct.unpack("<H", fmt[24:26])[0]
    dtype = {(1, 16): "<i2", (1, 32): "<i4", (3, 32): "<f4", (3, 64): "<f8"}.get((tag, bits))
    if dtype is None or channels < 1 or rate < 1:
        raise AudioInputError(f"standard input is a WAV of format {tag} with {bits}-bit samples, which --live reads "
                              "not; send 16- or 32-bit integer or 32-bit float WAV (or drop --live)")
    return PcmLayout(np.dtype(dtype), channels, rate, "WAV header")


def _stray(count: int, frame: int, layout: PcmLayout) -> AudioInputError:
    return AudioInputError(f"the input ended inside a sample frame ({count} stray bytes of {frame}); is it really "
                           f"{layout.source} with {layout.channels} channel(s)?")


def _blocks(stream: BinaryIO, layout: PcmLayout, rest: bytes, block_frames: int) -> Iterator[np.ndarray]:
    """Mono float32 blocks of ``stream`` as it arrives (``rest``: bytes already read); a trailing
    partial frame is an error."""
    frame = layout.dtype.itemsize * layout.channels
    read = getattr(stream, "read1", stream.read)  # read1: whatever has arrived, without waiting for a full block
    while True:
        usable = len(rest) - len(rest) % frame
        if usable:
            yield layout.to_float(rest[:usable]).mean(axis=0)
            rest = rest[usable:]
        data = read(block_frames * frame)
        if not data:
            break
        rest += data
    if rest:
        raise _stray(len(rest), frame, layout)

