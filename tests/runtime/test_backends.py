"""The backend interface, the automatic choice, refusal of mismatched engines and corrupt bundles."""
import dataclasses
import hashlib
import json
import logging
import sys
import threading

import numpy as np
import pytest

from meltok_runtime import Codec
from meltok_runtime.backends import BACKENDS, OrtCpuBackend, TrtBackend, availability
from meltok_runtime.backends import trt as trt_module
from meltok_runtime.backends.base import Backend
from meltok_runtime.errors import (BackendError, BundleError, EngineMismatchError, InputSpecError,
                                   ModelMismatchError)
from meltok_runtime.manifest import EngineEntry, load_manifest

from .gpu_fakes import FakeCudart, fake_tensorrt


# ------------------------------------------------------------------------------ interface
@pytest.fixture(scope="module")
def manifest(tiny_bundle):
    return load_manifest(tiny_bundle)


@pytest.fixture(scope="module")
def encoder(tiny_bundle, manifest):
    with OrtCpuBackend(tiny_bundle, manifest, "encoder", threads=1) as backend:
        yield backend


def test_backend_exposes_manifest_specs_and_runs(encoder, manifest):
    assert encoder.is_open and encoder.name == "ort-cpu"
    assert [s.name for s in encoder.inputs] == ["audio"] and [s.name for s in encoder.outputs] == ["tokens"]
    assert encoder.inputs == manifest.graphs["encoder"].inputs
    out = encoder.run({"audio": np.zeros((2, 8 * 2048 - 256), np.float32)})
    assert list(out) == ["tokens"] and out["tokens"].dtype == np.int32 and out["tokens"].shape == (2, 12, 8)


@pytest.mark.parametrize("feeds,match", [
    ({"samples": np.zeros((1, 1792), np.float32)}, "missing \\['audio'\\], unexpected \\['samples'\\]"),
    ({"audio": np.zeros((1, 1792), np.float32), "extra": np.zeros(1)}, "unexpected \\['extra'\\]"),
    ({}, "missing"),
    ({"audio": np.zeros((1, 1792), np.float64)}, "dtype float64.*expects float32"),
    ({"audio": np.zeros(1792, np.float32)}, "rank 2"),
    ({"audio": np.zeros((1, 1, 1792), np.float32)}, "rank 2"),
    ({"audio": np.zeros((1, 0), np.float32)}, "empty"),
    ({"audio": [[0.0] * 1792]}, "numpy array"),
])
def test_bad_feeds_raise_input_spec_error(encoder, feeds, match):
    with pytest.raises(InputSpecError, match=match):
        encoder.run(feeds)


def test_fixed_dimension_is_checked(tiny_bundle, manifest):
    with OrtCpuBackend(tiny_bundle, manifest, "decoder") as decoder:
        with pytest.raises(InputSpecError, match="size 11 on axis 1.*expects 12"):
            decoder.run({"tokens": np.zeros((1, 11, 4), np.int32)})
        assert decoder.run({"tokens": np.zeros((1, 12, 4), np.int32)})["audio"].shape == (1, (8 * 4 - 1) * 256)


def test_closed_backend_refuses_to_run(tiny_bundle, manifest):
    backend = OrtCpuBackend(tiny_bundle, manifest, "encoder")
    with pytest.raises(BackendError, match="not open"):
        backend.run({"audio": np.zeros((1, 1792), np.float32)})
    with backend:
        backend.run({"audio": np.zeros((1, 1792), np.float32)})
    assert not backend.is_open
    with pytest.raises(BackendError, match="not open"):
        backend.run({"audio": np.zeros((1, 1792), np.float32)})


def test_bad_constructor_arguments(tiny_bundle, manifest):
    with pytest.raises(BackendError, match="no 'vocoder' graph"):
        OrtCpuBackend(tiny_bundle, manifest, "vocoder")
    with pytest.raises(BackendError, match="threads"):
        OrtCpuBackend(tiny_bundle, manifest, "encoder", threads=0)


class EchoBackend(Backend):
    """A pure-numpy backend that records how the base class calls it."""

    name = "echo"
    serialize_runs = True

    def _open(self):
        self.active = 0
        self.overlaps = 0
        self.lock = threading.Lock()

    def _run(self, feeds):
        with self.lock:
            self.active += 1
            self.overlaps += self.active > 1
        assert feeds["audio"].flags.c_contiguous
        audio = feeds["audio"]
        result = {"tokens": np.zeros((audio.shape[0], 12, 1), np.int32)}
        with self.lock:
            self.active -= 1
        return result if audio.shape[0] != 3 else {}

    def _close(self):
        pass


def test_base_class_serialises_runs_and_checks_outputs(tiny_bundle, manifest):
    with EchoBackend(tiny_bundle, manifest, "encoder") as backend:
        audio = np.zeros((2, 4000), np.float32)[:, ::2]  # not contiguous: the base makes it so
        threads = [threading.Thread(target=lambda: [backend.run({"audio": audio}) for _ in range(50)])
                   for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert backend.overlaps == 0
        with pytest.raises(BackendError, match="returned no \\['tokens'\\]"):
            backend.run({"audio": np.zeros((3, 2000), np.float32)})


# ------------------------------------------------------------------------------ choice of backend
def test_auto_falls_back_to_ort_cpu_and_says_why(tiny_bundle, caplog):
    with caplog.at_level(logging.INFO, logger="meltok_runtime"):
        with Codec.open(tiny_bundle) as codec:
            assert codec.backend == "ort-cpu"
            assert set(codec.skipped) == {"trt", "ort-cuda"}
            assert "no TensorRT engine" in codec.skipped["trt"]
    assert "picked ort-cpu" in caplog.text and "ort-cuda skipped" in caplog.text


def test_named_backend_that_cannot_run_raises(tiny_bundle):
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        with pytest.raises(BackendError, match="replace onnxruntime by onnxruntime-gpu"):
            Codec.open(tiny_bundle, backend="ort-cuda")
    with pytest.raises(BackendError, match="no TensorRT engine"):
        Codec.open(tiny_bundle, backend="trt")
    with pytest.raises(BackendError, match="unknown backend 'tensorflow'"):
        Codec.open(tiny_bundle, backend="tensorflow")


def test_availability_report(tiny_bundle, manifest):
    report = availability(tiny_bundle, manifest)
    assert list(report) == ["trt", "ort-cuda", "ort-cpu"] and report["ort-cpu"] is None
    assert report["trt"]


# ------------------------------------------------------------------------------ TensorRT engines
HERE = {"tensorrt_version": "10.3.0", "compute_capability": "9.0"}


def engine_manifest(manifest, **changes):
    """The tiny manifest with one encoder and one decoder engine that match HERE, then ``changes``."""
    engines = []
    for graph in ("encoder", "decoder"):
        entry = EngineEntry(graph=graph, file=f"{graph}.plan", sha256="0" * 64,
                            onnx_sha256=manifest.graphs[graph].sha256, tensorrt_version="10.3.0",
                            compute_capability="9.0", device_name="NVIDIA H100 80GB HBM3", precision="fp16",
                            profile={})
        engines.append(dataclasses.replace(entry, **changes))
    return dataclasses.replace(manifest, engines=tuple(engines))


def test_matching_engine_is_accepted(manifest):
    entry = trt_module.check_engine(engine_manifest(manifest), "decoder", **HERE)
    assert entry.graph == "decoder"


@pytest.mark.parametrize("changes,match", [
    ({"compute_capability": "8.6"}, "built for compute capability 8.6 .* this machine has compute capability 9.0"),
    ({"tensorrt_version": "10.0.1"}, "with TensorRT 10.0.1, but this machine has .* TensorRT 10.3.0"),
    ({"onnx_sha256": "f" * 64}, "built from another ONNX file"),
])
def test_mismatched_engine_is_refused(manifest, changes, match):
    with pytest.raises(EngineMismatchError, match=match) as caught:
        trt_module.check_engine(engine_manifest(manifest, **changes), "encoder", **HERE)
    assert isinstance(caught.value, ModelMismatchError) and isinstance(caught.value, BackendError)


def test_bundle_without_engines_is_a_backend_error(manifest):
    with pytest.raises(BackendError, match="no TensorRT engine for its encoder graph"):
        trt_module.check_engine(manifest, "encoder", **HERE)


def test_engine_file_must_match_its_hash(tmp_path, manifest):
    (tmp_path / "encoder.plan").write_bytes(b"engine bytes")
    good = dataclasses.replace(engine_manifest(manifest).engines[0],
                               sha256=hashlib.sha256(b"engine bytes").hexdigest())
    assert trt_module.read_engine(tmp_path, good) == b"engine bytes"
    (tmp_path / "encoder.plan").write_bytes(b"engine bytes, modified")
    with pytest.raises(BundleError, match="does not match the hash"):
        trt_module.read_engine(tmp_path, good)
    (tmp_path / "encoder.plan").unlink()
    with pytest.raises(BundleError, match="cannot read the TensorRT engine"):
        trt_module.read_engine(tmp_path, good)


@pytest.fixture
def fake_gpu(monkeypatch):
    """An emulated compute capability 9.0 GPU with TensorRT 10.3.0; returns what TensorRT deserialised."""
    cudart = FakeCudart()
    tensorrt = fake_tensorrt(cudart, version="10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    return tensorrt.deserialized


def write_engines(bundle, manifest, **changes):
    """Put fake engine files and their entries into a bundle copy's manifest."""
    fake = engine_manifest(manifest, **changes)
    engines = []
    for entry in fake.engines:
        (bundle / entry.file).write_bytes(b"not really an engine")
        engines.append(dataclasses.replace(entry, sha256=hashlib.sha256(b"not really an engine").hexdigest()))
    dataclasses.replace(fake, engines=tuple(engines)).write(bundle)


def test_engine_for_another_gpu_is_never_run(bundle_copy, manifest, fake_gpu, caplog):
    write_engines(bundle_copy, manifest, compute_capability="8.0", device_name="NVIDIA A100")
    with pytest.raises(EngineMismatchError, match="compute capability 8.0 \\(NVIDIA A100\\)"):
        Codec.open(bundle_copy, backend="trt")
    with caplog.at_level(logging.INFO, logger="meltok_runtime"):
        with Codec.open(bundle_copy) as codec:  # auto: refused, then the next backend
            assert codec.backend == "ort-cpu" and "compute capability 8.0" in codec.skipped["trt"]
    assert any(r.levelno == logging.WARNING and "trt skipped" in r.getMessage() for r in caplog.records)
    assert fake_gpu == []  # TensorRT never saw the file


def test_valid_engine_metadata_reaches_tensorrt(bundle_copy, manifest, fake_gpu):
    write_engines(bundle_copy, manifest)
    with pytest.raises(BackendError, match="TensorRT could not load the engine"):
        Codec.open(bundle_copy, backend="trt")
    assert fake_gpu == [{"bytes": len(b"not really an engine"), "host_code": False}]


# ------------------------------------------------------------------------------ corrupt bundles
def test_missing_or_invalid_bundle_folder(tmp_path):
    with pytest.raises(BundleError, match="not a folder"):
        Codec.open(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="not a folder"):
        Codec.open(tmp_path / "file")


def test_missing_manifest(bundle_copy):
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="has no manifest.json"):
        Codec.open(bundle_copy)


def test_manifest_not_json_or_incomplete(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Codec.open(bundle_copy)
    (bundle_copy / "manifest.json").write_text(json.dumps({"format_version": 1, "model_id": "x"}))
    with pytest.raises(BundleError, match="missing or has wrong fields"):
        Codec.open(bundle_copy)


def test_missing_graph(bundle_copy):
    (bundle_copy / "decoder.onnx").unlink()
    with pytest.raises(BundleError, match="decoder graph .* is missing"):
        Codec.open(bundle_copy, backend="ort-cpu")


def test_graph_hash_mismatch(bundle_copy):
    data = bytearray((bundle_copy / "encoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle_copy / "encoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="encoder graph .* does not match the hash"):
        Codec.open(bundle_copy)


def test_truncated_graph(bundle_copy):
    path = bundle_copy / "decoder.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BundleError, match="does not match the hash"):
        Codec.open(bundle_copy)
    # even with a manifest rewritten to the truncated file's hash, loading fails cleanly
    manifest = load_manifest(bundle_copy, verify_files=False)
    graph = dataclasses.replace(manifest.graphs["decoder"], sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    dataclasses.replace(manifest, graphs={**manifest.graphs, "decoder": graph}).write(bundle_copy)
    with pytest.raises(BundleError, match="ONNX Runtime cannot load the decoder graph"):
        Codec.open(bundle_copy, backend="ort-cpu")
    with pytest.raises(BundleError, match="ONNX Runtime cannot load the decoder graph"):
        Codec.open(bundle_copy)  # auto: the corrupt graph is reported, not a missing backend


def test_graph_swapped_after_the_manifest_was_checked(bundle_copy, manifest):
    """The backend hashes the bytes it loads, not just the file seen at open time."""
    backend = OrtCpuBackend(bundle_copy, manifest, "encoder")
    (bundle_copy / "encoder.onnx").write_bytes((bundle_copy / "decoder.onnx").read_bytes())
    with pytest.raises(BundleError, match="does not match the hash"):
        backend.open()


def test_registry_names():
    assert {name: cls.name for name, cls in BACKENDS.items()} == {"trt": "trt", "ort-cuda": "ort-cuda",
                                                                   "ort-cpu": "ort-cpu"}
    assert TrtBackend.serialize_runs and not OrtCpuBackend.serialize_runs
