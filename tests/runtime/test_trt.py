"""The TensorRT backend on a real GPU (``-m trt``; skipped where tensorrt or a GPU is missing).

Engines are built by ``meltok_export`` (``export_bundle(..., engine="trt")``) for the tiny model.
"""
import dataclasses
import threading

import numpy as np
import pytest

from meltok_runtime import Codec
from meltok_runtime.errors import EngineMismatchError
from meltok_runtime.manifest import load_manifest

pytestmark = [pytest.mark.trt, pytest.mark.gpu]


@pytest.fixture(scope="module")
def trt_bundle(tmp_path_factory, tiny_model):
    pytest.importorskip("tensorrt")
    try:
        from meltok_export.bundle import export_bundle
    except ImportError:
        pytest.skip("meltok_export is not available to build engines")
    folder = tmp_path_factory.mktemp("trt") / "tiny-trt"
    export_bundle(tiny_model, folder, engine="trt", precision="fp32", max_seconds=12.0, opt_seconds=5.0,
                  max_batch=4)
    return folder


def test_auto_picks_tensorrt_and_matches_onnx_runtime(trt_bundle, long_music):
    audio = long_music[: 20 * 44100]  # longer than the 12 s profile: windowed within it
    with Codec.open(trt_bundle) as codec, Codec.open(trt_bundle, backend="ort-cpu") as reference:
        assert codec.backend == "trt" and not codec.skipped
        assert codec.window_columns <= codec.manifest.limits["max_columns"]
        tokens = codec.encode(audio)
        expected = reference.encode(audio)
        assert tokens.shape == expected.shape and np.mean(tokens == expected) >= 0.99
        decoded = codec.decode(expected)
        assert np.abs(decoded - reference.decode(expected)).max() < 1e-3
        short = codec.encode(np.zeros(10, np.float32))  # one column: the profile's minimum
        assert short.shape == (1, 12, 1)


def test_concurrent_runs_equal_serial_runs(trt_bundle, long_music):
    with Codec.open(trt_bundle, backend="trt") as codec:
        clips = [long_music[i * 20000: i * 20000 + 5000 + 7000 * i] for i in range(12)]
        serial = [codec.encode(clip) for clip in clips]
        results = [None] * len(clips)

        def work(index):
            results[index] = codec.encode(clips[index])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(clips))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for expected, got in zip(serial, results):
            np.testing.assert_array_equal(got, expected)


def test_engine_for_another_gpu_is_refused_on_a_real_gpu(trt_bundle, tmp_path):
    import shutil

    bundle = shutil.copytree(trt_bundle, tmp_path / "bundle")
    manifest = load_manifest(bundle)
    engines = tuple(dataclasses.replace(e, compute_capability="1.0") for e in manifest.engines)
    dataclasses.replace(manifest, engines=engines).write(bundle)
    with pytest.raises(EngineMismatchError, match="compute capability 1.0"):
        Codec.open(bundle, backend="trt")
    with Codec.open(bundle) as codec:
        assert codec.backend != "trt" and "compute capability 1.0" in codec.skipped["trt"]
