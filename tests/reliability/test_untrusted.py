"""Untrusted files: pickled official checkpoints need an explicit opt-in, and model files and bundles
are checked against their recorded hashes before use.

Official-format files are written by ``tests/meltok/official_format.py`` from the tiny preset,
then given the kinds of pickled objects real training scripts leave in them.
"""
import argparse
import os
import pathlib
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from meltok import MelTok
from meltok.cli import main as torch_cli
from meltok_runtime.cli.main import main as runtime_cli
from meltok_runtime.errors import BundleError, ModelFileError

from ..meltok.official_format import write_official_checkpoints
from . import tiny_assets


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """On this busy 2-core machine two spinning OpenMP threads are far slower than one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def assert_one_line_error(result, match):
    assert result.exit_code not in (0, None) and isinstance(result.exception, SystemExit), result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and match in lines[0], result.output
    assert "\x1b" not in lines[0]  # no terminal colour codes copied from torch's message


# ------------------------------------------------------------------------------ pickled checkpoints
class _RunsCode:
    """Unpickling this calls ``os.mkdir(marker)``: the kind of payload a weights-only load must never run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _pickled(stage, folder, name, edit):
    """A copy of an official-format file, same file name, in ``folder/name``, with ``edit(content)`` applied."""
    content = torch.load(stage, weights_only=True)
    edit(content)
    (folder / name).mkdir()
    torch.save(content, folder / name / stage.name)  # the model name comes from the stage-2 file name
    return folder / name / stage.name


PICKLED = {  # variant: (which file, edit) -- objects that a weights-only load refuses
    "namespace-hyper-parameters": ("stage2", lambda c: c.__setitem__("hyper_parameters",
                                                                     argparse.Namespace(sample_rate=44100))),
    "path-in-callback-state": ("stage2", lambda c: c.__setitem__(
        "callbacks", {"ModelCheckpoint": {"dirpath": pathlib.PurePosixPath("/runs/meltok")}})),
    "training-args-in-stage1": ("stage1", lambda c: c.__setitem__("args", argparse.Namespace(lr=1e-4, batch=8))),
}


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """Clean official-format files of a seeded tiny model, and the model id they convert to."""
    folder = tmp_path_factory.mktemp("official")
    torch.manual_seed(3)
    stage1, stage2 = write_official_checkpoints(MelTok.from_config("tiny"), folder)
    return {"stage1": stage1, "stage2": stage2, "model_id": MelTok.from_official(stage1, stage2).model_id}


def _variant(official, folder, name):
    stage, edit = PICKLED[name]
    files = {"stage1": official["stage1"], "stage2": official["stage2"]}
    files[stage] = _pickled(official[stage], folder, name, edit)
    return files["stage1"], files["stage2"]


@pytest.mark.parametrize("name", PICKLED)
def test_pickled_checkpoint_needs_allow_pickle(name, official, tmp_path):
    stage1, stage2 = _variant(official, tmp_path, name)
    with pytest.raises(ModelFileError, match="allow_pickle=True") as refused:
        MelTok.from_official(stage1, stage2)
    assert "GLOBAL " in str(refused.value) and "\n" not in str(refused.value)  # names the object
    model = MelTok.from_official(stage1, stage2, allow_pickle=True)
    assert model.model_id == official["model_id"]  # the same weights as the clean files


def test_cli_convert_refuses_then_trusts_with_the_flag(official, tmp_path):
    stage1, stage2 = _variant(official, tmp_path, "namespace-hyper-parameters")
    output = tmp_path / "model.safetensors"
    result = CliRunner().invoke(torch_cli, ["convert", str(stage1), str(stage2), "-o", str(output)])
    assert_one_line_error(result, "--trust-pickle")
    assert not output.exists()
    result = CliRunner().invoke(torch_cli, ["convert", str(stage1), str(stage2), "-o", str(output), "--trust-pickle"])
    assert result.exit_code == 0, result.output
    assert MelTok.load(output).model_id == official["model_id"]


def test_code_in_a_checkpoint_never_runs_without_the_flag(official, tmp_path):
    marker = tmp_path / "payload-ran"
    stage2 = _pickled(official["stage2"], tmp_path, "payload",
                      lambda c: c.__setitem__("callbacks", {"evil": _RunsCode(marker)}))
    with pytest.raises(ModelFileError, match="posix.mkdir"):
        MelTok.from_official(official["stage1"], stage2)
    result = CliRunner().invoke(torch_cli, ["convert", str(official["stage1"]), str(stage2), "-o",
                                            str(tmp_path / "m.safetensors")])
    assert_one_line_error(result, "--trust-pickle")
    assert not marker.exists() and not (tmp_path / "m.safetensors").exists()


def test_trusted_pickle_naming_missing_code_is_a_clear_error(official, tmp_path, monkeypatch):
    """With the flag, a pickle of a class that is not installed here fails with one line, not a traceback."""
    import sys
    import types

    module = types.ModuleType("reference_training_code")

    class Config:
        pass

    Config.__module__, Config.__qualname__ = module.__name__, "Config"
    module.Config = Config
    monkeypatch.setitem(sys.modules, module.__name__, module)
    stage2 = _pickled(official["stage2"], tmp_path, "foreign",
                      lambda c: c["hyper_parameters"].__setitem__("config", Config()))
    monkeypatch.delitem(sys.modules, module.__name__)
    result = CliRunner().invoke(torch_cli, ["convert", str(official["stage1"]), str(stage2), "-o",
                                            str(tmp_path / "m.safetensors"), "--trust-pickle"])
    assert_one_line_error(result, "No module named 'reference_training_code'")


# ------------------------------------------------------------------------------ model files
def test_model_file_with_a_modified_weight_is_refused(tiny, tmp_path):
    """A well-formed file whose weights were edited (not a damaged file): the recorded hash catches it."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(tiny.model_file), "pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(tiny.model_file))
    key = "quantizer.embedding.weight"
    state[key] = state[key].clone()
    state[key][7, 0] += 0.25  # one code vector moved
    tampered = tmp_path / "tampered.safetensors"
    save_file(state, str(tampered), metadata=metadata)
    with pytest.raises(ModelFileError, match="do not match their recorded hash"):
        MelTok.load(tampered)

    sf.write(tmp_path / "a.wav", np.zeros(4410, np.float32), 44100)
    result = CliRunner().invoke(torch_cli, ["encode", str(tmp_path / "a.wav"), "-m", str(tampered), "-o",
                                            str(tmp_path / "a.mtok")])
    assert_one_line_error(result, "recorded hash")
    assert not (tmp_path / "a.mtok").exists()


# ------------------------------------------------------------------------------ bundles
@pytest.fixture(scope="module")
def foreign_encoder(tmp_path_factory):
    """A valid encoder graph with the same inputs and outputs, from another (seeded) tiny model."""
    from meltok_export.onnx_export import export_graph

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("foreign") / "encoder.onnx"
    export_graph(MelTok.from_config("tiny"), "encoder", path, simplify_graph=False)
    return path


def test_bundle_graph_swapped_after_export_is_refused_at_open(tiny, foreign_encoder, tmp_path):
    import onnxruntime

    from meltok_runtime import Codec

    bundle = shutil.copytree(tiny.bundle, tmp_path / "bundle")
    shutil.copyfile(foreign_encoder, bundle / "encoder.onnx")
    session = onnxruntime.InferenceSession(str(bundle / "encoder.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["audio"]  # it would run: only the hash stops it
    for backend in ("auto", "ort-cpu"):
        with pytest.raises(BundleError, match="encoder graph .* does not match the hash"):
            Codec.open(bundle, backend=backend)

    sf.write(tmp_path / "a.wav", np.zeros(4410, np.float32), 44100)
    output = tmp_path / "a.mtok"
    result = CliRunner().invoke(runtime_cli, ["encode", str(tmp_path / "a.wav"), "-b", str(bundle), "-o",
                                              str(output), "--threads", "1"])
    assert_one_line_error(result, "does not match the hash")
    assert not output.exists()
