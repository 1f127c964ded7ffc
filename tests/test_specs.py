"""The written contracts for other runtimes (docs/token-file.md, docs/bundle.md) held to the code: the worked
token-file example byte for byte, the corruption errors, and the bundle page's constants, lengths and windows."""
import ast
import re
from pathlib import Path

import numpy as np
import pytest

from meltok_runtime import errors
from meltok_runtime.io.tokenfile import read_tokens, tokens_from_bytes, write_tokens
from meltok_runtime.lengths import decoded_length, padded_length, token_columns
from meltok_runtime.windowing import Window, plan_windows

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _block(text: str, language: str) -> str:
    return re.search(rf"```{language}\n(.*?)```", text, re.S).group(1)


def _table(text: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped of backticks) of the first table whose header row starts with ``heading``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {heading} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().replace("`", "") for cell in line.strip("|").split("|")])
    return rows


@pytest.fixture(scope="module")
def token_example():
    text = (DOCS / "token-file.md").read_text()
    data = bytes.fromhex("".join(_block(text, "hex").split()))
    tokens = np.array(ast.literal_eval(_block(text, "python").split("=", 1)[1].strip()))
    return data, tokens


def test_token_file_example_reads_and_writes_as_documented(token_example, tmp_path):
    data, tokens = token_example
    path = tmp_path / "example.mtok"
    path.write_bytes(data)
    read = read_tokens(path)
    np.testing.assert_array_equal(read.tokens, tokens)
    assert (read.model_id, read.sample_rate, read.num_samples, read.codebook_size, read.version) == (
        "meltok-edge:e219538591c9", 44100, [4000], 8192, 1)
    assert (read.source_sample_rate, read.source_num_samples) == (48000, [4354])
    written = tmp_path / "written.mtok"
    write_tokens(written, tokens, sample_rate=44100, num_samples=[4000], model_id="meltok-edge:e219538591c9",
                 codebook_size=8192, source_sample_rate=48000, source_num_samples=[4354])
    assert written.read_bytes() == data
    assert len(data) == 320 and data[12 + 298:] == bytes.fromhex("00200000c0ff5f00a409")


def test_token_file_corruptions_raise_the_documented_errors(token_example):
    data, _ = token_example
    payload_start = len(data) - 10
    corrupt = {
        "empty": (b"", errors.TokenFileError),
        "magic": (b"MELTOX" + data[6:], errors.BadMagicError),
        "prefix cut": (data[:9], errors.TruncatedError),
        "version 2": (data[:6] + b"\x02\x00" + data[8:], errors.UnsupportedVersionError),
        "version 0": (data[:6] + b"\x00\x00" + data[8:], errors.UnsupportedVersionError),
        "header cut": (data[:100], errors.TruncatedError),
        "header not JSON": (data[:12] + b"[" + data[13:], errors.TokenFileError),
        "order changed": (data.replace(b"time fastest", b"time slowest"), errors.TokenFileError),
        "payload cut": (data[:-1], errors.TruncatedError),
        "bytes after": (data + b"\x00", errors.TokenFileError),
        "checksum": (data[:payload_start] + b"\x01" + data[payload_start + 1:], errors.TokenFileError),
    }
    for name, (broken, error) in corrupt.items():
        with pytest.raises(error) as raised:
            tokens_from_bytes(broken, name=name)
        assert isinstance(raised.value, errors.MeltokError), name
    documented = {row[1] for row in _table((DOCS / "token-file.md").read_text(), "corruption")}
    assert documented == {"TokenFileError", "BadMagicError", "TruncatedError", "UnsupportedVersionError",
                          'TokenFileError ("inconsistent header")', "CodeRangeError", "ModelMismatchError"}


def test_bundle_constants_are_the_codes(default_manifest):
    from meltok.config import FrontendConfig
    from meltok_runtime.melfilters import hann_window, mel_filterbank
    from meltok_runtime.stream.spec import DEFAULT_FADE_SECONDS, DEFAULT_LOOKAHEAD_SECONDS, DEFAULT_STEP_SECONDS
    from meltok_runtime.windowing import DEFAULT_CONTEXT_SECONDS as CONTEXT, DEFAULT_WINDOW_SECONDS

    frontend, m = FrontendConfig(), default_manifest
    hop, compression = m.hop_length, m.compression
    code = {
        "sample_rate": m.sample_rate, "n_fft": frontend.n_fft, "win_length": hann_window(frontend.n_fft).size,
        "hop_length": hop, "n_mels": m.n_mels, "f_min": frontend.f_min, "f_max": frontend.f_max,
        "log_floor": frontend.log_floor, "mel_scale": frontend.mel_scale, "compression": compression,
        "token_rows": m.token_rows, "codebook_size": m.codebook_size, "column_samples": hop * compression,
        "min_samples": padded_length(1, hop, compression), "window_seconds": DEFAULT_WINDOW_SECONDS,
        "context_seconds": CONTEXT, "stream_lookahead_seconds": DEFAULT_LOOKAHEAD_SECONDS,
        "stream_step_seconds": DEFAULT_STEP_SECONDS, "stream_fade_seconds": DEFAULT_FADE_SECONDS,
    }
    table = {row[0]: float(row[1]) for row in _table((DOCS / "bundle.md").read_text(), "constant")}
    assert table == {name: float(value) for name, value in code.items()}
    assert (frontend.sample_rate, frontend.hop_length, frontend.n_mels) == (m.sample_rate, hop, m.n_mels)
    assert m.limits["min_samples"] == code["min_samples"]
    exact = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)  # the documented formula; float32 phase as torch
    np.testing.assert_allclose(hann_window(1024), exact, rtol=0, atol=2.5e-7)
    assert mel_filterbank(frontend.n_fft // 2 + 1, m.n_mels, m.sample_rate, frontend.f_min, frontend.f_max).shape == (
        513, 96)


def test_bundle_length_and_window_examples_are_the_codes():
    text = (DOCS / "bundle.md").read_text()
    for n, padded, frames, columns, decoded in _table(text, "`N`"):
        n, padded = int(n), int(padded)
        assert padded_length(n, 256, 8) == padded and padded // 256 + 1 == int(frames)
        assert token_columns(padded, 256, 8) == int(columns) and decoded_length(int(columns), 256, 8) == int(decoded)
    for count, windows in _table(text, "`C`"):
        listed = [Window(*map(int, group.split(", "))) for group in re.findall(r"\(([\d, ]+)\)", windows)]
        assert plan_windows(int(count), 258, 22) == listed


@pytest.fixture(scope="module")
def default_manifest():
    from meltok_runtime.codec import DEFAULT_BUNDLE
    from meltok_runtime.manifest import load_manifest

    return load_manifest(DEFAULT_BUNDLE, verify_files=False)


def test_bundle_page_lists_every_manifest_field():
    """A field added to the manifest needs its row in docs/bundle.md (and an engine field its name there)."""
    import dataclasses

    from meltok_runtime.manifest import EngineEntry, GraphEntry, Manifest

    text = (DOCS / "bundle.md").read_text()
    rows = {row[0]: row[2] for row in _table(text, "field")}
    assert set(rows) == {field.name for field in dataclasses.fields(Manifest)}
    for entry, field_name in ((GraphEntry, "graphs"), (EngineEntry, "engines")):
        missing = [f.name for f in dataclasses.fields(entry) if f.name not in rows[field_name]]
        assert missing == [], f"docs/bundle.md's {field_name} row lacks {missing}"
