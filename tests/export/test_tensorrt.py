"""TensorRT engines for the tiny preset (run only where TensorRT and an NVIDIA GPU are available)."""
import pytest

from meltok_export.tensorrt_build import EngineRunner, profile_shapes, tensorrt_available

pytestmark = pytest.mark.trt


@pytest.fixture(scope="module", autouse=True)
def _needs_tensorrt():
    reason = tensorrt_available()
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tiny_engines_build_run_and_verify(tiny_model, tmp_path, precision):
    import numpy as np

    from meltok_export.bundle import export_bundle
    from meltok_export.verify import verify_bundle
    from meltok_runtime.manifest import file_sha256, load_manifest

    out = tmp_path / "bundle"
    manifest = export_bundle(tiny_model, out, engine="trt", precision=precision, max_seconds=8.0, opt_seconds=4.0,
                             max_batch=2, verify_seconds=3.0)
    assert load_manifest(out) == manifest
    assert {e.graph for e in manifest.engines} == {"encoder", "decoder"}
    for engine in manifest.engines:
        assert (out / engine.file).is_file() and engine.sha256 == file_sha256(out / engine.file)
        assert engine.onnx_sha256 == manifest.graphs[engine.graph].sha256
        assert engine.compute_capability and engine.tensorrt_version and engine.precision == precision
    assert (out / "timing.cache").is_file()
    assert "skipped" not in manifest.tolerances["tensorrt"]
    profiles = profile_shapes(tiny_model, max_batch=2, max_seconds=8.0, opt_seconds=4.0)
    assert manifest.engines[0].profile == profiles[manifest.engines[0].graph]
    audio = np.zeros((2, profiles["encoder"]["audio"]["opt"][1]), dtype=np.float32)
    with EngineRunner(out / "encoder.plan") as encoder:
        tokens = encoder.run({"audio": audio})["tokens"]
    assert tokens.shape == (2, 12, profiles["decoder"]["tokens"]["opt"][2])
    report = verify_bundle(out, tiny_model, max_seconds=3.0)
    assert report["tensorrt"]["passed"]
