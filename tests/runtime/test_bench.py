"""``meltok-rt bench`` at tiny sizes: on this machine (ort-cpu runs; trt and ort-cuda are rows that did not
run, never figures), and on the emulated GPU of ``gpu_fakes`` (its timings mean nothing: the fake engines
run on the CPU; the test checks that GPU rows run through the real backends and are reported)."""
import json
import sys

from click.testing import CliRunner

from meltok_runtime.backends import cuda as cuda_module
from meltok_runtime.cli.main import main

from .gpu_fakes import FakeCudart, FakeDriver, fake_tensorrt
from .test_gpu_backends import add_engines

TINY = ["--seconds", "0.5,1", "--batch", "2", "--repeats", "1", "--stream-seconds", "1", "--threads", "1"]


def bench(bundle, *args):
    result = CliRunner().invoke(main, ["bench", "-b", str(bundle), *TINY, *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def test_this_machine_times_what_runs_and_lists_what_does_not(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(cuda_module, "_load_driver", lambda: None)
    output = bench(tiny_bundle, "--json", tmp_path / "bench.json")
    report = json.loads((tmp_path / "bench.json").read_text())
    ran = [row for row in report["rows"] if row["status"] == "ran"]
    assert {(r["op"], r["batch"], r["seconds"]) for r in ran if r["op"] != "stream-decode"} == {
        (op, batch, seconds) for op in ("encode", "decode") for batch in (1, 2) for seconds in (0.5, 1.0)}
    assert all(r["backend"] == "ort-cpu" and r["x_realtime"] > 0 for r in ran)
    assert all(r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] for r in ran if "median_ms" in r)
    stream = next(r for r in ran if r["op"] == "stream-decode")
    assert stream["first_audio_ms"] > 0 and stream["x_realtime"] > 0
    missing = [row for row in report["rows"] if row["status"] != "ran"]
    assert [row["backend"] for row in missing] == ["trt", "ort-cuda"] and report["not_run"] == 2
    assert all(row["status"].startswith("not run: ") and "x_realtime" not in row for row in missing)
    assert report["gpu"].startswith("no NVIDIA GPU here") and report["machine"]["onnxruntime"]["version"]
    assert report["memory"]["peak_rss_mb"] > 0 and "verification clip" in report["audio"]
    assert "2 row(s) did not run (see their status); they are not results" in output


def test_a_configuration_over_the_budget_is_not_run(tiny_bundle, tmp_path):
    bench(tiny_bundle, "--backend", "ort-cpu", "--budget-seconds", "0", "--json", tmp_path / "bench.json")
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    over = [row for row in rows if row["status"].startswith("not run: estimated")]
    assert over and all("x_realtime" not in row for row in over)
    assert [row["seconds"] for row in rows if row["status"] == "ran" and row["op"] == "encode"] == [0.5]


def test_gpu_rows_run_through_the_trt_backend(bundle_copy, tmp_path, monkeypatch):
    cudart = FakeCudart()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(cudart))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    monkeypatch.setattr(cuda_module, "_load_driver", lambda: FakeDriver(count=1))
    add_engines(bundle_copy)
    bench(bundle_copy, "--backend", "trt", "--json", tmp_path / "bench.json")
    report = json.loads((tmp_path / "bench.json").read_text())
    assert {row["backend"] for row in report["rows"]} == {"trt"} and report["not_run"] == 0
    assert report["gpu"] == "NVIDIA H100 80GB HBM3 (compute capability 9.0)"
    assert "trt" in report["memory"]  # NVML's figure, or why it was not measured
