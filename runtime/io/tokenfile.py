"""Token files: versioned, torch-free storage of token arrays, readable with numpy alone.

Layout (all integers little endian):

========  =======  ==============================================================
offset    size     content
========  =======  ==============================================================
0         6        magic ``b"MELTOK"``
6         2        format version, uint16 (this module writes and reads version 1)
8         4        header length H in bytes, uint32
12        H        header: UTF-8 JSON object (below)
12 + H    P        payload: the codes, bit-packed
========  =======  ==============================================================

Header keys: ``format_version`` (int, equal to the version above), ``model_id`` (str),
``sample_rate`` (int, Hz), ``num_samples`` (list of int: original audio length of each batch
item), ``shape`` ([B, R, T]: batch, token rows, token columns), ``codebook_size`` (int),
``bits_per_code`` (int, ``ceil(log2(codebook_size))``: 13 for 8192), ``order`` (the string
``"batch, row, time (time fastest)"``), ``payload_bytes`` (P) and ``payload_crc32`` (zlib CRC-32
of the payload). Optional keys (readers of older files find them absent): ``source_sample_rate``
(int, Hz) and ``source_num_samples`` (list of int), the rate and lengths of the audio before it was
resampled to ``sample_rate`` for encoding, so a decoder can restore them; ``channels`` (int), the
channels the audio had before they were mixed down; ``streamed`` (``true`` when the tokens were
encoded live by a stream, whose tokens differ from offline encoding's for models that are not
time-local) with ``lookahead_seconds`` (float), that stream's lookahead. Nothing follows the payload.

Packing: the codes are taken in C order of ``[B, R, T]``; code ``i`` occupies bits
``i * bits .. (i + 1) * bits - 1`` of the payload, least significant bit first, where bit ``k``
of the payload is bit ``k % 8`` (LSB = 0) of byte ``k // 8``. Unused bits of the last byte are
zero, so ``P = ceil(B * R * T * bits / 8)``.
"""
import dataclasses
import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from meltok_runtime.io.atomic import atomic_output
from meltok_runtime.defaults import mismatch_message
from meltok_runtime.errors import (BadMagicError, CodeRangeError, ModelMismatchError, OutputPathError, TokenFileError,
                     TruncatedError, UnsupportedVersionError)

MAGIC = b"MELTOK"
FORMAT_VERSION = 1
ORDER = "batch, row, time (time fastest)"
MAX_CODEBOOK_SIZE = 2 ** 32
_PREFIX = struct.Struct("<6sHI")
_HEADER_KEYS = {"format_version", "model_id", "sample_rate", "num_samples", "shape", "codebook_size",
                "bits_per_code", "order", "payload_bytes", "payload_crc32"}


@dataclasses.dataclass(frozen=True)
class TokenFile:
    """Content of a token file. ``tokens``: int64 ``[B, R, T]`` (batch, token row, time)."""

    tokens: np.ndarray
    sample_rate: int
    num_samples: list
    model_id: str
    codebook_size: int
    version: int
    source_sample_rate: int | None = None  # the audio's rate before resampling, when recorded
    source_num_samples: list | None = None  # its lengths at that rate
    channels: int | None = None  # its channels before the mixdown, when recorded
    streamed: bool = False  # encoded live by a stream
    lookahead_seconds: float | None = None  # that stream's lookahead

    def describe(self) -> dict:
        """A JSON-ready summary (what ``meltok info`` and ``meltok-rt info`` print)."""
        summary = {"kind": "tokens", "version": self.version, "model_id": self.model_id,
                   "sample_rate": self.sample_rate, "num_samples": self.num_samples,
                   "seconds": [n / self.sample_rate for n in self.num_samples], "shape": list(self.tokens.shape),
                   "codebook_size": self.codebook_size, "distinct_codes": int(np.unique(self.tokens).size)}
        if self.source_sample_rate is not None or self.channels is not None:
            summary["source"] = {"sample_rate": self.source_sample_rate, "num_samples": self.source_num_samples,
                                 "seconds": None if self.source_sample_rate is None else
                                 [n / self.source_sample_rate for n in self.source_num_samples],
                                 "channels": self.channels}
        summary["streamed"] = self.streamed
        if self.streamed:
            summary["lookahead_seconds"] = self.lookahead_seconds
        return summary


def pack_codes(codes, bits: int) -> bytes:
    """Pack non-negative integer ``codes`` (any shape, C order) at ``bits`` bits each, LSB first."""
    if not 1 <= bits <= 32:
        raise TokenFileError(f"bits per code is {bits}; expected 1 to 32")
    codes = np.ascontiguousarray(codes).reshape(-1)
    if not np.issubdtype(codes.dtype, np.integer):
        raise TokenFileError(f"codes have dtype {codes.dtype}; expected an integer dtype")
    _check_range(codes, 2 ** bits, shape=codes.shape, what=f"a {bits}-bit code")
    as_bytes = codes.astype("<u4").view(np.uint8).reshape(-1, 4)
    stream = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :bits]
    return np.packbits(stream.reshape(-1), bitorder="little").tobytes()


def unpack_codes(buf, count: int, bits: int) -> np.ndarray:
    """Inverse of ``pack_codes``: int64 ``[count]`` from the first ``ceil(count * bits / 8)`` bytes."""
    if not 1 <= bits <= 32:
        raise TokenFileError(f"bits per code is {bits}; expected 1 to 32")
    needed = _payload_bytes(count, bits)
    if len(buf) < needed:
        raise TruncatedError(
            f"packed codes are {len(buf)} bytes; {count} codes of {bits} bits need {needed}: "
            "the data was cut short, produce it again")
    stream = np.unpackbits(np.frombuffer(buf, np.uint8, count=needed), bitorder="little")
    padded = np.zeros((count, 32), np.uint8)
    padded[:, :bits] = stream[:count * bits].reshape(count, bits)
    return np.packbits(padded, axis=1, bitorder="little").view("<u4").reshape(-1).astype(np.int64)


def tokens_to_bytes(tokens, *, sample_rate: int, num_samples, model_id: str, codebook_size: int = 8192,
                    source_sample_rate: int | None = None, source_num_samples=None, channels: int | None = None,
                    streamed: bool = False, lookahead_seconds: float | None = None) -> bytes:
    """Serialise tokens (int ``[B, R, T]`` or ``[R, T]``) to the token-file layout above."""
    try:
        tokens = np.asarray(tokens)
    except (ValueError, TypeError) as err:
        raise TokenFileError(f"tokens cannot be read as an array ({err}); expected an int array [B, R, T]") from err
    if not np.issubdtype(tokens.dtype, np.integer):
        raise TokenFileError(f"tokens have dtype {tokens.dtype}; expected an integer dtype (codebook indices)")
    if tokens.ndim == 2:
        tokens = tokens[None]
    if tokens.ndim != 3 or tokens.shape[0] < 1 or tokens.shape[1] < 1:
        raise TokenFileError(
            f"tokens have shape {tokens.shape}; expected [B, R, T] or [R, T] with B >= 1 and R >= 1")
    if not _is_int(codebook_size) or not 2 <= codebook_size <= MAX_CODEBOOK_SIZE:
        raise TokenFileError(f"codebook_size is {codebook_size!r}; expected an integer from 2 to {MAX_CODEBOOK_SIZE}")
    if not _is_int(sample_rate) or sample_rate <= 0:
        raise TokenFileError(f"sample_rate is {sample_rate!r}; expected a positive integer (Hz)")
    if not isinstance(model_id, str):
        raise TokenFileError(f"model_id is {type(model_id).__name__}; expected a str")
    num_samples = _num_samples_list(num_samples, tokens.shape[0])
    _check_range(tokens, codebook_size, shape=tokens.shape, what=f"a code of a {codebook_size}-entry codebook")
    bits = _code_bits(codebook_size)
    payload = pack_codes(tokens, bits)
    header = {
        "format_version": FORMAT_VERSION, "model_id": model_id, "sample_rate": int(sample_rate),
        "num_samples": num_samples, "shape": list(tokens.shape), "codebook_size": int(codebook_size),
        "bits_per_code": bits, "order": ORDER, "payload_bytes": len(payload),
        "payload_crc32": zlib.crc32(payload),
    }
    if source_sample_rate is not None:
        if not _is_int(source_sample_rate) or source_sample_rate <= 0:
            raise TokenFileError(f"source_sample_rate is {source_sample_rate!r}; expected a positive integer (Hz)")
        header["source_sample_rate"] = int(source_sample_rate)
        header["source_num_samples"] = _num_samples_list(source_num_samples, tokens.shape[0])
    if channels is not None:
        if not _is_int(channels) or channels < 1:
            raise TokenFileError(f"channels is {channels!r}; expected a positive integer")
        header["channels"] = int(channels)
    if streamed:
        if not _is_number(lookahead_seconds) or lookahead_seconds < 0:
            raise TokenFileError(f"lookahead_seconds is {lookahead_seconds!r}; a streamed token file records its "
                                 "stream's lookahead, a non-negative number of seconds")
        header["streamed"], header["lookahead_seconds"] = True, float(lookahead_seconds)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)) + head + payload


def tokens_from_bytes(data: bytes, *, name: str = "<bytes>") -> TokenFile:
    """Parse token-file bytes; ``name`` (the file path) is quoted in error messages."""
    if len(data) == 0:
        raise TokenFileError(f"token file {name} is empty (0 bytes); expected a file written by write_tokens")
    if data[:len(MAGIC)] != MAGIC[:len(data)]:
        raise BadMagicError(
            f"{name} starts with {bytes(data[:len(MAGIC)])!r}, not the token-file magic {MAGIC!r}: "
            "it is not a meltok token file")
    if len(data) < _PREFIX.size:
        raise TruncatedError(f"token file {name} is {len(data)} bytes, shorter than its {_PREFIX.size}-byte prefix")
    _, version, head_len = _PREFIX.unpack_from(data)
    if not 1 <= version <= FORMAT_VERSION:
        remedy = "upgrade meltok to read it" if version > FORMAT_VERSION else "the file is corrupt"
        raise UnsupportedVersionError(
            f"token file {name} has format version {version}; this meltok reads versions 1 to "
            f"{FORMAT_VERSION}: {remedy}")
    head_end = _PREFIX.size + head_len
    if len(data) < head_end:
        raise TruncatedError(
            f"token file {name} ends at byte {len(data)}, inside its {head_len}-byte header: "
            "the file was cut short, copy or write it again")
    header = _parse_header(bytes(data[_PREFIX.size:head_end]), version, name)
    payload = data[head_end:]
    if len(payload) < header["payload_bytes"]:
        raise TruncatedError(
            f"token file {name} holds {len(payload)} of its {header['payload_bytes']} payload bytes: "
            "the file was cut short, copy or write it again")
    if len(payload) > header["payload_bytes"]:
        raise TokenFileError(
            f"token file {name} has {len(payload) - header['payload_bytes']} bytes after its payload; "
            "expected none: the file is corrupt or two files were joined")
    if zlib.crc32(payload) != header["payload_crc32"]:
        raise TokenFileError(
            f"token file {name}: payload checksum {zlib.crc32(payload):#010x} differs from the header's "
            f"{header['payload_crc32']:#010x}: the file is corrupt, write it again")
    shape = tuple(header["shape"])
    tokens = unpack_codes(payload, math.prod(shape), header["bits_per_code"]).reshape(shape)
    _check_range(tokens, header["codebook_size"], shape=shape,
                 what=f"a code of the {header['codebook_size']}-entry codebook in the header of {name}")
    return TokenFile(tokens=tokens, sample_rate=header["sample_rate"], num_samples=header["num_samples"],
                     model_id=header["model_id"], codebook_size=header["codebook_size"], version=version,
                     source_sample_rate=header.get("source_sample_rate"),
                     source_num_samples=header.get("source_num_samples"), channels=header.get("channels"),
                     streamed=header.get("streamed", False), lookahead_seconds=header.get("lookahead_seconds"))


def write_tokens(path, tokens, *, sample_rate: int, num_samples, model_id: str, codebook_size: int = 8192,
                 source_sample_rate: int | None = None, source_num_samples=None, channels: int | None = None,
                 streamed: bool = False, lookahead_seconds: float | None = None) -> None:
    """Write tokens (int ``[B, R, T]`` or ``[R, T]``) to ``path`` atomically.

    ``num_samples`` is the original audio length at ``sample_rate``: one int for every item, or a
    list of B ints; ``source_sample_rate`` and ``source_num_samples`` (optional) the rate and
    lengths the audio had before it was resampled, ``channels`` its channels; ``streamed`` with
    ``lookahead_seconds``: encoded live by a stream.
    """
    data = tokens_to_bytes(tokens, sample_rate=sample_rate, num_samples=num_samples, model_id=model_id,
                           codebook_size=codebook_size, source_sample_rate=source_sample_rate,
                           source_num_samples=source_num_samples, channels=channels, streamed=streamed,
                           lookahead_seconds=lookahead_seconds)
    try:
        with atomic_output(path) as tmp:
            tmp.write_bytes(data)
    except OSError as err:
        raise OutputPathError(f"cannot write token file {str(path)!r}: {err}; check the folder and free space") from err


def write_token_file(path, token_file: TokenFile) -> None:
    """``write_tokens`` of everything ``token_file`` holds."""
    write_tokens(path, token_file.tokens, **_header_fields(token_file))


def token_file_bytes(token_file: TokenFile) -> bytes:
    """The bytes ``write_token_file`` writes for ``token_file``."""
    return tokens_to_bytes(token_file.tokens, **_header_fields(token_file))


def _header_fields(token_file: TokenFile) -> dict:
    return dict(sample_rate=token_file.sample_rate, num_samples=token_file.num_samples, model_id=token_file.model_id,
                codebook_size=token_file.codebook_size, source_sample_rate=token_file.source_sample_rate,
                source_num_samples=token_file.source_num_samples, channels=token_file.channels,
                streamed=token_file.streamed, lookahead_seconds=token_file.lookahead_seconds)


def read_tokens(path) -> TokenFile:
    """Read a token file written by ``write_tokens``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise TokenFileError(f"token file {str(path)!r} does not exist; check the path") from err
    except IsADirectoryError as err:
        raise TokenFileError(f"{str(path)!r} is a directory; expected a token file") from err
    except OSError as err:
        raise TokenFileError(f"cannot read token file {str(path)!r}: {err}") from err
    return tokens_from_bytes(data, name=repr(str(path)))


def _payload_bytes(count: int, bits: int) -> int:
    return -(-count * bits // 8)


def _code_bits(codebook_size: int) -> int:
    return max(1, (codebook_size - 1).bit_length())


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _num_samples_list(num_samples, batch: int) -> list:
    values = [num_samples] * batch if _is_int(num_samples) else num_samples
    if not isinstance(values, (list, tuple, np.ndarray)) or len(values) != batch or not all(
            _is_int(n) and n >= 0 for n in values):
        raise TokenFileError(
            f"num_samples is {num_samples!r}; expected a non-negative int or a list of {batch} of them "
            "(the original audio length of each batch item)")
    return [int(n) for n in values]


def _check_range(codes: np.ndarray, limit: int, *, shape, what: str) -> None:
    bad = np.flatnonzero((codes < 0) | (codes >= limit))
    if len(bad):
        position = np.unravel_index(bad[0], shape)
        raise CodeRangeError(
            f"code {int(codes.reshape(-1)[bad[0]])} at position {tuple(int(i) for i in position)} is not "
            f"{what}; expected 0 <= code < {limit} ({len(bad)} codes out of range): check the model "
            "that produced them")


def _parse_header(raw: bytes, version: int, name: str) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:
        raise TokenFileError(f"token file {name}: header is not valid UTF-8 JSON ({err}); the file is corrupt") from err
    problem = _header_problem(header, version)
    if problem:
        raise TokenFileError(f"token file {name}: inconsistent header: {problem}; the file is corrupt")
    return header


def _header_problem(header, version: int) -> str:
    """Return what is wrong with a decoded header, or an empty string."""
    if not isinstance(header, dict):
        return f"a JSON {type(header).__name__} instead of an object"
    missing = sorted(_HEADER_KEYS - header.keys())
    if missing:
        return f"missing keys {missing}"
    ints = ("format_version", "sample_rate", "codebook_size", "bits_per_code", "payload_bytes", "payload_crc32")
    for key in ints:
        if not _is_int(header[key]) or header[key] < 0:
            return f"{key} is {header[key]!r}, expected a non-negative integer"
    shape, num_samples = header["shape"], header["num_samples"]
    checks = (
        (header["format_version"] == version, f"format_version {header['format_version']} != prefix version {version}"),
        (isinstance(header["model_id"], str), "model_id is not a string"),
        (header["sample_rate"] > 0, "sample_rate is 0"),
        (2 <= header["codebook_size"] <= MAX_CODEBOOK_SIZE, f"codebook_size {header['codebook_size']} out of range"),
        (header["order"] == ORDER, f"order is {header['order']!r}, expected {ORDER!r}"),
        (isinstance(shape, list) and len(shape) == 3 and all(_is_int(n) and n >= 0 for n in shape)
         and shape[0] >= 1 and shape[1] >= 1, f"shape {shape!r} is not [B, R, T] with B, R >= 1"),
    )
    for ok, problem in checks:
        if not ok:
            return problem
    if header["bits_per_code"] != _code_bits(header["codebook_size"]):
        return (f"bits_per_code {header['bits_per_code']} does not fit codebook_size {header['codebook_size']} "
                f"(expected {_code_bits(header['codebook_size'])})")
    if not (isinstance(num_samples, list) and len(num_samples) == shape[0]
            and all(_is_int(n) and n >= 0 for n in num_samples)):
        return f"num_samples {num_samples!r} is not a list of {shape[0]} non-negative integers"
    if "source_sample_rate" in header:
        rate, lengths = header["source_sample_rate"], header.get("source_num_samples")
        if not (_is_int(rate) and rate > 0 and isinstance(lengths, list) and len(lengths) == shape[0]
                and all(_is_int(n) and n >= 0 for n in lengths)):
            return f"source_sample_rate {rate!r} / source_num_samples {lengths!r} do not describe {shape[0]} items"
    if "channels" in header and not (_is_int(header["channels"]) and header["channels"] >= 1):
        return f"channels {header['channels']!r} is not a positive integer"
    if header.get("streamed", False) is not False and not (
            header["streamed"] is True and _is_number(header.get("lookahead_seconds"))):
        return (f"streamed {header['streamed']!r} / lookahead_seconds {header.get('lookahead_seconds')!r} are not "
                "true / seconds")
    expected = _payload_bytes(math.prod(shape), header["bits_per_code"])
    if header["payload_bytes"] != expected:
        return f"payload_bytes {header['payload_bytes']} != {expected} for shape {shape}"
    return ""


def check_token_file(token_file: TokenFile, *, model_id: str, sample_rate: int, source,
                     accepted: tuple[str, ...] = ()) -> None:
    """Raise ModelMismatchError when ``token_file`` was made by a model other than ``model_id`` (or one of
    ``accepted``, models with the same tokenizer) or at another rate."""
    if token_file.model_id and token_file.model_id not in (model_id, *accepted):
        raise ModelMismatchError(mismatch_message(source, token_file.model_id, model_id))
    if token_file.sample_rate != sample_rate:
        raise ModelMismatchError(f"{source} is at {token_file.sample_rate} Hz but the model works at "
                                 f"{sample_rate} Hz; decode it with the model that encoded it")
