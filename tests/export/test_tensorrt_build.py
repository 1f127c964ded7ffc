"""The TensorRT builder's decisions (``meltok_runtime.engines``, which ``--engine trt`` exports use), run
against an emulated GPU and a stand-in ``tensorrt`` whose enum values are TensorRT's own
(``tests/runtime/gpu_fakes``): strongly typed networks, TF32 off in every build, the weakly typed FP16 path
of TensorRT 10 pinning the float32 layers by exact name, profiles sized by the runtime's window (and a
stream profile), the per-user timing cache, version-compatible engines, and a whole ``--engine trt`` export
checked on the runtime's trt backend. The fake engines run the ONNX graph on ONNX Runtime CPU: these tests
check what is asked of TensorRT and how the backend copies, orders and types data, not GPU numerics."""
import logging
import sys

import numpy as np
import pytest

from meltok_export.bundle import bundle_limits, export_bundle
from meltok_export.islands import island_node_names
from meltok_runtime import Codec
from meltok_runtime.engines import builder
from meltok_runtime.engines.plan import default_profile_seconds, plan_engine, profile_shapes
from meltok_runtime.errors import BackendError, BundleError, MissingDependencyError
from meltok_runtime.manifest import load_manifest

from ..runtime.gpu_fakes import FakeCudart, fake_tensorrt_builder


@pytest.fixture
def use_trt(monkeypatch, tmp_path):
    """``use_trt(version, ...)`` installs a fake TensorRT builder on an emulated H100; the per-user cache
    lives in ``tmp_path``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def install(version, **options):
        cudart = FakeCudart()
        trt = fake_tensorrt_builder(cudart, version, **options)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
        return trt
    return install


@pytest.fixture(scope="module")
def profiles(tiny_model):
    limits = bundle_limits(tiny_model, max_batch=4, max_seconds=8.0, opt_seconds=2.0)
    return profile_shapes(limits, tiny_model.token_rows, tiny_model.hop_length, tiny_model.config.tokenizer.compression)


def test_profiles_follow_the_framing_rules(profiles):
    audio, tokens = profiles["encoder"]["audio"], profiles["decoder"]["tokens"]
    assert [audio[k][0] for k in ("min", "opt", "max")] == [1, 1, 4]
    assert audio["min"][1] == 1792 and audio["max"][1] >= 8 * 44100 and (audio["max"][1] // 256 + 1) % 8 == 0
    assert [tokens[k][1] for k in ("min", "opt", "max")] == [12, 12, 12]
    assert tokens["min"][2] == 1 and tokens["max"][2] == (audio["max"][1] // 256 + 1) // 8


def build_engine(onnx_path, plan_path, profile, *, precision, graph, timing_cache=None, version_compatible=False,
                 profiles=None):
    """Plan from the exported folder's manifest, then build with the runtime's builder."""
    import tensorrt

    manifest = load_manifest(onnx_path.parent)
    plan = plan_engine(manifest, graph, precision=precision, tensorrt_version=tensorrt.__version__,
                       profiles=profiles or (profile,), version_compatible=version_compatible)
    return builder.build_engine(plan, onnx_path, plan_path, manifest.graphs[graph].sha256, timing_cache=timing_cache)


def test_default_profile_is_one_runtime_window(tiny_model, tiny_bundle):
    """max = the runtime's default window plus the column it keeps spare, so the codec's windows fit exactly."""
    max_seconds, opt_seconds = default_profile_seconds(tiny_model.sample_rate, tiny_model.hop_length,
                                                       tiny_model.config.tokenizer.compression)
    assert 12.0 < max_seconds < 12.1 and 11.9 < opt_seconds <= 12.0
    limits = bundle_limits(tiny_model, max_batch=16, max_seconds=max_seconds, opt_seconds=opt_seconds)
    with Codec.open(tiny_bundle[0], backend="ort-cpu") as codec:  # 30 s limits: the window is the default one
        assert limits["max_columns"] == codec.window_columns + 1
        assert limits["opt_samples"] == (8 * codec.window_columns - 1) * 256


def test_float32_graph_on_tensorrt_10(use_trt, exported, profiles, tmp_path):
    trt = use_trt("10.13.0")
    folder = exported("tiny", "fp32")
    entry = build_engine(folder / "decoder.onnx", tmp_path / "decoder.plan", profiles["decoder"], precision="fp32",
                         graph="decoder")
    assert trt.log["network_flags"] == 0 and trt.log["cleared"] == {"TF32"} and not trt.log["set"]
    assert trt.log["profiles"] == [profiles["decoder"]]
    assert (entry.graph, entry.file, entry.tensorrt_version, entry.compute_capability, entry.device_name,
            entry.version_compatible) == ("decoder", "decoder.plan", "10.13.0", "9.0", "NVIDIA H100 80GB HBM3", False)
    cache = tmp_path / "cache" / "meltok" / "tensorrt-timing.cache"
    assert cache.read_bytes() == b"+timing" and not (tmp_path / "timing.cache").exists()  # nothing unhashed shipped
    build_engine(folder / "decoder.onnx", tmp_path / "decoder.plan", profiles["decoder"], precision="fp32",
                 graph="decoder")
    assert trt.log["cache_in"] == b"+timing"  # the second build (any later export) starts from the first's cache


def test_float16_graph_is_strongly_typed_with_tf32_off(use_trt, exported, profiles, tmp_path):
    trt = use_trt("10.13.0")
    build_engine(exported("tiny", "fp16") / "encoder.onnx", tmp_path / "encoder.plan", profiles["encoder"],
                 precision="fp16", graph="encoder", timing_cache=tmp_path / "mine.cache", version_compatible=True)
    assert trt.log["network_flags"] == 1 << 1  # TensorRT 10: STRONGLY_TYPED is 1
    assert trt.log["cleared"] == {"TF32"} and trt.log["set"] == {"VERSION_COMPATIBLE"}
    assert (tmp_path / "mine.cache").is_file()


def test_weakly_typed_fp16_on_tensorrt_10_pins_the_islands_by_exact_name(use_trt, exported, profiles, tmp_path):
    import onnx

    path = exported("tiny", "fp32") / "encoder.onnx"
    islands = island_node_names(onnx.load(str(path)), "encoder")
    island = sorted(islands)[0]
    trt = use_trt("10.13.0", extra_layers=[f"{island}_1"])  # a trunk layer whose name extends an island node's
    build_engine(path, tmp_path / "encoder.plan", profiles["encoder"], precision="fp16", graph="encoder")
    assert trt.log["set"] == {"FP16", "OBEY_PRECISION_CONSTRAINTS"} and trt.log["cleared"] == {"TF32"}
    layers = trt.log["network"].layers
    pinned = {layer.name for layer in layers if layer.precision == trt.float32}
    assert pinned == set(load_manifest(path.parent).float32_nodes["encoder"]) and islands <= pinned
    assert all(layer.types[0] == trt.float32 for layer in layers if layer.name in islands)
    assert f"{island}_1" not in pinned  # exact names: "<island>_1" is another layer
    trunk = [layer for layer in layers if layer.name not in pinned and "Conv" in layer.name]
    assert trunk and all(layer.precision is None for layer in trunk)  # the trunk is left to FP16


def test_a_stream_profile_is_profile_one(use_trt, exported, tiny_model, tmp_path):
    from meltok_runtime.engines.plan import stream_profile_shapes

    trt = use_trt("10.13.0")
    limits = bundle_limits(tiny_model, max_batch=4, max_seconds=8.0, opt_seconds=2.0)
    numbers = (tiny_model.token_rows, tiny_model.hop_length, tiny_model.config.tokenizer.compression)
    window, stream = profile_shapes(limits, *numbers), stream_profile_shapes(limits, tiny_model.sample_rate, *numbers)
    entry = build_engine(exported("tiny", "fp32") / "encoder.onnx", tmp_path / "e.plan", None, precision="fp32",
                         graph="encoder", profiles=(window["encoder"], stream["encoder"]))
    assert trt.log["profiles"] == [window["encoder"], stream["encoder"]]
    assert entry.profile == window["encoder"] and entry.stream_profile == stream["encoder"]
    assert stream["encoder"]["audio"]["max"][1] < window["encoder"]["audio"]["max"][1]


def test_tensorrt_11_refuses_weak_typing_and_needs_no_flag(use_trt, exported, profiles, tmp_path):
    trt = use_trt("11.4.0")
    with pytest.raises(BackendError, match="strongly typed"):
        build_engine(exported("tiny", "fp32") / "encoder.onnx", tmp_path / "e.plan", profiles["encoder"],
                     precision="fp16", graph="encoder")
    build_engine(exported("tiny", "fp16") / "encoder.onnx", tmp_path / "e.plan", profiles["encoder"],
                 precision="fp16", graph="encoder")
    assert trt.log["network_flags"] == 0 and trt.log["cleared"] == {"TF32"}  # STRONGLY_TYPED is 0, deprecated


def test_a_refused_timing_cache_is_a_warning(use_trt, exported, profiles, tmp_path, caplog):
    use_trt("10.13.0", cache_ok=False)
    stale = tmp_path / "stale.cache"
    stale.write_bytes(b"from another GPU")
    with caplog.at_level(logging.WARNING, logger="meltok_export"):
        build_engine(exported("tiny", "fp32") / "decoder.onnx", tmp_path / "d.plan", profiles["decoder"],
                     precision="fp32", graph="decoder", timing_cache=stale)
    assert "refused the timing cache" in caplog.text and (tmp_path / "d.plan").is_file()


def test_parser_errors_are_reported(use_trt, exported, profiles, tmp_path):
    use_trt("10.13.0", parse_ok=False)
    with pytest.raises(BundleError, match="cannot parse encoder.onnx: In node 3"):
        build_engine(exported("tiny", "fp32") / "encoder.onnx", tmp_path / "e.plan", profiles["encoder"],
                     precision="fp32", graph="encoder")
    assert not (tmp_path / "e.plan").exists()


def test_missing_builder_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError, match=r"pip install -e '\.\[trt-build\]' --extra-index-url "
                                                     r"https://pypi\.nvidia\.com"):
        builder.require_builder()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_trt_export_end_to_end_on_the_runtime_backend(use_trt, tiny_model, tmp_path, precision):
    """``export_bundle(engine="trt")`` builds (fake) engines and verifies them with the runtime's own trt
    backend on the emulated GPU; the bundle then runs with ``Codec.open(backend="trt")``."""
    use_trt("10.13.0")
    out = tmp_path / "bundle"
    manifest = export_bundle(tiny_model, out, engine="trt", precision=precision, max_batch=2, verify_seconds=2.0,
                             version_compatible=True)
    trt = manifest.tolerances["tensorrt"]
    assert "skipped" not in trt and trt["backend"] == "trt"
    assert trt["vs_onnxruntime"]["token_agreement"] == 1.0 and trt["vs_onnxruntime"]["waveform_snr_db"] > 100
    assert all(engine.version_compatible for engine in manifest.engines)
    assert manifest.limits["max_columns"] == 259 and manifest.engines[0].profile["audio"]["opt"][0] == 1
    assert load_manifest(out) == manifest and sorted(p.name for p in out.iterdir()) == [
        "decoder.onnx", "decoder.plan", "encoder.onnx", "encoder.plan", "manifest.json", "tensorrt-commands.json",
        "verification.npz"]
    with Codec.open(out, backend="trt") as codec, Codec.open(out, backend="ort-cpu") as reference:
        audio = np.sin(np.arange(3 * 44100) * 0.05).astype(np.float32) * 0.3
        assert np.array_equal(codec.encode(audio), reference.encode(audio))
