"""The serving protocol: WebSocket messages, their checks, close codes, and HTTP status by error.

WebSocket streams (``/v1/stream/decode``, ``/v1/stream/encode``), one stream at a time per connection:

1. the client sends a JSON text message with the options (``DECODE_OPTIONS`` / ``ENCODE_OPTIONS``, and
   ``context_seconds`` / ``step_seconds`` within the server's bounds: ``check_stream_bounds``);
2. then binary messages: for decoding, ``k >= 1`` token columns as little-endian uint16 ``[k, rows]``
   (the ``rows`` tokens of a column together); for encoding, mono PCM in the chosen format at the
   model's rate, whole samples per message;
3. then ``{"flush": true}``. The server answers binary messages as output becomes final (decoding:
   PCM in the chosen format; encoding: token columns as above), then ``{"done": true, ...}``; the
   connection may then start another stream with new options.

Errors: the server sends ``{"error": "<one line>"}`` and closes with ``CLOSE_BAD_DATA`` (unusable
content), ``CLOSE_POLICY`` (messages out of order, idle too long), ``CLOSE_TOO_BIG`` (a frame over
the limit), ``CLOSE_SERVER_ERROR`` or ``CLOSE_TRY_LATER`` (too many streams, shutting down).
"""
from __future__ import annotations

import json
import math

import numpy as np

from meltok_runtime.errors import (AudioInputError, BadMagicError, CodeRangeError, MeltokError, ModelMismatchError,
                                   SettingsError, TokenFileError, TokenInputError)
from meltok_runtime.io.pcm import INPUT_FORMATS, to_s16
from meltok_runtime.serve.errors import ProtocolError, RequestError

CLOSE_BAD_DATA = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_SERVER_ERROR = 1011
CLOSE_TRY_LATER = 1013

STREAM_FORMATS = tuple(INPUT_FORMATS)  # s16le, f32le
DECODE_OPTIONS = {"lookahead_seconds": 0.2, "format": "f32le"}
ENCODE_OPTIONS = {"lookahead_seconds": 0.2, "format": "s16le", "sample_rate": 44100}
MAX_LOOKAHEAD_SECONDS = 10.0
# a stream's windows: left context and step (audio kept per window), the server's defaults and bounds
# (README, "Serving": quality against compute on held-out clips)
STREAM_CONTEXT_SECONDS = 0.5
STREAM_STEP_SECONDS = 0.4


def http_status(error: MeltokError) -> int:
    """HTTP status for a user error: 415 unreadable body, 400 malformed request or corrupt file,
    422 well-formed but unusable input (wrong model, codes out of range, NaN audio, bad lengths)."""
    if isinstance(error, RequestError):
        return error.status
    if isinstance(error, BadMagicError):
        return 415
    if isinstance(error, (CodeRangeError, ModelMismatchError, TokenInputError, AudioInputError)):
        return 422
    if isinstance(error, (TokenFileError, SettingsError, ProtocolError)):
        return 400
    return 422


def parse_options(text: str, defaults: dict) -> dict:
    """A stream's options message -> ``defaults`` updated and checked (``lookahead_seconds``, ``format``, ...)."""
    try:
        message = json.loads(text)
    except ValueError:
        raise ProtocolError(f"the options message is not JSON: {text[:80]!r}; send e.g. {json.dumps(defaults)}")
    if not isinstance(message, dict):
        raise ProtocolError(f"the options message must be a JSON object, got {text[:80]!r}")
    if message.get("flush"):
        raise ProtocolError("flush before any options: send the options of a stream first", CLOSE_POLICY)
    unknown = sorted(set(message) - set(defaults))
    if unknown:
        raise ProtocolError(f"unknown options {unknown}; this stream takes {sorted(defaults)}")
    options = {**defaults, **message}
    _check_seconds(options, "lookahead_seconds", MAX_LOOKAHEAD_SECONDS)
    for name in ("context_seconds", "step_seconds"):
        if name in options:
            _check_seconds(options, name, None)
    if options["format"] not in STREAM_FORMATS:
        raise ProtocolError(f"format is {options['format']!r}; expected one of {list(STREAM_FORMATS)}")
    return options


def _check_seconds(options: dict, name: str, most: float | None) -> None:
    value = options[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and 0 <= value <= (most if most is not None else math.inf)):
        raise ProtocolError(f"{name} is {value!r}; expected a number of seconds"
                            + (f" from 0 to {most:g}" if most is not None else " (at least 0)"))


def check_stream_bounds(options: dict, max_context_seconds: float, min_step_seconds: float) -> None:
    """A stream may ask for less context or a longer step than the server's defaults (less compute per
    second of audio), never more context or a shorter step: else ``ProtocolError`` (close 1008)."""
    if options["context_seconds"] > max_context_seconds:
        raise ProtocolError(f"context_seconds is {options['context_seconds']:g}; this server allows at most "
                            f"{max_context_seconds:g} (see /health)", CLOSE_POLICY)
    if options["step_seconds"] < min_step_seconds:
        raise ProtocolError(f"step_seconds is {options['step_seconds']:g}; this server allows at least "
                            f"{min_step_seconds:g} (see /health)", CLOSE_POLICY)


def parse_control(text: str) -> None:
    """A text message inside a stream: only ``{"flush": true}`` is allowed."""
    try:
        message = json.loads(text)
    except ValueError:
        message = None
    if message != {"flush": True}:
        raise ProtocolError(f"inside a stream the only text message is {{\"flush\": true}}, got {text[:80]!r}; "
                            "send binary frames, then flush", CLOSE_POLICY)


def parse_token_frame(data: bytes, rows: int) -> np.ndarray:
    """A binary message of ``k >= 1`` columns, little-endian uint16 ``[k, rows]`` -> int64 ``[rows, k]``."""
    width = 2 * rows
    if not data or len(data) % width:
        raise ProtocolError(f"a token frame of {len(data)} bytes is not k >= 1 columns of {rows} little-endian "
                            f"uint16 tokens ({width} bytes each)")
    return np.frombuffer(data, dtype="<u2").reshape(-1, rows).T.astype(np.int64)


def token_frame(tokens: np.ndarray) -> bytes:
    """int tokens ``[rows, k]`` -> the binary message: little-endian uint16 ``[k, rows]``."""
    return np.ascontiguousarray(np.asarray(tokens).T, dtype="<u2").tobytes()


def parse_pcm(data: bytes, fmt: str) -> np.ndarray:
    """A binary message of mono PCM in ``fmt`` -> float32 ``[n]`` (s16le: samples / 32768)."""
    dtype = INPUT_FORMATS[fmt]
    if not data or len(data) % dtype.itemsize:
        raise ProtocolError(f"a PCM frame of {len(data)} bytes is not whole {fmt} samples ({dtype.itemsize} bytes "
                            "each); send mono samples, whole samples per message")
    samples = np.frombuffer(data, dtype=dtype).astype(np.float32)
    if dtype.kind == "i":
        samples /= 32768.0
    elif not np.isfinite(samples).all():
        raise ProtocolError(f"the PCM frame has a NaN or infinite sample at index "
                            f"{int(np.flatnonzero(~np.isfinite(samples))[0])}; send finite samples")
    return samples


def pcm_bytes(audio: np.ndarray, fmt: str) -> bytes:
    """float32 ``[n]`` -> PCM bytes in ``fmt`` (s16le: clipped and rounded as ``meltok-rt decode --stream``)."""
    return (np.asarray(audio, dtype="<f4") if fmt == "f32le" else to_s16(audio)).tobytes()
