"""``python -m benchmarks.gpu_check``: its CPU-side logic on an emulated GPU (``tests/runtime/gpu_fakes.py``)."""
import sys

import numpy as np
import pytest

from benchmarks import gpu_check
from meltok_runtime.backends import cuda as cuda_module

from ..runtime.gpu_fakes import FakeCudart, FakeDriver, FakeOrtModule
from ..runtime.test_gpu_backends import add_engines


def test_without_a_gpu_it_says_so_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cuda_module, "_load_driver", lambda: None)
    assert gpu_check.main([]) == 1
    output = capsys.readouterr().out.strip().splitlines()
    assert output == ["GPU check not run: no NVIDIA GPU here (no NVIDIA driver is installed here (libcuda not "
                      "found), so CUDA cannot run)"]


@pytest.fixture
def fake_gpu(monkeypatch):
    from ..runtime.gpu_fakes import fake_tensorrt

    cudart = FakeCudart()
    monkeypatch.setitem(sys.modules, "onnxruntime", FakeOrtModule())
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(cudart))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    monkeypatch.setattr(cuda_module, "_load_driver", lambda: FakeDriver(count=1))


def test_token_comparison_on_an_emulated_gpu(fake_gpu, bundle_copy, long_music):
    add_engines(bundle_copy)
    audio = np.stack([long_music[:2 * 44100], long_music[5 * 44100:7 * 44100]])
    rows = gpu_check.compare_backends(bundle_copy, audio)
    assert [(r["backend"], r["status"], r["agreement"]) for r in rows] == [("ort-cuda", "passed", 1.0),
                                                                          ("trt", "passed", 1.0)]
    table = gpu_check.render(rows)
    assert "100.0000%" in table and table.count("passed") == 2


def test_rows_that_did_not_run_fail_the_check_unless_a_partial_run_is_allowed(fake_gpu, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "export_engines", lambda model, folder, precision: "no builder (test)")
    assert gpu_check.main(["--skip-tests", "--skip-speed"]) == 1
    output = capsys.readouterr().out
    assert "ort-cuda" in output and "100.0000%" in output and "not run: no builder (test)" in output
    assert output.strip().splitlines()[-1] == ("GPU check: FAILED (2 not run; pass --allow-partial to accept a "
                                               "partial run)")
    assert gpu_check.main(["--skip-tests", "--skip-speed", "--allow-partial"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "GPU check: passed (partial: 2 not run)"


def test_a_step_out_of_time_is_not_run_not_passed(fake_gpu, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "export_engines", lambda model, folder, precision: folder)
    monkeypatch.setattr(gpu_check, "compare_backends", lambda bundle, audio, backends=None: [
        {"bundle": str(bundle), "precision": "fp32", "backend": "trt", "agreement": 1.0, "needed": 1.0,
         "status": "passed"}])
    assert gpu_check.main(["--skip-speed", "--budget-seconds", "1"]) == 1  # no time left for the tests
    output = capsys.readouterr().out
    assert "not run (out of time)" in output and output.strip().endswith("(1 not run; pass --allow-partial to "
                                                                         "accept a partial run)")


def test_bench_rows_that_did_not_run_count_as_not_run(monkeypatch):
    from meltok_runtime.deploy import bench

    calls = []

    def fake_run_bench(bundle, backends, settings):
        calls.append((bundle, backends))
        return {"rows": [], "not_run": 2 if backends == ("trt",) else 0}
    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    monkeypatch.setattr(bench, "render", lambda report: "")
    assert gpu_check.speed("shipped", ["fp32-engines"], 100.0) == 2
    assert calls == [("shipped", ("ort-cuda",)), ("fp32-engines", ("trt",))]
