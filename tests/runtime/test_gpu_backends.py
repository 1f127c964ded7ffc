"""The GPU backends' run paths, executed on an emulated GPU (``gpu_fakes``): every line of ``TrtBackend`` and
``OrtCudaBackend`` runs in the default suite. The fake engines and sessions run the same ONNX graph on ONNX
Runtime CPU, so comparing their outputs with ONNX Runtime CPU's (exactly: same graph, same library) checks
the backends' copies, their order, synchronisation and dtypes, not GPU numerics; no GPU ran these tests."""
import dataclasses
import hashlib
import json
import logging
import sys
import threading
import time

import numpy as np
import pytest

from meltok_runtime.backends import OrtCpuBackend, OrtCudaBackend, TrtBackend
from meltok_runtime.backends import cuda as cuda_module
from meltok_runtime.backends import ort as ort_module
from meltok_runtime.errors import BackendError, EngineMismatchError, InputSpecError, MissingDependencyError
from meltok_runtime.lengths import padded_length, token_columns
from meltok_runtime.manifest import EngineEntry, load_manifest

from .gpu_fakes import FakeCudaError, FakeCudart, FakeDriver, FakeOrtModule, engine_bytes, fake_tensorrt

H100 = "NVIDIA H100 80GB HBM3"


def profiles(manifest, max_batch=4, max_seconds=12.0):
    samples = padded_length(int(max_seconds * manifest.sample_rate), manifest.hop_length, manifest.compression)
    columns = token_columns(samples, manifest.hop_length, manifest.compression)
    return {"encoder": {"audio": {"min": [1, 1792], "opt": [1, samples], "max": [max_batch, samples]}},
            "decoder": {"tokens": {"min": [1, manifest.token_rows, 1], "opt": [1, manifest.token_rows, columns],
                                   "max": [max_batch, manifest.token_rows, columns]}}}


def stream_profiles(manifest, max_seconds=2.0):
    """Stream-sized profiles (what ``meltok-rt engines --stream-profile`` adds as profile 1)."""
    return profiles(manifest, max_batch=1, max_seconds=max_seconds)


def add_engines(bundle, *, dtypes=None, stream=False, **changes):
    """Write fake engines (the bundle's own ONNX graphs, see ``gpu_fakes``) and their manifest entries;
    ``stream``: with a second, stream-sized optimisation profile."""
    manifest = load_manifest(bundle)
    engines = []
    extra = stream_profiles(manifest) if stream else {}
    for graph, profile in profiles(manifest).items():
        data = engine_bytes((bundle / manifest.graphs[graph].file).read_bytes(),
                            [profile] + ([extra[graph]] if stream else []), (dtypes or {}).get(graph))
        (bundle / f"{graph}.plan").write_bytes(data)
        entry = EngineEntry(graph=graph, file=f"{graph}.plan", sha256=hashlib.sha256(data).hexdigest(),
                            onnx_sha256=manifest.graphs[graph].sha256, tensorrt_version="10.3.0",
                            compute_capability="9.0", device_name=H100, precision="fp32", profile=profile,
                            stream_profile=extra.get(graph, {}))
        engines.append(dataclasses.replace(entry, **changes))
    dataclasses.replace(manifest, engines=tuple(engines)).write(bundle)
    return load_manifest(bundle)


@pytest.fixture
def gpu(monkeypatch):
    """An emulated H100 with TensorRT 10.3 (full) and cuda-python; ``gpu.cudart``, ``gpu.trt``."""
    cudart = FakeCudart()
    trt = fake_tensorrt(cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    return type("Gpu", (), {"cudart": cudart, "trt": trt})


@pytest.fixture(scope="module")
def audio(long_music):
    return np.stack([long_music[44100: 44100 + 3 * 44100 - 4000], long_music[9 * 44100: 12 * 44100 - 4000]])


@pytest.fixture(scope="module")
def expected(tiny_bundle, audio):
    """ONNX Runtime CPU's tokens and audio for ``audio``."""
    manifest = load_manifest(tiny_bundle)
    feeds = np.pad(audio, ((0, 0), (0, padded_length(audio.shape[1], 256, 8) - audio.shape[1])))
    with OrtCpuBackend(tiny_bundle, manifest, "encoder") as encoder, \
            OrtCpuBackend(tiny_bundle, manifest, "decoder") as decoder:
        tokens = encoder.run({"audio": feeds})["tokens"]
        return feeds, tokens, decoder.run({"tokens": tokens})["audio"]


# ---------------------------------------------------------------------------------- TensorRT
def test_trt_runs_equal_ort_cpu_byte_for_byte(gpu, bundle_copy, expected):
    feeds, tokens, decoded = expected
    manifest = add_engines(bundle_copy)
    with TrtBackend(bundle_copy, manifest, "encoder") as encoder, TrtBackend(bundle_copy, manifest, "decoder") as dec:
        for _ in range(2):  # the second run reuses the buffers
            got = encoder.run({"audio": feeds})["tokens"]
            assert got.dtype == np.int32 and np.array_equal(got, tokens)
            audio = dec.run({"tokens": tokens})["audio"]
            assert audio.dtype == np.float32 and audio.tobytes() == decoded.tobytes()
        one = dec.run({"tokens": tokens[1:, :, :5]})["audio"]  # a smaller input in the grown buffers
        assert one.shape == (1, (8 * 5 - 1) * 256)
    assert gpu.cudart.calls.count("cudaSetDevice") == 2  # once per open, never per run
    assert not gpu.cudart.memory and not gpu.cudart.streams  # close freed everything
    assert gpu.trt.deserialized == [{"bytes": len((bundle_copy / f"{g}.plan").read_bytes()), "host_code": False}
                                    for g in ("encoder", "decoder")]


def test_inputs_are_cast_to_the_engines_dtypes(gpu, bundle_copy, expected):
    feeds, tokens, decoded = expected
    manifest = add_engines(bundle_copy, dtypes={"decoder": {"tokens": "int64"}})
    with TrtBackend(bundle_copy, manifest, "decoder") as decoder:
        assert decoder.run({"tokens": tokens})["audio"].tobytes() == decoded.tobytes()


def test_buffers_are_reused_then_grown_and_the_profile_is_enforced(gpu, bundle_copy):
    manifest = add_engines(bundle_copy)
    with TrtBackend(bundle_copy, manifest, "decoder") as backend:
        backend.run({"tokens": np.zeros((1, 12, 20), np.int32)})
        first = {name: tuple(buffer) for name, buffer in backend._buffers.items()}
        backend.run({"tokens": np.ones((1, 12, 20), np.int32)})
        assert {name: tuple(buffer) for name, buffer in backend._buffers.items()} == first
        backend.run({"tokens": np.ones((2, 12, 40), np.int32)})
        assert all(backend._buffers[name][1] > first[name][1] for name in first)
        assert all(pointer not in gpu.cudart.memory for pointer, _ in first.values())  # the old ones were freed
        with pytest.raises(InputSpecError, match="outside the engine's optimisation profile"):
            backend.run({"tokens": np.zeros((1, 12, 10_000), np.int32)})
        with pytest.raises(InputSpecError, match="outside the engine's optimisation profile"):
            backend.run({"tokens": np.zeros((5, 12, 10), np.int32)})


def test_host_buffers_are_page_locked_and_reused_across_calls(gpu, bundle_copy, expected):
    feeds, tokens, decoded = expected
    manifest = add_engines(bundle_copy)
    with TrtBackend(bundle_copy, manifest, "encoder") as encoder, TrtBackend(bundle_copy, manifest, "decoder") as dec:
        first = [encoder.run({"audio": feeds})["tokens"], dec.run({"tokens": tokens})["audio"]]
        pinned = gpu.cudart.calls.count("cudaMallocHost")
        assert pinned == 4  # audio, tokens (in and out), audio out: one page-locked buffer each
        for _ in range(2):
            again = [encoder.run({"audio": feeds})["tokens"], dec.run({"tokens": tokens})["audio"]]
            assert all(a.tobytes() == b.tobytes() for a, b in zip(first, again))
        assert gpu.cudart.calls.count("cudaMallocHost") == pinned  # reused, not allocated per call
        assert gpu.cudart.pageable_async_copies == 0  # every asynchronous copy reads or writes pinned memory
        again[1][:] = 0  # the caller owns its outputs: the next run does not write into them
        assert dec.run({"tokens": tokens})["audio"].tobytes() == decoded.tobytes()
    assert not gpu.cudart.pinned  # close freed the pinned buffers


def test_stream_sized_calls_run_on_the_stream_profile(gpu, bundle_copy, expected):
    feeds, tokens, decoded = expected
    manifest = add_engines(bundle_copy, stream=True)
    assert manifest.engines[0].stream_profile["audio"]["max"][0] == 1
    with TrtBackend(bundle_copy, manifest, "decoder") as decoder, \
            OrtCpuBackend(bundle_copy, manifest, "decoder") as reference:
        short = tokens[:1, :, :10]  # a stream push: fits profile 1
        assert decoder.run({"tokens": short})["audio"].tobytes() == reference.run({"tokens": short})["audio"].tobytes()
        assert decoder.run({"tokens": tokens})["audio"].tobytes() == decoded.tobytes()  # batch 2: the window profile
    assert gpu.trt.executions == [1, 0]


def _short_copy(cudart):
    real = cudart.cudaMemcpyAsync
    return lambda dst, src, size, kind, stream: real(dst, src, size - 4, kind, stream)


def _no_sync(cudart):
    return lambda stream: (cudart.cudaError_t.cudaSuccess,)


def _copies_in_reverse(cudart):  # the output copies enqueued before the run that writes them
    real_copy = cudart.cudaMemcpyAsync

    def copy(dst, src, size, kind, stream):
        if kind is cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost:
            work = cudart._copy(dst, src, size, kind)
            cudart.streams[int(stream)].insert(0, work)
            return (cudart.cudaError_t.cudaSuccess,)
        return real_copy(dst, src, size, kind, stream)
    return copy


@pytest.mark.parametrize("method,mutant", [("cudaMemcpyAsync", _short_copy), ("cudaStreamSynchronize", _no_sync),
                                           ("cudaMemcpyAsync", _copies_in_reverse)])
def test_a_wrong_copy_size_or_order_is_caught(gpu, bundle_copy, expected, monkeypatch, method, mutant):
    """The fakes are strict enough: a run path with one of these bugs does not give ONNX Runtime's bytes."""
    feeds, tokens, decoded = expected
    manifest = add_engines(bundle_copy)
    decoder = TrtBackend(bundle_copy, manifest, "decoder").open()
    monkeypatch.setattr(gpu.cudart, method, mutant(gpu.cudart))
    try:
        caught = decoder.run({"tokens": tokens})["audio"].tobytes() != decoded.tobytes()
    except Exception:  # noqa: BLE001 - the fake GPU or the graph refused the garbage: caught too
        caught = True
    assert caught
    gpu.cudart.streams = {stream: [] for stream in gpu.cudart.streams}  # drop what the mutant left queued
    decoder.close()


def test_a_wrong_dtype_is_caught(gpu, bundle_copy, expected):
    feeds, tokens, decoded = expected
    manifest = add_engines(bundle_copy, dtypes={"decoder": {"tokens": "int64"}})
    with TrtBackend(bundle_copy, manifest, "decoder") as decoder:
        decoder._dtypes["tokens"] = np.dtype(np.int32)  # the bug: the manifest's dtype instead of the engine's
        with pytest.raises(FakeCudaError, match="run past the end"):
            decoder.run({"tokens": tokens})


@pytest.mark.parametrize("status,match", [
    ("cudaErrorInsufficientDriver", "cudaErrorInsufficientDriver: the NVIDIA driver is older"),
    ("cudaErrorNoDevice", "cudaErrorNoDevice: no NVIDIA GPU is visible"),
    ("cudaErrorMemoryAllocation", "cudaErrorMemoryAllocation: check the NVIDIA driver"),
])
def test_cuda_errors_are_named(gpu, bundle_copy, status, match):
    manifest = add_engines(bundle_copy)
    gpu.cudart.status = gpu.cudart.cudaError_t[status]
    with pytest.raises(BackendError, match=match) as caught:
        TrtBackend.check_available(bundle_copy, manifest)
    assert status == "cudaErrorNoDevice" or "no NVIDIA GPU is visible" not in str(caught.value)


def test_another_gpu_model_of_the_same_architecture_warns(gpu, bundle_copy, caplog):
    manifest = add_engines(bundle_copy)
    gpu.cudart.devices = [("NVIDIA H200", 9, 0)]
    with caplog.at_level(logging.WARNING, logger="meltok_runtime"), TrtBackend(bundle_copy, manifest, "encoder"):
        pass
    assert "built on a NVIDIA H100 80GB HBM3 and runs on a NVIDIA H200" in caplog.text


def test_lean_runtime_runs_only_version_compatible_engines(gpu, bundle_copy, expected, monkeypatch):
    feeds, tokens, decoded = expected
    lean = fake_tensorrt(gpu.cudart, version="10.3.0", name="tensorrt_lean")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_lean", lean)
    manifest = add_engines(bundle_copy)
    with pytest.raises(EngineMismatchError, match="only TensorRT's lean runtime .* --version-compatible"):
        TrtBackend.check_available(bundle_copy, manifest)
    manifest = add_engines(bundle_copy, version_compatible=True, tensorrt_version="10.1.0")
    TrtBackend.check_available(bundle_copy, manifest)  # a later 10.x runs a version-compatible 10.1 engine
    with TrtBackend(bundle_copy, manifest, "decoder") as decoder:
        assert decoder.run({"tokens": tokens})["audio"].tobytes() == decoded.tobytes()
    assert lean.deserialized[-1]["host_code"] is True
    for version in ("10.4.0", "9.3.0"):  # an older runtime, or another major: refused
        with pytest.raises(EngineMismatchError, match="an engine runs only where both match"):
            TrtBackend.check_available(bundle_copy, add_engines(bundle_copy, version_compatible=True,
                                                                 tensorrt_version=version))


def test_no_tensorrt_at_all_names_the_install_command(monkeypatch, bundle_copy):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_lean", None)
    with pytest.raises(MissingDependencyError, match=r"neither is installed: pip install -e '\.\[trt\]'"):
        TrtBackend.check_available(bundle_copy, add_engines(bundle_copy))


def test_close_waits_for_a_run_and_later_runs_get_a_typed_error(gpu, bundle_copy, expected, monkeypatch):
    feeds, tokens, decoded = expected
    manifest = add_engines(bundle_copy)
    backend = TrtBackend(bundle_copy, manifest, "decoder").open()
    real = gpu.cudart.cudaStreamSynchronize
    monkeypatch.setattr(gpu.cudart, "cudaStreamSynchronize", lambda stream: (time.sleep(0.3), real(stream))[1])
    results = []
    worker = threading.Thread(target=lambda: results.append(backend.run({"tokens": tokens})["audio"]))
    worker.start()
    time.sleep(0.1)
    backend.close()  # waits for the run in progress: its buffers are not freed under it
    worker.join()
    assert results[0].tobytes() == decoded.tobytes() and not gpu.cudart.memory
    with pytest.raises(BackendError, match="is not open"):
        backend.run({"tokens": tokens})


# ---------------------------------------------------------------------------------- ONNX Runtime CUDA
@pytest.fixture
def ort_gpu(monkeypatch):
    module = FakeOrtModule()
    monkeypatch.setitem(sys.modules, "onnxruntime", module)
    monkeypatch.setattr(cuda_module, "_load_driver", lambda: FakeDriver(count=1))
    return module


def test_ort_cuda_runs_with_io_binding_tf32_off_and_heuristic_conv_search(ort_gpu, tiny_bundle, expected):
    feeds, tokens, decoded = expected
    manifest = load_manifest(tiny_bundle)
    OrtCudaBackend.check_available(tiny_bundle, manifest)
    with OrtCudaBackend(tiny_bundle, manifest, "encoder") as encoder, \
            OrtCudaBackend(tiny_bundle, manifest, "decoder") as decoder:
        assert np.array_equal(encoder.run({"audio": feeds})["tokens"], tokens)
        assert decoder.run({"tokens": tokens})["audio"].tobytes() == decoded.tobytes()
    provider, options = ort_gpu.sessions[0].providers[0]
    assert provider == "CUDAExecutionProvider"
    assert options == {"device_id": 0, "use_tf32": 0, "cudnn_conv_algo_search": "HEURISTIC"}
    assert all(session.providers[0] == (provider, options) for session in ort_gpu.sessions)
    assert ort_gpu.severity == ort_module.QUIET


def test_ort_cuda_needs_synchronized_inputs(ort_gpu, tiny_bundle, expected, monkeypatch):
    from .gpu_fakes import FakeIOBinding

    monkeypatch.setattr(FakeIOBinding, "synchronize_inputs", lambda self: None)  # the bug: no synchronisation
    with OrtCudaBackend(tiny_bundle, load_manifest(tiny_bundle), "decoder") as decoder:
        with pytest.raises(FakeCudaError, match="before synchronize_inputs"):
            decoder.run({"tokens": expected[1]})


@pytest.mark.parametrize("driver,match", [
    (FakeDriver(count=0), "the NVIDIA driver sees no GPU"),
    (FakeDriver(status=100), "the NVIDIA driver sees no GPU"),
    (FakeDriver(status=35), "CUDA_ERROR_INSUFFICIENT_DRIVER: the NVIDIA driver is older"),
    (None, "no NVIDIA driver is installed"),
])
def test_ort_cuda_confirms_a_device(ort_gpu, tiny_bundle, monkeypatch, driver, match):
    monkeypatch.setattr(cuda_module, "_load_driver", lambda: driver)
    with pytest.raises(BackendError, match=match):
        OrtCudaBackend.check_available(tiny_bundle, load_manifest(tiny_bundle))


def test_ort_cuda_refuses_a_session_that_fell_back_to_the_cpu(ort_gpu, tiny_bundle, monkeypatch):
    from .gpu_fakes import FakeOrtSession

    monkeypatch.setattr(FakeOrtSession, "get_providers", lambda self: ["CPUExecutionProvider"])
    with pytest.raises(BackendError, match="could not start its CUDA execution provider"):
        OrtCudaBackend(tiny_bundle, load_manifest(tiny_bundle), "decoder").open()


def test_ort_close_during_a_run_is_a_typed_error(tiny_bundle, expected):
    backend = OrtCpuBackend(tiny_bundle, load_manifest(tiny_bundle), "decoder").open()
    checked = backend.check_feeds({"tokens": expected[1]})
    backend.close()
    with pytest.raises(BackendError, match="closed during the run"):
        backend._run(checked)  # what a run that passed the open check meets when close comes first


def test_provider_chatter_on_stdout_does_not_reach_info_json(ort_gpu, tiny_bundle, monkeypatch, capfd):
    import os

    from click.testing import CliRunner

    from meltok_runtime.cli.main import main

    from .gpu_fakes import FakeOrtSession

    real_init = FakeOrtSession.__init__

    def noisy(self, *args, **kwargs):
        os.write(1, b"Failed to create CUDAExecutionProvider. Falling back to CPU.\n")
        real_init(self, *args, **kwargs)
    monkeypatch.setattr(FakeOrtSession, "__init__", noisy)
    monkeypatch.setattr(cuda_module, "_load_driver", lambda: FakeDriver(count=1))
    result = CliRunner().invoke(main, ["info", str(tiny_bundle), "--backend", "ort-cuda"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["selected_backend"] == "ort-cuda"
    captured = capfd.readouterr()
    assert "Falling back" not in captured.out and "Falling back" in captured.err


@pytest.mark.parametrize("method,value,match", [("get_tensor_shape", (-1, 12), "could not infer the shape"),
                                                ("execute_async_v3", False, "failed to run the decoder engine")])
def test_tensorrt_failures_inside_a_run_are_backend_errors(gpu, bundle_copy, monkeypatch, method, value, match):
    from .gpu_fakes import FakeContext

    with TrtBackend(bundle_copy, add_engines(bundle_copy), "decoder") as decoder:
        monkeypatch.setattr(FakeContext, method, lambda self, *args: value)
        with pytest.raises(BackendError, match=match):
            decoder.run({"tokens": np.zeros((1, 12, 4), np.int32)})
        gpu.cudart.streams = {stream: [] for stream in gpu.cudart.streams}  # the input copies never ran


def test_no_engine_names_both_graphs_in_order_and_the_install_command(tiny_bundle):
    from meltok_runtime import Codec

    with pytest.raises(BackendError) as caught:
        Codec.open(tiny_bundle, backend="trt")
    message = str(caught.value)
    assert "no TensorRT engine for its encoder and decoder graphs" in message
    assert "pip install -e '.[trt-build]' --extra-index-url https://pypi.nvidia.com" in message
    assert "meltok[trt]" not in message
