import json
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meltok_runtime.errors import (BadMagicError, CodeRangeError, MeltokError, OutputPathError, TokenFileError,
                                   TruncatedError, UnsupportedVersionError)
from meltok_runtime.io.tokenfile import (FORMAT_VERSION, MAGIC, TokenFile, pack_codes, read_tokens, tokens_from_bytes,
                                      tokens_to_bytes, unpack_codes, write_tokens)

META = dict(sample_rate=44100, model_id="meltok-paper@0123abcd")


def _valid_bytes(shape=(2, 12, 21), codebook_size=8192, seed=0):
    tokens = np.random.default_rng(seed).integers(0, codebook_size, shape)
    return tokens, tokens_to_bytes(tokens, num_samples=[44100] * shape[0], codebook_size=codebook_size, **META)


def _split(data):
    """(version, header dict, payload) of token-file bytes."""
    _, version, head_len = struct.unpack_from("<6sHI", data)
    return version, json.loads(data[12:12 + head_len]), data[12 + head_len:]


def _join(version, header, payload):
    head = json.dumps(header).encode()
    return MAGIC + struct.pack("<HI", version, len(head)) + head + payload


def _reference_pack(codes, bits):
    """Bit-by-bit packing, LSB first, as the format documents it."""
    out = bytearray(math.ceil(len(codes) * bits / 8))
    for i, code in enumerate(codes):
        for j in range(bits):
            if code >> j & 1:
                k = i * bits + j
                out[k // 8] |= 1 << (k % 8)
    return bytes(out)


def test_pack_bit_order_is_lsb_first():
    assert pack_codes(np.array([1, 2]), 2) == bytes([0b1001])
    codes = np.random.default_rng(1).integers(0, 8192, 101)
    assert pack_codes(codes, 13) == _reference_pack(codes.tolist(), 13)
    np.testing.assert_array_equal(unpack_codes(pack_codes(codes, 13), 101, 13), codes)


def test_round_trip_file(tmp_path):
    tokens, _ = _valid_bytes()
    path = tmp_path / "speech.mtok"
    write_tokens(path, tokens, num_samples=[44100, 40000], **META)
    result = read_tokens(path)
    assert isinstance(result, TokenFile)
    assert result.tokens.dtype == np.int64 and result.tokens.shape == (2, 12, 21)
    np.testing.assert_array_equal(result.tokens, tokens)
    assert (result.sample_rate, result.num_samples, result.model_id) == (44100, [44100, 40000], META["model_id"])
    assert (result.codebook_size, result.version) == (8192, FORMAT_VERSION)
    assert path.read_bytes().startswith(MAGIC)


def test_two_dimensional_tokens_and_scalar_length(tmp_path):
    tokens = np.arange(24, dtype=np.int16).reshape(12, 2)
    write_tokens(tmp_path / "a.mtok", tokens, num_samples=3000, **META)
    result = read_tokens(tmp_path / "a.mtok")
    np.testing.assert_array_equal(result.tokens, tokens[None])
    assert result.num_samples == [3000]


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 3), rows=st.integers(1, 13), frames=st.integers(0, 40),
       codebook_size=st.integers(2, 65536), seed=st.integers(0, 2 ** 32 - 1))
def test_round_trip_property(batch, rows, frames, codebook_size, seed):
    tokens = np.random.default_rng(seed).integers(0, codebook_size, (batch, rows, frames))
    tokens.reshape(-1)[:1] = codebook_size - 1
    data = tokens_to_bytes(tokens, num_samples=list(range(batch)), codebook_size=codebook_size, **META)
    result = tokens_from_bytes(data)
    np.testing.assert_array_equal(result.tokens, tokens)
    bits = max(1, math.ceil(math.log2(codebook_size)))
    assert len(_split(data)[2]) == math.ceil(tokens.size * bits / 8)


def test_payload_is_13_bits_per_code():
    tokens, data = _valid_bytes(shape=(1, 12, 12920))
    version, header, payload = _split(data)
    assert header["bits_per_code"] == 13
    assert len(payload) == header["payload_bytes"] == math.ceil(12 * 12920 * 13 / 8)
    assert header["payload_crc32"] == zlib.crc32(payload)
    assert header["shape"] == [1, 12, 12920] and header["order"].startswith("batch, row, time")


def test_bad_magic():
    _, data = _valid_bytes()
    with pytest.raises(BadMagicError, match="not a meltok token file"):
        tokens_from_bytes(b"RIFF" + data[4:])


def test_future_version():
    _, data = _valid_bytes()
    version, header, payload = _split(data)
    header["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(UnsupportedVersionError, match="upgrade"):
        tokens_from_bytes(_join(FORMAT_VERSION + 1, header, payload))


@pytest.mark.parametrize("keep", [3, 10, 40])
def test_truncated_header(keep):
    _, data = _valid_bytes()
    with pytest.raises(TruncatedError):
        tokens_from_bytes(data[:keep])


def test_truncated_payload():
    _, data = _valid_bytes()
    with pytest.raises(TruncatedError, match="payload"):
        tokens_from_bytes(data[:-1])


def test_flipped_payload_bit_fails_checksum():
    _, data = _valid_bytes()
    corrupt = bytearray(data)
    corrupt[-5] ^= 0x10
    with pytest.raises(TokenFileError, match="checksum") as info:
        tokens_from_bytes(bytes(corrupt))
    assert type(info.value) is TokenFileError


@pytest.mark.parametrize("edit", [
    lambda h: h.update(shape=[2, 12, 22]), lambda h: h.update(bits_per_code=12), lambda h: h.update(order="time"),
    lambda h: h.update(num_samples=[1]), lambda h: h.pop("model_id"), lambda h: h.update(format_version=0),
    lambda h: h.update(sample_rate="44100")])
def test_inconsistent_header(edit):
    _, data = _valid_bytes()
    version, header, payload = _split(data)
    edit(header)
    with pytest.raises(TokenFileError, match="inconsistent header"):
        tokens_from_bytes(_join(version, header, payload))


def test_corrupt_json_and_trailing_bytes():
    _, data = _valid_bytes()
    version, header, payload = _split(data)
    head = json.dumps(header).encode()[:-1] + b"\xff"
    with pytest.raises(TokenFileError, match="JSON"):
        tokens_from_bytes(MAGIC + struct.pack("<HI", version, len(head)) + head + payload)
    with pytest.raises(TokenFileError, match="after its payload"):
        tokens_from_bytes(data + b"\x00")


def test_out_of_range_code_on_write():
    tokens = np.zeros((1, 12, 5), np.int64)
    tokens[0, 3, 4] = 8192
    with pytest.raises(CodeRangeError, match=r"code 8192 at position \(0, 3, 4\)"):
        tokens_to_bytes(tokens, num_samples=1000, **META)
    tokens[0, 3, 4] = -1
    with pytest.raises(CodeRangeError, match="code -1"):
        tokens_to_bytes(tokens, num_samples=1000, **META)


def test_out_of_range_code_on_read():
    tokens = np.full((1, 2, 3), 7, np.int64)
    tokens[0, 1, 2] = 8191
    payload = pack_codes(tokens, 13)
    header = dict(format_version=1, model_id="m", sample_rate=44100, num_samples=[100], shape=[1, 2, 3],
                  codebook_size=5000, bits_per_code=13, order="batch, row, time (time fastest)",
                  payload_bytes=len(payload), payload_crc32=zlib.crc32(payload))
    with pytest.raises(CodeRangeError, match=r"code 8191 at position \(0, 1, 2\).*5000"):
        tokens_from_bytes(_join(1, header, payload))


@pytest.mark.parametrize("kwargs,match", [
    (dict(tokens=np.zeros((12, 3), np.float32)), "integer dtype"),
    (dict(tokens=np.zeros((12,), np.int64)), "shape"),
    (dict(tokens=np.zeros((1, 1, 12, 3), np.int64)), "shape"),
    (dict(num_samples=[1, 2]), "num_samples"),
    (dict(num_samples=-1), "num_samples"),
    (dict(codebook_size=1), "codebook_size"),
    (dict(sample_rate=0), "sample_rate"),
    (dict(model_id=None), "model_id")])
def test_write_rejects_bad_arguments(kwargs, match):
    arguments = dict(tokens=np.zeros((1, 12, 3), np.int64), num_samples=100, **META) | kwargs
    with pytest.raises(TokenFileError, match=match):
        tokens_to_bytes(arguments.pop("tokens"), **arguments)


def test_read_missing_empty_and_directory(tmp_path):
    with pytest.raises(TokenFileError, match="does not exist") as info:
        read_tokens(tmp_path / "missing.mtok")
    assert "missing.mtok" in str(info.value) and isinstance(info.value, MeltokError)
    (tmp_path / "empty.mtok").write_bytes(b"")
    with pytest.raises(TokenFileError, match="empty"):
        read_tokens(tmp_path / "empty.mtok")
    with pytest.raises(TokenFileError, match="directory"):
        read_tokens(tmp_path)


def test_write_to_missing_folder_or_directory(tmp_path):
    with pytest.raises(OutputPathError):
        write_tokens(tmp_path / "no" / "t.mtok", np.zeros((12, 2), np.int64), num_samples=10, **META)
    with pytest.raises(OutputPathError):
        write_tokens(tmp_path, np.zeros((12, 2), np.int64), num_samples=10, **META)


def test_interrupted_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "t.mtok"
    write_tokens(path, np.ones((12, 4), np.int64), num_samples=1024, **META)
    before = path.read_bytes()

    def write_half_then_fail(self, data):
        with open(self, "wb") as handle:
            handle.write(data[:len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", write_half_then_fail)
    with pytest.raises(OutputPathError, match="No space left"):
        write_tokens(path, np.zeros((12, 400), np.int64), num_samples=90000, **META)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["t.mtok"]


def _mutate(data, edits):
    data = bytearray(data)
    for kind, position, value in edits:
        position %= max(len(data), 1)
        if kind == "set" and data:
            data[position] = value
        elif kind == "insert":
            data.insert(position, value)
        elif kind == "delete" and data:
            del data[position]
        elif kind == "cut":
            del data[position:]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=200).map(lambda tail: MAGIC + tail),
    st.lists(st.tuples(st.sampled_from(["set", "insert", "delete", "cut"]), st.integers(0, 10 ** 6),
                       st.integers(0, 255)), min_size=1, max_size=4).map(lambda e: _mutate(_valid_bytes((1, 3, 5))[1], e)),
))
def test_fuzz_only_meltok_errors_escape(data):
    try:
        result = tokens_from_bytes(data)
    except MeltokError:
        return
    assert result.tokens.dtype == np.int64 and (result.tokens < result.codebook_size).all()


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["format_version", "model_id", "sample_rate", "num_samples", "shape",
                                        "codebook_size", "bits_per_code", "order", "payload_bytes", "payload_crc32"]),
                       st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(),
                                 st.text(max_size=5), st.lists(st.integers(-5, 2 ** 40), max_size=4))))
def test_fuzz_header_values(overrides):
    _, data = _valid_bytes((1, 3, 5))
    version, header, payload = _split(data)
    header.update(overrides)
    try:
        tokens_from_bytes(_join(version, header, payload))
    except MeltokError:
        pass


def test_channels_and_live_capture_are_recorded_and_older_files_still_read():
    tokens = np.arange(24, dtype=np.int64).reshape(1, 12, 2)
    common = dict(sample_rate=44100, num_samples=3000, model_id="m", codebook_size=8192)
    written = tokens_from_bytes(tokens_to_bytes(tokens, source_sample_rate=48000, source_num_samples=[3265],
                                                channels=2, streamed=True, lookahead_seconds=0.2, **common))
    assert (written.channels, written.streamed, written.lookahead_seconds) == (2, True, 0.2)
    described = written.describe()
    assert described["source"] == {"sample_rate": 48000, "num_samples": [3265], "seconds": [3265 / 48000],
                                   "channels": 2}
    assert described["streamed"] is True and described["lookahead_seconds"] == 0.2
    older = tokens_from_bytes(tokens_to_bytes(tokens, **common))  # a file from before these keys
    assert (older.channels, older.streamed, older.lookahead_seconds) == (None, False, None)
    assert "source" not in older.describe() and older.describe()["streamed"] is False
    with pytest.raises(TokenFileError, match="lookahead_seconds"):
        tokens_to_bytes(tokens, streamed=True, **common)
    with pytest.raises(TokenFileError, match="channels"):
        tokens_to_bytes(tokens, channels=0, **common)
