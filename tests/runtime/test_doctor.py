"""``meltok-rt doctor``: on this machine (no GPU, said plainly) and, through ``gpu_fakes``, on an H100 server
and a Jetson (the fakes stand in for the driver, cuda-python, onnxruntime-gpu and TensorRT: these tests
check what the doctor reads and concludes, not the hardware)."""
import json
import sys

import jsonschema
import pytest
from click.testing import CliRunner

from meltok_runtime.backends import cuda as cuda_module
from meltok_runtime.cli.main import main
from meltok_runtime.deploy import doctor as doctor_module
from meltok_runtime.deploy.doctor import REPORT_SCHEMA, diagnose
from meltok_runtime.deploy.machine import describe_machine

from .gpu_fakes import FakeCudart, FakeDriver, FakeOrtModule, fake_tensorrt
from .test_gpu_backends import add_engines

ORIN = ("Orin", 8, 7)


def doctor(*args):
    result = CliRunner().invoke(main, ["doctor", *map(str, args)])
    return result.exit_code, result.output


def test_on_this_machine_it_says_plainly_that_there_is_no_gpu(tiny_bundle, monkeypatch):
    monkeypatch.setattr(cuda_module, "_load_driver", lambda: None)  # also on a test machine that has a GPU
    code, output = doctor("-b", tiny_bundle, "--json")
    report = json.loads(output)
    jsonschema.validate(report, REPORT_SCHEMA)
    assert code == 0 and report["runs"] and report["auto"]["backend"] == "ort-cpu"
    assert report["gpu"] == "no NVIDIA GPU here (no NVIDIA driver is installed here (libcuda not found))"
    assert report["machine"]["jetson"] is None and report["problems"] == []
    code, output = doctor("-b", tiny_bundle, "--backend", "trt")
    assert code == 1 and "GPU: no NVIDIA GPU here" in output and "does NOT run here with --backend trt" in output
    assert "problem: trt cannot run this bundle here: the bundle has no TensorRT engine" in output


@pytest.fixture
def server(monkeypatch):
    """An H100 with its driver, cuda-python, onnxruntime-gpu and TensorRT 10.3 (all emulated)."""
    cudart = FakeCudart()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(cudart))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    monkeypatch.setitem(sys.modules, "onnxruntime", FakeOrtModule())
    driver = FakeDriver(count=1)
    monkeypatch.setattr(cuda_module, "_load_driver", lambda: driver)
    return type("Server", (), {"cudart": cudart, "driver": driver})


def test_a_gpu_server_with_matching_engines_runs_tensorrt(server, bundle_copy):
    add_engines(bundle_copy)  # TensorRT 10.3, compute capability 9.0
    code, output = doctor("-b", bundle_copy, "--json", "--backend", "trt")
    report = json.loads(output)
    jsonschema.validate(report, REPORT_SCHEMA)
    assert code == 0 and report["auto"] == {"backend": "trt", "reason": "trt is the first choice (trt, ort-cuda, "
                                                                         "ort-cpu) and runs here"}
    machine = report["machine"]
    assert machine["nvidia_driver"] == {"driver": "12.6", "devices": [{"name": "NVIDIA H100 80GB HBM3",
                                                                       "compute_capability": "9.0"}], "error": None}
    assert machine["tensorrt"] == {"kind": "full", "version": "10.3.0"} and machine["cuda_runtime"]["version"] == "12.6"
    assert "CUDAExecutionProvider" in machine["onnxruntime"]["providers"]
    assert all(engine["compatible"] for engine in report["bundle"]["engines"]) and report["problems"] == []


def test_a_jetson_with_engines_from_another_gpu_and_no_cuda_provider(server, bundle_copy, tmp_path, monkeypatch):
    add_engines(bundle_copy)  # built on an H100
    server.cudart.devices, server.driver.devices = [ORIN], [ORIN]
    monkeypatch.setitem(sys.modules, "onnxruntime", FakeOrtModule(providers=("CPUExecutionProvider",)))
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic\n")
    (tmp_path / "proc" / "device-tree").mkdir(parents=True)
    (tmp_path / "proc" / "device-tree" / "model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    nvpmodel = tmp_path / "nvpmodel"
    nvpmodel.write_text("#!/bin/sh\necho 'NV Power Mode: MAXN'\necho 0\n")
    nvpmodel.chmod(0o755)
    report = diagnose(bundle_copy, "auto", machine=describe_machine(tmp_path, str(nvpmodel)))
    jsonschema.validate(report, REPORT_SCHEMA)
    assert report["machine"]["jetson"] == {"l4t": "# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic",
                                           "model": "NVIDIA Jetson AGX Orin Developer Kit",
                                           "power_mode": "NV Power Mode: MAXN 0"}
    assert report["gpu"] == "Orin (compute capability 8.7)"
    assert not any(engine["compatible"] for engine in report["bundle"]["engines"])
    fixes = {problem["fix"] for problem in report["problems"]}
    assert f"meltok-rt engines {bundle_copy} --force" in fixes  # the full TensorRT can rebuild them here
    assert doctor_module.JETSON_ORT in fixes  # no CUDA provider: NVIDIA's Jetson wheels, not PyPI
    assert report["auto"]["backend"] == "ort-cpu" and report["runs"]
    text = doctor_module.render(report)
    assert "Jetson: NVIDIA Jetson AGX Orin Developer Kit; # R36" in text and "power mode NV Power Mode: MAXN" in text


def test_lean_runtime_only_points_at_version_compatible_engines(server, bundle_copy, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_lean", fake_tensorrt(server.cudart, name="tensorrt_lean"))
    add_engines(bundle_copy)
    report = diagnose(bundle_copy, "trt")
    assert report["machine"]["tensorrt"]["kind"] == "lean" and not report["runs"]
    assert "--version-compatible" in report["bundle"]["engines"][0]["reason"]
    assert any("--version-compatible" in problem["fix"] for problem in report["problems"])
