"""TensorRT engines for the tiny preset on a real GPU (``-m trt``; skipped where TensorRT's builder or a GPU
is missing). The same export runs on every CPU against emulated TensorRT in ``test_tensorrt_build.py``."""
import pytest

from meltok_runtime.errors import MeltokError

pytestmark = [pytest.mark.trt, pytest.mark.gpu]


@pytest.fixture(scope="module", autouse=True)
def _needs_tensorrt():
    from meltok_runtime.engines.builder import require_builder

    try:
        require_builder()
    except MeltokError as error:
        pytest.skip(str(error))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tiny_engines_build_run_and_verify(tiny_model, tmp_path, precision):
    import numpy as np

    from meltok_export.bundle import export_bundle
    from meltok_export.verify import verify_bundle
    from meltok_runtime.backends import TrtBackend
    from meltok_runtime.manifest import file_sha256, load_manifest

    out = tmp_path / "bundle"
    manifest = export_bundle(tiny_model, out, engine="trt", precision=precision, max_batch=2, verify_seconds=3.0,
                             timing_cache=tmp_path / "timing.cache")
    assert load_manifest(out) == manifest
    assert {e.graph for e in manifest.engines} == {"encoder", "decoder"}
    for engine in manifest.engines:
        assert (out / engine.file).is_file() and engine.sha256 == file_sha256(out / engine.file)
        assert engine.onnx_sha256 == manifest.graphs[engine.graph].sha256
        assert engine.compute_capability and engine.tensorrt_version and engine.precision == precision
    assert (tmp_path / "timing.cache").is_file()
    trt = manifest.tolerances["tensorrt"]
    assert "skipped" not in trt
    if precision == "fp32":  # TF32 off: the float32 engine gives the CPU's tokens
        assert trt["vs_onnxruntime"]["token_agreement"] == 1.0
    else:
        assert trt["vs_onnxruntime"]["token_agreement"] >= 0.99
    profile = manifest.engines[0].profile["audio"]
    with TrtBackend(out, manifest, "encoder") as encoder:
        tokens = encoder.run({"audio": np.zeros((2, profile["opt"][1]), dtype=np.float32)})["tokens"]
    assert tokens.shape[:2] == (2, 12)
    report = verify_bundle(out, tiny_model, max_seconds=3.0)
    assert report["tensorrt"]["passed"]
