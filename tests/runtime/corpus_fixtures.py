"""Fixtures of the token-dataset tests: a folder of real clips, and what ``meltok-rt encode`` writes for them."""
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from meltok_runtime.cli.main import main
from meltok_runtime.io.tokenfile import read_tokens

from .conftest import DATA

CLIPS = ("music.flac", "speech.flac", "effects.flac", "music48k.flac", "long_music.ogg")


def run_cli(*args):
    """``meltok-rt ARGS`` in this process; returns click's Result."""
    return CliRunner().invoke(main, [str(arg) for arg in args])


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> Path:
    """A folder ``clips/`` holding the real test clips (44.1 and 48 kHz, stereo, FLAC and Ogg; one of 40 s)."""
    folder = tmp_path_factory.mktemp("corpus") / "clips"
    folder.mkdir()
    for name in CLIPS:
        shutil.copy(DATA / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def encoded(clips, tmp_path_factory) -> dict:
    """Item id -> the token file ``meltok-rt encode`` writes for that clip (shipped default bundle)."""
    out = tmp_path_factory.mktemp("encoded")
    files = {}
    for name in CLIPS:
        result = run_cli("encode", clips / name, "-o", out / f"{name}.mtok", "--backend", "ort-cpu")
        assert result.exit_code == 0, result.output
        files[f"clips/{name}"] = read_tokens(out / f"{name}.mtok")
    return files


@pytest.fixture(scope="session")
def local_dataset(clips, tmp_path_factory) -> Path:
    """``meltok-rt tokenize clips -o DATASET --shard-rows 2`` with one worker (read-only for the tests)."""
    output = tmp_path_factory.mktemp("datasets") / "local"
    result = run_cli("tokenize", clips, "-o", output, "--shard-rows", 2, "--backend", "ort-cpu")
    assert result.exit_code == 0, result.output
    return output


def assert_same_tokens(dataset, encoded: dict) -> None:
    """Every item of ``dataset`` has exactly the tokens and length of ``meltok-rt encode``'s file."""
    from meltok_runtime.dataset import open_dataset

    items = {item.id: item for item in open_dataset(dataset)}
    assert sorted(items) == sorted(encoded)
    for item_id, token_file in encoded.items():
        assert items[item_id].tokens.shape == token_file.tokens.shape[1:], item_id
        assert (items[item_id].tokens == token_file.tokens[0]).all(), item_id
        assert items[item_id].num_samples == token_file.num_samples[0], item_id
