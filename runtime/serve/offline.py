"""The offline endpoints' work, bytes in and bytes out (no web framework here).

``encode_body``: an audio file's bytes (any format soundfile reads) or raw PCM -> the ``TokenFile``
that ``meltok-rt encode`` writes for the same input (``io.files.encode_file``'s steps: read, prepare,
encode, record the model's and the original rate and length). ``decode_body``: a token file's
bytes, or its JSON form, -> the audio ``meltok-rt decode`` writes (WAV float32 by default).
"""
from __future__ import annotations

import json

import numpy as np

from meltok_runtime.errors import AudioInputError
from meltok_runtime.io.audio import audio_bytes, read_audio_bytes
from meltok_runtime.io.files import token_file_of
from meltok_runtime.io.pcm import INPUT_FORMATS
from meltok_runtime.io.tokenfile import FORMAT_VERSION, TokenFile, check_token_file, tokens_from_bytes
from meltok_runtime.pipeline import CodecPipeline
from meltok_runtime.serve.errors import RequestError
from meltok_runtime.serve.protocol import pcm_bytes

AUDIO_FORMATS = {"wav": ".wav", "flac": ".flac"}  # file formats of /v1/decode; raw: s16le, f32le
RAW_FORMATS = tuple(INPUT_FORMATS)
MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "s16le": "application/octet-stream",
               "f32le": "application/octet-stream"}


def _int_param(params, name: str, default: int | None = None) -> int | None:
    value = params.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise RequestError(f"{name}={value!r}; expected a positive whole number")
    return number


def read_body_audio(body: bytes, params) -> tuple[np.ndarray, int]:
    """Request body -> float32 ``[C, N]`` and its rate: an audio file, or raw PCM with
    ``format=s16le|f32le``, ``sample_rate`` and ``channels`` (interleaved) query parameters."""
    fmt = params.get("format")
    if fmt is None:
        try:
            return read_audio_bytes(body)
        except AudioInputError as error:  # not a format soundfile reads (or empty): 415
            raise RequestError(str(error), 415) from None
    if fmt not in RAW_FORMATS:
        raise RequestError(f"format={fmt!r}; expected one of {list(RAW_FORMATS)} for raw PCM, or no format for an "
                           "audio file")
    rate = _int_param(params, "sample_rate")
    if rate is None:
        raise RequestError(f"raw PCM (format={fmt}) needs sample_rate=HZ (and channels=N if not mono)")
    channels = _int_param(params, "channels", 1)
    dtype = INPUT_FORMATS[fmt]
    frame = dtype.itemsize * channels
    if not body or len(body) % frame:
        raise RequestError(f"the body has {len(body)} bytes, not whole {fmt} frames of {channels} channel(s) "
                           f"({frame} bytes each) with at least one frame", 422)
    samples = np.frombuffer(body, dtype=dtype).reshape(-1, channels).T
    return samples, rate  # integer PCM is scaled by the pipeline's checks (int16: x / 32768)


def encode_body(codec: CodecPipeline, body: bytes, params) -> TokenFile:
    """Encode one request's audio into the TokenFile ``meltok-rt encode`` writes for it."""
    samples, rate = read_body_audio(body, params)
    return token_file_of(codec, samples, rate)


def tokens_json(token_file: TokenFile) -> dict:
    """The JSON form of a one-item token file (``tokens``: ``rows`` lists of ``T'`` codes)."""
    return {"model_id": token_file.model_id, "sample_rate": token_file.sample_rate,
            "num_samples": token_file.num_samples[0], "source_sample_rate": token_file.source_sample_rate,
            "source_num_samples": (token_file.source_num_samples or [None])[0],
            "tokens": token_file.tokens[0].tolist()}


def read_body_tokens(body: bytes, content_type: str, codec: CodecPipeline) -> TokenFile:
    """A token file's bytes, or its JSON form (``tokens_json``), -> a checked one-item TokenFile."""
    if content_type.split(";")[0].strip() == "application/json":
        token_file = _token_file_from_json(body, codec)
    else:
        token_file = tokens_from_bytes(body, name="the request body")
    check_token_file(token_file, model_id=codec.model_id, sample_rate=codec.sample_rate, source="the request body",
                     accepted=codec.accepts_tokens_of)
    if token_file.tokens.shape[0] != 1:
        raise RequestError(f"the token file holds {token_file.tokens.shape[0]} items; /v1/decode takes one item per "
                           "request", 422)
    return token_file


def _token_file_from_json(body: bytes, codec: CodecPipeline) -> TokenFile:
    try:
        message = json.loads(body)
        tokens = np.asarray(message["tokens"])
        num_samples = message.get("num_samples")
    except (ValueError, TypeError, KeyError):
        raise RequestError('the JSON body must be an object with "tokens" (rows lists of codes) and optionally '
                           '"num_samples" and "model_id"') from None
    if tokens.dtype.kind not in "iu" or tokens.ndim not in (2, 3):
        raise RequestError(f'"tokens" must be {codec.token_rows} lists of integer codes, got an array of shape '
                           f"{list(tokens.shape)} and dtype {tokens.dtype}", 422)
    tokens = tokens if tokens.ndim == 3 else tokens[None]
    if num_samples is None:
        num_samples = codec.decoded_length(tokens.shape[-1])
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
        raise RequestError(f'"num_samples" is {num_samples!r}; expected a non-negative integer', 422)
    rate = message.get("source_sample_rate")
    return TokenFile(tokens=tokens, sample_rate=int(message.get("sample_rate", codec.sample_rate)),
                     num_samples=[num_samples], model_id=str(message.get("model_id", codec.model_id)),
                     codebook_size=codec.codebook_size, version=FORMAT_VERSION, source_sample_rate=rate,
                     source_num_samples=[message.get("source_num_samples")] if rate else None)


def decode_body(codec: CodecPipeline, body: bytes, content_type: str, params) -> tuple[bytes, str]:
    """Decode one request's tokens -> ``(bytes, media type)``: ``format`` wav (float32, as ``meltok-rt
    decode -o x.wav`` writes), flac (24-bit), s16le or f32le; ``sample_rate`` resamples (the rate the
    audio had before encoding gives its recorded length, as ``--original-rate``)."""
    fmt = params.get("format", "wav")
    if fmt not in AUDIO_FORMATS and fmt not in RAW_FORMATS:
        raise RequestError(f"format={fmt!r}; expected one of {list(AUDIO_FORMATS) + list(RAW_FORMATS)}")
    token_file = read_body_tokens(body, content_type, codec)
    rate = _int_param(params, "sample_rate", codec.sample_rate)
    length = token_file.num_samples[0]
    if rate == token_file.source_sample_rate and token_file.source_num_samples:
        length = token_file.source_num_samples[0]
    elif rate != codec.sample_rate:
        length = -(-length * rate // codec.sample_rate)
    audio = codec.decode(token_file.tokens, num_samples=length, sample_rate=rate)[0]
    if fmt in RAW_FORMATS:
        return pcm_bytes(audio, fmt), MEDIA_TYPES[fmt]
    return audio_bytes(audio, rate, AUDIO_FORMATS[fmt]), MEDIA_TYPES[fmt]
