"""``meltok-rt engines``: TensorRT engines built into a bundle where it runs, without PyTorch, checked
against ONNX Runtime CPU on the bundle's verification clip, and the ``trtexec``/``polygraphy`` lines the
export writes. TensorRT and the GPU are the fakes of ``gpu_fakes``: their engines run the ONNX graph on
ONNX Runtime CPU, so these tests check the decisions, file handling and data paths, not GPU numerics."""
import io
import json
import shlex
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from meltok_runtime import Codec
from meltok_runtime.cli.main import main
from meltok_runtime.engines.bundle import build_engines
from meltok_runtime.engines.commands import COMMANDS_FILE
from meltok_runtime.engines.plan import EngineOptions, plan_engines
from meltok_runtime.manifest import load_manifest

from .gpu_fakes import FakeContext, FakeCudart, fake_tensorrt, fake_tensorrt_builder


@pytest.fixture
def builder(monkeypatch, tmp_path):
    """TensorRT 10.3's builder (JetPack 6's version) on an emulated GPU; the timing cache in ``tmp_path``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cudart = FakeCudart()
    trt = fake_tensorrt_builder(cudart, "10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    return trt


def engines(*args):
    return CliRunner().invoke(main, ["engines", *map(str, args)])


def test_engines_are_built_checked_and_added(builder, bundle_copy, long_music):
    before = load_manifest(bundle_copy)
    assert before.verification and before.float32_nodes["encoder"]  # stored at export
    result = engines(bundle_copy, "--max-seconds", 4, "--max-batch", 2, "--stream-profile")
    assert result.exit_code == 0, result.output
    assert "token agreement with ONNX Runtime CPU 100.00%" in result.output
    manifest = load_manifest(bundle_copy)
    assert [e.graph for e in manifest.engines] == ["encoder", "decoder"]
    assert all(e.stream_profile and e.tensorrt_version == "10.3.0" and e.file == f"{e.graph}-{e.sha256[:12]}.plan"
               for e in manifest.engines)
    assert manifest.limits["max_seconds"] == 4.0 and manifest.tolerances["tensorrt_here"]["passed"]
    assert manifest.tolerances["tensorrt_here"]["pieces"][1][0] < manifest.limits["max_samples"]  # stream piece ran
    assert builder.log["cleared"] == {"TF32"} and len(builder.log["profiles"]) == 2
    assert not [p for p in bundle_copy.iterdir() if p.name.startswith(".")]  # no staging folder left
    audio = long_music[: 6 * 44100]  # longer than the profile: windowed
    with Codec.open(bundle_copy, backend="trt") as codec, Codec.open(bundle_copy, backend="ort-cpu") as cpu:
        assert np.array_equal(codec.encode(audio), cpu.encode(audio))

    again = engines(bundle_copy)
    assert again.exit_code == 1 and "already has TensorRT engines" in again.output
    old = {e.file for e in manifest.engines}
    result = engines(bundle_copy, "--precision", "fp16", "--max-seconds", 4, "--max-batch", 2, "--force")
    assert result.exit_code == 0, result.output
    assert builder.log["set"] == {"FP16", "OBEY_PRECISION_CONSTRAINTS"}  # TensorRT 10, float32 graph: weakly typed
    pinned = {layer.name for layer in builder.log["network"].layers if layer.precision == builder.float32}
    assert pinned == set(before.float32_nodes["decoder"])
    replaced = load_manifest(bundle_copy)
    assert {e.precision for e in replaced.engines} == {"fp16"}
    assert not any((bundle_copy / name).exists() for name in old - {e.file for e in replaced.engines})


def test_only_the_lean_runtime_says_in_one_line_that_engines_cannot_be_built_here(monkeypatch, bundle_copy):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_lean", fake_tensorrt(FakeCudart(), name="tensorrt_lean"))
    result = engines(bundle_copy)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "cannot be built here (only TensorRT's lean runtime" in lines[0]
    assert "JetPack" in lines[0] and "pip install -e '.[trt-build]'" in lines[0]


def test_engines_that_fail_the_check_leave_the_bundle_as_it_was(builder, bundle_copy, monkeypatch):
    manifest_bytes = (bundle_copy / "manifest.json").read_bytes()
    files = sorted(p.name for p in bundle_copy.iterdir())
    monkeypatch.setattr(FakeContext, "execute_async_v3", lambda self, stream: True)  # an engine that computes nothing
    result = engines(bundle_copy, "--max-seconds", 4, "--max-batch", 2)
    assert result.exit_code == 1 and "fail their check against ONNX Runtime CPU" in result.output
    assert (bundle_copy / "manifest.json").read_bytes() == manifest_bytes
    assert sorted(p.name for p in bundle_copy.iterdir()) == files


def test_a_bundle_without_a_verification_clip_is_refused_before_any_build(builder, bundle_copy):
    import dataclasses

    dataclasses.replace(load_manifest(bundle_copy), verification={}).write(bundle_copy)
    result = engines(bundle_copy)
    assert result.exit_code == 1 and "holds no verification clip" in result.output
    assert builder.log["profiles"] == []


def _flags(line: str) -> list[tuple[str, str]]:
    """``[(flag, value)]`` of a trtexec line (``--name=value`` words)."""
    return [tuple(word.split("=", 1)) if "=" in word else (word, "") for word in shlex.split(line)[1:]]


def _trtexec_profiles(line: str) -> list[dict]:
    flags = _flags(line)
    keys = {"--minShapes": "min", "--optShapes": "opt", "--maxShapes": "max"}
    profiles = []
    for flag, value in flags:
        if flag in keys:
            if flag == "--minShapes":
                profiles.append({})
            for item in value.split(","):
                name, dims = item.rsplit(":", 1)
                profiles[-1].setdefault(name, {})[keys[flag]] = [int(d) for d in dims.split("x")]
    return profiles


def _polygraphy_profiles(line: str) -> list[dict]:
    words, profiles, key = shlex.split(line), [], None
    for word in words:
        if word in ("--trt-min-shapes", "--trt-opt-shapes", "--trt-max-shapes"):
            key = word.split("-")[3]
            if key == "min":
                profiles.append({})
        elif word.startswith("--"):
            key = None
        elif key:
            name, dims = word.rsplit(":", 1)
            profiles[-1].setdefault(name, {})[key] = json.loads(dims)
    return profiles


def test_the_exported_command_lines_carry_the_builders_own_decisions(builder, bundle_copy):
    record = json.loads((bundle_copy / COMMANDS_FILE).read_text())
    manifest = load_manifest(bundle_copy)
    limits = record["limits"]  # an ONNX-only export: what `meltok-rt engines` does by default
    assert limits == EngineOptions(max_batch=manifest.limits["max_batch"]).limits(manifest)
    assert set(record["tensorrt"]) == {"10", "11"} and set(record["tensorrt"]["11"]) == {"fp32"}  # no weak fp16 on 11
    options = EngineOptions(max_seconds=limits["max_seconds"], opt_seconds=limits["opt_seconds"],
                            max_batch=limits["max_batch"])
    for major, precision in (("10", "fp16"), ("10", "fp32"), ("11", "fp32")):
        plans = plan_engines(manifest, EngineOptions(**{**options.__dict__, "precision": precision}), f"{major}.0",
                             limits)
        for graph, lines in record["tensorrt"][major][precision].items():
            flags = dict(_flags(lines["trtexec"]))
            assert _trtexec_profiles(lines["trtexec"]) == list(plans[graph].profiles)
            assert _polygraphy_profiles(lines["polygraphy"]) == list(plans[graph].profiles)
            assert "--noTF32" in flags and ("--stronglyTyped" in flags) == (major == "11")
            pinned = {item.rsplit(":", 1)[0] for item in flags.get("--layerPrecisions", "").split(",") if item}
            assert pinned == set(plans[graph].float32_layers) == (
                set(manifest.float32_nodes[graph]) if precision == "fp16" else set())
            assert flags.get("--precisionConstraints") == ("obey" if precision == "fp16" else None)
    # what the builder itself does with the fp16 plan on TensorRT 10: the same profiles and pinned layers
    build_engines(bundle_copy, manifest, EngineOptions(**{**options.__dict__, "precision": "fp16"}), limits=limits,
                  names={"encoder": "e.plan", "decoder": "d.plan"})
    decoder_line = record["tensorrt"]["10"]["fp16"]["decoder"]["trtexec"]
    assert builder.log["profiles"] == _trtexec_profiles(decoder_line)
    pinned = {layer.name for layer in builder.log["network"].layers if layer.precision == builder.float32}
    assert pinned == {item.rsplit(":", 1)[0] for item in dict(_flags(decoder_line))["--layerPrecisions"].split(",")}


def test_the_shipped_bundle_gets_engines_where_it_runs(builder, tmp_path):
    """The shipped bundle carries its verification clip and float32 layer names (``meltok-export annotate``), so
    `meltok-rt engines` works on it without the model; here, TensorRT 10's weakly typed fp16 from its fp32 graphs."""
    import shutil

    from meltok_runtime.codec import DEFAULT_BUNDLE

    bundle = shutil.copytree(DEFAULT_BUNDLE, tmp_path / "default")
    result = engines(bundle, "--precision", "fp16", "--max-seconds", 2, "--max-batch", 1)
    assert result.exit_code == 0, result.output
    manifest = load_manifest(bundle)
    assert {e.precision for e in manifest.engines} == {"fp16"} and manifest.tolerances["tensorrt_here"]["passed"]
    pinned = {layer.name for layer in builder.log["network"].layers if layer.precision == builder.float32}
    assert pinned == set(manifest.float32_nodes["decoder"])


def test_an_fp16_bundle_builds_strongly_typed_fp16_engines_by_default_on_tensorrt_11(monkeypatch, tmp_path,
                                                                                      tiny_model):
    from meltok_export.bundle import export_bundle

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cudart = FakeCudart()
    trt = fake_tensorrt_builder(cudart, "11.4.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    bundle = tmp_path / "fp16"
    export_bundle(tiny_model, bundle, precision="fp16", verify_seconds=1.0)
    assert engines(bundle, "--precision", "fp32").exit_code == 1  # an fp16 graph builds only fp16 engines
    result = engines(bundle, "--max-seconds", 4, "--max-batch", 2)
    assert result.exit_code == 0, result.output
    assert trt.log["network_flags"] == 0 and not trt.log["set"] and trt.log["cleared"] == {"TF32"}
    manifest = load_manifest(bundle)
    assert {e.precision for e in manifest.engines} == {"fp16"} and manifest.versions["tensorrt"] == "11.4.0"


def test_the_verification_file_has_the_same_bytes_whenever_it_is_written(monkeypatch):
    """Exports are deterministic (tests/reliability): the stored clip's archive carries no time stamp of its own."""
    import time

    from meltok_runtime.engines.reference import npz_bytes

    arrays = {"audio_pcm16": np.arange(-5, 5, dtype=np.int16), "tokens": np.ones((1, 12, 3), np.int16)}
    first = npz_bytes(arrays)
    real = time.localtime
    monkeypatch.setattr(time, "localtime", lambda seconds=None: real(400 * 86400.0))  # another day
    assert npz_bytes(arrays) == first
    with np.load(io.BytesIO(first)) as loaded:
        assert all(np.array_equal(loaded[name], value) for name, value in arrays.items())
